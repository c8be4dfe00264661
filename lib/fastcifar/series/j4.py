"""J4, the GPU inference optimisations: the seed's I3 paths on B1 and the teacher (rows O1-O4), the
distillation into F2's architecture (D1), FastNet on the stock PyTorch paths (F1, F2) and in one kernel
launch (F1-mega, F2-mega), and where the time goes. One function per step of
notebooks/J4_gpu_optimizations.ipynb, in its order.

Every variant is built from one description (optimize.Spec), timed with the J1 benchmark and evaluated
on the full validation and test sets exactly as it is timed (optimize.measure_specs). Reads b1.json and
fastnet.json (J2) and the teacher's checkpoint (J3); writes the seed's and the family's rows to
results.csv, every variant measured to results_j4_variants.csv, what J5 re-times to variants.json
(records.KeptVariants), and in the full profile kernel_parity.csv, where_time_goes.csv and
megakernel_layers.csv.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import j1, records, recipe, report
from .session import Session
from ..core import atomic, bench, engine, kernels, models, optimize

Spec = optimize.Spec
TEACHER_CHECKPOINT = "resnet18_best.pth"  # J3's best teacher, in the checkpoints folder
COLUMNS = ["id", "variant", "val_accuracy", "accuracy", "lat_mean_ms", "lat_p95_ms", "gpu_mean_ms", "speedup",
           "compile_s", "notes"]
FAMILY_KEYS = ("F1", "F2")


def _csv(df, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


# ---------------------------------------------------------------- inputs

@dataclass
class Inputs:
    """What J4 starts from: J2's B1 and FastNet points, J3's teacher, each network loaded on the device."""

    b1: records.LightChoice
    b1_model: torch.nn.Module
    teacher: torch.nn.Module
    teacher_checkpoint: str                       # relative to the project root
    points: dict[str, records.FastNetPoint]       # "F1", "F2" (fastnet.json)
    nets: dict[str, torch.nn.Module] = field(default_factory=dict)  # FastNets by key: those J2 trained, then D1
    checkpoints: dict[str, str] = field(default_factory=dict)       # their checkpoints, relative to the project

    def summary(self) -> str:
        return (f"B1 = {self.b1.model} ({self.b1.reason}); FastNet points: "
                + ", ".join(f"{k} = {p.point}" for k, p in self.points.items()))


def load_inputs(s: Session) -> Inputs:
    """b1.json and fastnet.json (records: one clear error when missing, damaged or stale), the models they
    name and J3's teacher, loaded on the device."""
    b1 = records.read(records.LightChoice, s.output(records.LightChoice.FILE))
    points = records.read(records.FastNetPoints, s.output(records.FastNetPoints.FILE)).points
    teacher_path = s.run.ckpt_dir / TEACHER_CHECKPOINT
    inputs = Inputs(b1, engine.load_model(s.run.resolve(b1.checkpoint), s.device)[0],
                    engine.load_model(teacher_path, s.device, "resnet18")[0], s.run.relative(teacher_path), points)
    for key, p in points.items():
        if p.trained:
            inputs.nets[key] = engine.load_model(s.run.resolve(p.checkpoint), s.device, "fastnet")[0]
            inputs.checkpoints[key] = p.checkpoint
    return inputs


def seed_branch(b1_val: float, bar: float) -> str:
    """The seed's decision tree: I3 alone when B1 clears the bar on validation, else distillation first."""
    branch = "I3 optimisations only" if b1_val >= bar else "distillation (I4) needed, then I3"
    return (f"light model B1 validation accuracy {b1_val:.2f}% {'>=' if b1_val >= bar else '<'} {bar}%  ->  {branch}\n"
            "D1 is trained either way: it is the distilled F2 architecture, aimed at the teacher's accuracy.")


def decision_tree(s: Session, inputs: Inputs, rules: report.SeedRules) -> str:
    _, b1_val = engine.evaluate(inputs.b1_model, *s.val)
    return seed_branch(b1_val, rules.bar)


# ---------------------------------------------------------------- measuring variants

@dataclass
class Measured:
    """Variants of one network, measured: one row each (optimize.measure_specs; the first is the reference of
    `speedup`), their host latency samples, and the Spec of each row id."""

    rows: object  # DataFrame
    samples: dict
    specs: dict[str, Spec]

    def table(self):
        return self.rows[[c for c in COLUMNS if c in self.rows.columns]].round(4)


def measure(s: Session, model: torch.nn.Module, model_name: str, specs: dict[str, Spec]) -> Measured:
    rows, samples = optimize.measure_specs(model, model_name, specs, s.val, s.test, s.warmup, s.iters, s.meta,
                                   allow_compile=s.run.profile.compile)
    return Measured(rows, samples, dict(specs))


def b1_specs(compile_modes: list[str]) -> dict[str, Spec]:
    """B1 in FP32 (the reference), FP16, channels_last, and FP16 compiled in each of `compile_modes`."""
    return {"J4-B1-fp32": Spec(), "J4-B1-fp16": Spec("fp16"), "J4-B1-cl": Spec(channels_last=True),
            **{f"J4-B1-fp16-{m}": Spec("fp16", compile_mode=m) for m in compile_modes}}


def measure_b1(s: Session, inputs: Inputs, compile_modes: list[str]) -> Measured:
    return measure(s, inputs.b1_model, inputs.b1.model, b1_specs(compile_modes))


def seed_rows(b1: Measured, compile_modes: list[str], rules: report.SeedRules) -> report.SeedDecisions:
    """The seed's rows O1 (FP16), O2 (FP16 + compile), O3 (channels_last) from B1's variants, and the
    verdicts of its rules (report.seed_decisions)."""
    return report.seed_decisions(b1.rows, "J4-B1-fp32", {"O1": ["J4-B1-fp16"],
                                                         "O2": [f"J4-B1-fp16-{m}" for m in compile_modes],
                                                         "O3": ["J4-B1-cl"]},
                                 rules.fp16_max_drop, rules.channels_last_min_gain)


def fastest_allowed_line(b1: Measured, dec: report.SeedDecisions) -> str:
    """The fastest B1 path the seed's verdicts allow: what its table calls the light model's best."""
    best = report.fastest(report.allowed(b1.rows, dec.keep))
    return f"fastest allowed B1 path: {best.variant}: p95 {best.lat_p95_ms:.4f} ms, {best.speedup:.1f}x B1 FP32"


def rules_on_fixed_inputs(rules: report.SeedRules) -> str:
    """The rules and two Spec labels on fixed inputs: the same on every machine."""
    return "\n".join([
        f"keep FP16 when 92.10% -> 91.70%: {report.keep_fp16(92.10, 91.70, rules.fp16_max_drop)}",
        f"keep FP16 when 92.10% -> 91.50%: {report.keep_fp16(92.10, 91.50, rules.fp16_max_drop)}",
        f"keep channels_last when p95 1.00 -> 0.96 ms: {report.keep_channels_last(1.00, 0.96, rules.channels_last_min_gain)}",
        f"keep channels_last when p95 1.00 -> 0.90 ms: {report.keep_channels_last(1.00, 0.90, rules.channels_last_min_gain)}",
        Spec("fp16", fold_bn=True, cuda_graph=True, mirror=True).label,
        Spec("fp16", backend="megakernel", cuda_graph=True).label])


# ---------------------------------------------------------------- the teacher: O4 and F2's bar

TEACHER_SPECS = {"J4-B2-fp32": Spec(), "J4-B2-fp16-fold-graph": Spec("fp16", fold_bn=True, cuda_graph=True),
                 "J4-B2-fp16-fold-cl-graph": Spec("fp16", channels_last=True, fold_bn=True, cuda_graph=True)}


@dataclass
class Teacher(Measured):
    o4: object = None        # the row standing for O4 (a pandas Series)
    b2_val: float = float("nan")  # the teacher's FP32 validation accuracy in this run: F2's bar


def choose_o4(rows, fp16_max_drop: float):
    """O4: the fastest teacher variant whose test accuracy stays within the FP16 rule of its FP32 row
    (the first row)."""
    return report.fastest(rows[rows.accuracy > rows.accuracy.iloc[0] - fp16_max_drop])


def measure_teacher(s: Session, inputs: Inputs, dec: report.SeedDecisions, rules: report.SeedRules) -> Teacher:
    """The teacher in FP32 and on its fast paths; O4 (choose_o4) joins the seed's rows in `dec`."""
    m = measure(s, inputs.teacher, "resnet18", TEACHER_SPECS)
    o4 = choose_o4(m.rows, rules.fp16_max_drop)
    dec.origin["O4"] = o4.id
    dec.rows.append({**o4.to_dict(), "id": "O4"})
    teacher = Teacher(m.rows, m.samples, m.specs, o4, float(m.rows.val_accuracy.iloc[0]))
    print(f"O4 = {o4.variant}: p95 {o4.lat_p95_ms:.4f} ms, {o4.speedup:.1f}x B2 FP32 in this run")
    print(f"F2 bar: the teacher's validation accuracy in this run, {teacher.b2_val:.2f}%")
    return teacher


# ---------------------------------------------------------------- D1: distillation into F2's architecture

@dataclass
class Distilled:
    rows: object                      # the D1 row (FP16, the mirror as F2's point has it)
    result: recipe.FastResult
    recipe: recipe.Recipe
    checkpoint: str                   # relative to the project root


def distill_d1(s: Session, inputs: Inputs, b1: Measured, epochs: int, T: float | None, alpha: float | None) -> Distilled:
    """A fresh FastNet of F2's architecture trained with F2's recipe for `epochs`, the teacher frozen, on
    the distillation loss at temperature T and weight alpha (None: the recipe's defaults, core.distill's);
    saved as fastnet_D1.pth, loaded into inputs.nets["D1"] (inputs.checkpoints too), then measured (row D1; speedup against B1 FP32)."""
    f2 = inputs.points["F2"]
    r = recipe.for_profile(recipe.point_recipe(f2.recipe, epochs), s.run.profile)
    r = dataclasses.replace(r, **{k: float(v) for k, v in (("distill_T", T), ("distill_alpha", alpha)) if v is not None})
    path = s.run.ckpt_dir / "fastnet_D1.pth"
    result = recipe.train_and_save(s.splits, f2.arch, r, s.device, path, name="fastnet_D1", teacher=inputs.teacher)
    inputs.nets["D1"] = engine.load_model(path, s.device, "fastnet")[0]
    inputs.checkpoints["D1"] = s.run.relative(path)
    labels_only = (f"labels only (J2, {f2.epochs:g} epochs): val {f2.val_acc:.2f}%, with mirror {f2.val_acc_mirror:.2f}% | "
                   if f2.trained else "labels only (the sweep, outputs/sweep/sweep.md) | ")
    print(labels_only + f"distilled (T {r.distill_T:g}, alpha {r.distill_alpha:g}, {r.epochs:g} epochs, "
          f"{result.train_s:.1f} s): val {result.val_acc:.2f}%, with mirror {result.val_acc_mirror:.2f}%")
    rows = measure(s, inputs.nets["D1"], "fastnet", {"D1": Spec("fp16", mirror=f2.mirror)}).rows
    rows = rows.assign(train_s=result.train_s, speedup=b1.rows.lat_p95_ms.iloc[0] / rows.lat_p95_ms)  # against B1 FP32
    return Distilled(rows, result, r, s.run.relative(path))


# ---------------------------------------------------------------- F1, F2 on the stock PyTorch paths

def f2_network(point: records.FastNetPoint, distilled_val: float, distilled_val_mirror: float) -> str:
    """Which network stands for F2: the distilled D1, unless J2 trained F2's architecture on labels and that
    one scores higher on validation (with the mirror when the sweep chose it); a tie goes to D1."""
    if not point.trained:
        return "D1"
    d1 = distilled_val_mirror if point.mirror else distilled_val
    own = point.val_acc_mirror if point.mirror else point.val_acc
    return "D1" if d1 >= own else "F2"


def family_networks(inputs: Inputs, d1: Distilled) -> dict[str, tuple[str, bool]]:
    """{row: (network key in inputs.nets, mirror)} for F1 and F2; says which network F2 is."""
    f2 = inputs.points["F2"]
    f2_key = f2_network(f2, d1.result.val_acc, d1.result.val_acc_mirror)
    print(f"F2 candidate model: {'the distilled D1' if f2_key == 'D1' else 'the labels-only F2'}")
    return {"F1": ("F1", inputs.points["F1"].mirror), "F2": (f2_key, f2.mirror)}


def stock_specs(key: str, mirror: bool) -> dict[str, Spec]:
    """The FP32 reference and the fast paths: FP16 with BN folded in one CUDA graph, the same in
    channels_last, and compiled (default mode) before the graph; the mirror in the call when chosen."""
    return {f"J4-{key}-fp32": Spec(mirror=mirror),
            f"J4-{key}-fp16-fold-graph": Spec("fp16", fold_bn=True, cuda_graph=True, mirror=mirror),
            f"J4-{key}-fp16-fold-cl-graph": Spec("fp16", channels_last=True, fold_bn=True, cuda_graph=True, mirror=mirror),
            f"J4-{key}-fp16-fold-inductor-graph": Spec("fp16", fold_bn=True, compile_mode="default", cuda_graph=True,
                                                       mirror=mirror)}


@dataclass
class Family:
    """F1 and F2 on one kind of path: per row, its measured variants (with the network's key in
    `model_key`), what the seed's rules keep, the chosen row and whether it met its bar, the Specs by id."""

    networks: dict[str, tuple[str, bool]]
    rows: dict = field(default_factory=dict)
    keep: dict = field(default_factory=dict)
    choice: dict = field(default_factory=dict)   # row key -> (row or None, met)
    specs: dict = field(default_factory=dict)

    def table(self):
        import pandas as pd

        if not self.rows:
            return pd.DataFrame()
        every = pd.concat(self.rows.values())
        return every[[c for c in COLUMNS if c in every.columns]].round(4)


def stock_paths(s: Session, inputs: Inputs, networks: dict[str, tuple[str, bool]], rules: report.SeedRules,
                b2_val: float) -> Family:
    """Each family network on stock_specs; the seed's rules decide what is allowed, then F1 (over the
    seed's bar) and F2 (over the teacher's validation accuracy) are the fastest allowed variants
    (report.family_choice: flagged when none reaches the bar)."""
    fam = Family(networks)
    for key, (model_key, mirror) in networks.items():
        m = measure(s, inputs.nets[model_key], "fastnet", stock_specs(key, mirror))
        verdicts = report.seed_decisions(m.rows, f"J4-{key}-fp32", {"O1": [f"J4-{key}-fp16-fold-graph"],
                                                                    "O3": [f"J4-{key}-fp16-fold-cl-graph"]},
                                         rules.fp16_max_drop, rules.channels_last_min_gain)
        print(f"{key}: " + "; ".join(verdicts.lines))
        fam.rows[key], fam.keep[key] = m.rows.assign(model_key=model_key), verdicts.keep
        fam.specs.update(m.specs)
    for key, threshold in (("F1", rules.bar), ("F2", b2_val)):
        row, met, line = report.family_choice(report.allowed(fam.rows[key], fam.keep[key]), threshold, key)
        fam.choice[key] = (row, met)
        print(line)
    return fam


# ---------------------------------------------------------------- the megakernel (F1-mega, F2-mega)

@dataclass
class Megakernel(Family):
    parity: object = None  # DataFrame: per variant, logits and predictions against the FP32 model


def megakernel_rows(s: Session, inputs: Inputs, networks: dict[str, tuple[str, bool]], backends: list[str],
                    bar: float, b2_val: float) -> Megakernel:
    """The family's networks in one kernel launch per call (each of `backends`, replayed from a CUDA graph):
    their rows, their parity against the FP32 model (logits on 1,000 random inputs, predictions on the
    test set; kernel_parity.csv in the full profile), and F1-mega / F2-mega, the fastest measured over
    each bar. A path that cannot run here is a row saying why."""
    import pandas as pd

    mega, parity = Megakernel(networks), []
    for key, (model_key, mirror) in networks.items():
        specs = {f"J4-{key}-{b}-graph": Spec("fp16", backend=b, cuda_graph=True, mirror=mirror) for b in backends}
        if not specs:
            continue
        net = inputs.nets[model_key]
        mega.rows[key] = measure(s, net, "fastnet", specs).rows.assign(model_key=model_key)
        mega.specs.update(specs)
        for vid, spec in specs.items():
            try:
                variant = optimize.build(net, spec, s.test[0][:1])
                parity.append({"id": vid, "variant": variant.spec.label, **optimize.parity(net, variant, s.test)})
                del variant
            except optimize.Unavailable as exc:
                parity.append({"id": vid, "notes": f"not run: {exc}"})
    mega.parity = pd.DataFrame(parity).assign(device_name=s.run.env["device"], git_commit=s.run.env["git_commit"])
    if not s.run.profile.is_smoke:
        _csv(mega.parity, s.output("kernel_parity.csv"))
    for key, threshold in (("F1", bar), ("F2", b2_val)):
        rows = mega.rows.get(key)
        measured = rows[rows.lat_p95_ms.notna()] if rows is not None else pd.DataFrame()
        if measured.empty:
            why = "; ".join(rows.notes) if rows is not None else "no backend"
            print(f"{key}-mega: not measured here: {why}")
            continue
        row, met, line = report.family_choice(measured, threshold, f"{key}-mega")
        mega.choice[key] = (row, met)
        print(line)
    return mega


def time_table(paths: list[tuple[str, object]], profiles: dict[str, dict], floor_ms: float | None):
    """Where the time goes, one row per path (name, measured row): kernels per call and GPU busy time
    (`profiles`, by name; empty without CUDA), host p50/p95 and the ratio of p95 to the launch floor."""
    import pandas as pd

    floor = float("nan") if floor_ms is None else floor_ms
    return pd.DataFrame([{"row": name, "variant": row.variant, **profiles.get(name, {}), "host p50 (ms)": row.lat_p50_ms,
                          "host p95 (ms)": row.lat_p95_ms, "p95 / launch floor": row.lat_p95_ms / floor}
                         for name, row in paths])


def where_time_goes(s: Session, inputs: Inputs, teacher: Teacher, stock: Family, mega: Megakernel):
    """For the fastest path of each kind (O4, F1, F2, F1-mega, F2-mega): the profiler's kernels per call
    and GPU busy time (CUDA only), host p50/p95, and p95 against J1's launch floor through the same call
    path (a graph of one tiny kernel); where_time_goes.csv in the full profile."""
    floor_ms = j1.floor_p95(s.run.out_dir)
    specs = {**teacher.specs, **stock.specs, **mega.specs}
    paths = [("O4", inputs.teacher, teacher.o4)]
    paths += [(k, inputs.nets[r.model_key], r) for k, (r, _) in stock.choice.items() if r is not None]
    paths += [(f"{k}-mega", inputs.nets[r.model_key], r) for k, (r, _) in mega.choice.items()]
    profiles = {}
    if s.device.type == "cuda":
        for name, model, row in paths:
            variant = optimize.build(model, specs[row.id], s.test[0][:1])
            profiles[name] = bench.kernel_profile(variant, variant.prepare(s.test[0][:1]))
            del variant
    table = time_table([(name, row) for name, _, row in paths], profiles, floor_ms)
    if not s.run.profile.is_smoke:
        _csv(table.assign(device_name=s.run.env["device"], git_commit=s.run.env["git_commit"]),
             s.output("where_time_goes.csv"))
    print(f"launch floor (J1, same call path): p95 {float('nan') if floor_ms is None else floor_ms:.4f} ms")
    return table.round(4)


def megakernel_layers(s: Session, inputs: Inputs, mega: Megakernel):
    """Inside each megakernel row's one launch (F1-mega, F2-mega): a build that stamps %globaltimer at
    each layer's end, per layer (kernels.layer_timing; megakernel_layers.csv in the full profile, a
    column `row` saying which). Empty without CUDA or without a megakernel row."""
    import pandas as pd

    if s.device.type != "cuda" or not mega.choice:
        return pd.DataFrame()
    tables = []
    for key in ("F1", "F2"):
        if key not in mega.choice:
            continue
        r = mega.choice[key][0]
        rows = kernels.layer_timing(inputs.nets[r.model_key], s.test[0][:1], mirror=mega.specs[r.id].mirror)
        tables.append(pd.DataFrame(rows).assign(row=f"{key}-mega"))
        registers = [n for n in str(r.notes).split("; ") if "registers" in n]
        if registers:
            print(f"{key}-mega: " + registers[0])
    layers = pd.concat(tables, ignore_index=True)[["row", "stamp", "at_us", "step_us"]]
    if not s.run.profile.is_smoke:
        _csv(layers.assign(device_name=s.run.env["device"], git_commit=s.run.env["git_commit"]),
             s.output("megakernel_layers.csv"))
    return layers


# ---------------------------------------------------------------- what goes on to J5

def family_rows(stock: Family, mega: Megakernel) -> dict:
    """{row id: measured row} of the family: F1, F2 (stock paths), F1-mega, F2-mega, as chosen."""
    rows = {key: row for key, (row, _) in stock.choice.items() if row is not None}
    rows.update({f"{key}-mega": row for key, (row, _) in mega.choice.items()})
    return rows


def series_rows(dec: report.SeedDecisions, d1: Distilled, stock: Family, mega: Megakernel):
    """The series' rows J4 adds to results.csv: O1-O4, D1, then the family's rows under their ids."""
    import pandas as pd

    family = pd.DataFrame([{**row.to_dict(), "id": key} for key, row in family_rows(stock, mega).items()])
    return pd.concat([pd.DataFrame(dec.rows), d1.rows, family.drop(columns=["model_key"], errors="ignore")],
                     ignore_index=True)


def write_rows(s: Session, dec: report.SeedDecisions, b1: Measured, teacher: Teacher, d1: Distilled,
               stock: Family, mega: Megakernel):
    """results.csv gets the series' rows (series_rows), results_j4_variants.csv every variant measured here
    and nothing else.
    Returns results.csv as the sprint plan's table."""
    import pandas as pd

    bench.write_results(s.run.results_csv, series_rows(dec, d1, stock, mega).to_dict("records"))
    every = pd.concat([b1.rows, teacher.rows, d1.rows, *stock.rows.values(), *mega.rows.values()])
    every = every.drop(columns=["model_key"], errors="ignore")
    bench.write_results(s.output("results_j4_variants.csv"), every.to_dict("records"), replace="file")
    return report.seed_table(pd.read_csv(s.run.results_csv), {"speedup": "Speedup vs FP32 (same run)", "notes": "Notes"})


def surviving_seed_rows(dec: report.SeedDecisions) -> list[str]:
    """The seed's rows J5 re-times: O2 and O4 as measured; O1 only when FP16 was kept, O3 only when
    channels_last was (a verdict not reached drops them too)."""
    dropped = {"O1": not dec.keep.get("fp16", False), "O3": not dec.keep.get("channels_last", False)}
    return [oid for oid in dec.origin if not dropped.get(oid, False)]


def kept_variants(inputs: Inputs, dec: report.SeedDecisions, b1: Measured, teacher: Teacher, d1: Distilled,
                  stock: Family, mega: Megakernel) -> records.KeptVariants:
    """What J5 re-times, in the final table's order: B1 and B2 (FP32), the surviving seed rows, D1 and the
    family's rows, each with its checkpoint, its Spec and the accuracies J4 measured on that very build."""
    import pandas as pd

    family = family_rows(stock, mega)
    specs = {**b1.specs, **teacher.specs, **stock.specs, **mega.specs}
    b1_entry = (inputs.b1.model, inputs.b1.checkpoint, inputs.b1_model)
    teacher_entry = ("resnet18", inputs.teacher_checkpoint, inputs.teacher)
    kept = [("B1", *b1_entry, Spec()), ("B2", *teacher_entry, Spec())]
    for oid in surviving_seed_rows(dec):
        kept.append((oid, *(teacher_entry if oid == "O4" else b1_entry), specs[dec.origin[oid]]))
    kept.append(("D1", "fastnet", d1.checkpoint, inputs.nets["D1"], Spec("fp16", mirror=inputs.points["F2"].mirror)))
    for key, row in family.items():
        kept.append((key, "fastnet", inputs.checkpoints[row.model_key], inputs.nets[row.model_key], specs[row.id]))
    measured = {**{r["id"]: r for r in dec.rows}, **{r["id"]: r for r in d1.rows.to_dict("records")},
                **{k: r.to_dict() for k, r in family.items()},
                "B1": b1.rows.iloc[0].to_dict(), "B2": teacher.rows.iloc[0].to_dict()}
    entries = []
    for vid, name, checkpoint, model, spec in kept:
        known = {k: float(measured[vid][k]) for k in ("accuracy", "val_accuracy")
                 if vid in measured and pd.notna(measured[vid].get(k))}
        entries.append(records.KeptVariant(id=vid, model_name=name, checkpoint=checkpoint, spec=spec.to_dict(),
                                           variant=f"{models.label(name, models.arch_of(model))}, {spec.label}", **known))
    return records.KeptVariants(entries=entries)


def save_variants(s: Session, kept: records.KeptVariants):
    """variants.json for J5; returns what it holds, one row per variant."""
    import pandas as pd

    records.write(kept, s.output(records.KeptVariants.FILE))
    return pd.DataFrame([{"id": e.id, "variant": e.variant, "checkpoint": e.checkpoint} for e in kept.entries])
