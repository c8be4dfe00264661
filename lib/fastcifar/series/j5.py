"""J5, the consolidation: every variant J4 kept re-timed three times, interleaved; the final table (also
README's block); the final candidate; the analysis; the export of the final model. One function per step
of notebooks/J5_final.ipynb, in its order.

Reads variants.json (records.KeptVariants, from J4) and J1's launch floor; writes results_j5_runs.csv,
final_table.csv/.md (and README's final-table block in the full profile), j5_*.png and final_model.*.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from . import records, report
from .session import Session
from ..core import atomic, bench, engine, optimize

RUNS_CSV = "results_j5_runs.csv"
REFERENCES = ("O4", "B2")  # the `x_vs_<ID>` columns: how many times faster than these rows, same run
FLAG_COLUMNS = ["p95_spread_pct", *(f"x_vs_{r}" for r in REFERENCES), "final"]
MARKDOWN_COLUMNS = {**report.SEED_COLUMNS, "gpu_mean_ms": "GPU time (ms)", "p95_spread_pct": "p95 spread over runs (%)",
                    "speedup": "Speedup vs own FP32", "x_vs_O4": "x faster than O4", "x_vs_B2": "x faster than B2",
                    "final": "Final"}
# The columns every final table has, whatever the hardware (the notebook checks them against its stored output).
FINAL_COLUMNS = ("id", "variant", "accuracy", "val_accuracy", "lat_mean_ms", "lat_p95_ms", "size_mb", "gpu_mean_ms",
                 "p95_spread_pct", "speedup", "x_vs_O4", "x_vs_B2", "final")
# What each ratio of the analysis compares: (row, against, in words).
RATIOS = (("O1", "B1", "FP16 on B1"), ("O2", "B1", "FP16 + compile on B1"), ("O3", "B1", "channels_last on B1"),
          ("O4", "B2", "the teacher's best path"), ("F1", "O4", "FastNet F1 on its best stock path"),
          ("F2", "O4", "FastNet F2 on its best stock path"), ("F1-mega", "F1", "the megakernel on F1"),
          ("F2-mega", "F2", "the megakernel on F2"))


def load_variants(s: Session) -> list[dict]:
    """variants.json (J4), each checkpoint loaded once onto the device, each Spec rebuilt: entries as
    optimize.remeasure takes them ({id, variant, model_name, model, spec}, with J4's accuracies when it
    measured them). A Spec this code cannot build is one RecordError naming the file and the entry."""
    path = s.output(records.KeptVariants.FILE)
    kept = records.read(records.KeptVariants, path)
    loaded, entries = {}, []
    for e in kept.entries:
        try:
            spec = optimize.Spec.from_dict(e.spec)
        except (TypeError, ValueError) as exc:
            raise records.RecordError(f"{path}: entry {e.id}: its spec cannot be built here ({exc}); run "
                                      f"{records.KeptVariants.MADE_BY} again") from None
        if e.checkpoint not in loaded:
            loaded[e.checkpoint] = engine.load_model(s.run.resolve(e.checkpoint), s.device, e.model_name)[0]
        entry = {"id": e.id, "variant": e.variant, "model_name": e.model_name, "model": loaded[e.checkpoint],
                 "spec": spec}
        if e.accuracy is not None and e.val_accuracy is not None:  # J4 measured this build: J5 only re-times it
            entry.update(accuracy=e.accuracy, val_accuracy=e.val_accuracy)
        entries.append(entry)
    return entries


def variants_table(entries: list[dict]):
    import pandas as pd

    return pd.DataFrame([{"id": e["id"], "variant": e["variant"]} for e in entries])


def final_measurement(s: Session, entries: list[dict], runs: int):
    """Every entry built once, then timed `runs` times, interleaved (optimize.remeasure); the rows replace
    results_j5_runs.csv (ids <id>#<run>). Returns (one row per entry and run, {id: host samples})."""
    runs_df, samples = optimize.remeasure(entries, s.val, s.test, runs, s.warmup, s.iters, s.meta,
                                          allow_compile=s.run.profile.compile)
    rows = runs_df.assign(id=runs_df.id + "#" + runs_df.run.astype(str)).to_dict("records")
    bench.write_results(s.output(RUNS_CSV), rows, replace="file")
    return runs_df, samples


@dataclass
class FinalTable:
    table: object            # DataFrame, one row per variant
    chosen: object | None    # the final candidate's row (pandas Series), None when nothing clears the bar
    bar: float
    why_none: str = ""       # why there is no final candidate

    @property
    def chosen_id(self) -> str | None:
        return None if self.chosen is None else self.chosen.id


def final_table(runs_df, bar: float) -> FinalTable:
    """The final table from the interleaved runs: latencies averaged and the p95 spread over runs
    (report.aggregate_runs); speedup against the FP32 baseline of the same architecture (B1 or B2); the
    ratios to O4 and B2; and the final candidate (report.select_final: the lowest p95 whose validation
    accuracy clears `bar`), flagged in `final`."""
    final = report.aggregate_runs(runs_df)
    ref_p95 = {r.model: r.lat_p95_ms for r in final[final.id.isin(["B1", "B2"])].itertuples()}
    final["speedup"] = final.model.map(ref_p95) / final.lat_p95_ms
    final = report.same_run_ratios(final, list(REFERENCES))
    try:
        chosen, why = report.select_final(final, bar), ""
    except ValueError as exc:  # happens in smoke runs (one epoch on a few hundred images)
        chosen, why = None, str(exc)
    final["final"] = final.id == (None if chosen is None else chosen.id)
    return FinalTable(final, chosen, bar, why)


def table_markdown(final: FinalTable, runs: int, measure_iters: int, env: dict, data_source: str, profile: str) -> str:
    """final_table.md, also README's final-table block: the table, then one line saying how it was measured."""
    return (report.markdown_table(final.table, MARKDOWN_COLUMNS)
            + f"\n{len(final.table)} variants, {runs} interleaved runs each, {measure_iters} timed calls per run, on "
              f"{env['device']}; torch {env['torch']}; data: {data_source}; commit {env['git_commit']}; profile {profile}.\n")


def write_final_table(s: Session, final: FinalTable, runs: int) -> str:
    """final_table.csv (every results column and the flags) and final_table.md; in the full profile the same
    markdown replaces README's final-table block. Returns the markdown table."""
    if final.chosen is None:
        print(f"NO FINAL CANDIDATE: {final.why_none}")
    with atomic.atomic_path(s.output("final_table.csv")) as tmp:
        final.table.reindex(columns=[*bench.RESULT_COLUMNS, *FLAG_COLUMNS]).to_csv(tmp, index=False)
    text = table_markdown(final, runs, s.iters, s.run.env, s.splits.source, s.run.profile.name)
    atomic.write_text(s.output("final_table.md"), text)
    if not s.run.profile.is_smoke:
        report.update_readme(s.run.root / "README.md", text)
    return report.markdown_table(final.table, MARKDOWN_COLUMNS)


def columns_present(final: FinalTable) -> list[str]:
    return [c for c in FINAL_COLUMNS if c in final.table.columns]


def candidate_lines(final: FinalTable, targets_ms: dict, floor_ms: float | None) -> list[str]:
    """The final candidate (validation decides, test reported after), the family rows against their bars
    and p95 targets (report.family_status), and the candidate against J1's launch floor."""
    lines, c, bar = [], final.chosen, final.bar
    if c is not None:
        lines += [f"final candidate: {c.id} = {c.variant}",
                  f"  validation {c.val_accuracy:.2f}% (bar {bar}%), then test {c.accuracy:.2f}% "
                  f"({'meets' if c.accuracy >= bar else 'MISSES'} the bar on test)",
                  f"  p95 {c.lat_p95_ms:.4f} ms, mean {c.lat_mean_ms:.4f} ms, spread over runs {c.p95_spread_pct:.1f}%"]
    b2 = final.table[final.table.id == "B2"]
    b2_val = float(b2.val_accuracy.iloc[0]) if len(b2) else float("nan")
    lines += report.family_status(final.table, bar, b2_val, targets_ms)
    if floor_ms is not None:
        lines.append(f"launch floor (J1, a graph of one tiny kernel, same call path): p95 {floor_ms:.4f} ms")
        if c is not None:
            lines.append(f"  the final candidate's p95 is {c.lat_p95_ms / floor_ms:.1f}x that floor")
    return lines


def analysis_lines(final: FinalTable) -> list[str]:
    """What each step bought (RATIOS: p95 speedups within this run), distillation against the teacher, and
    the final candidate, as markdown bullets."""
    t = final.table

    def p95(rid):
        r = t[t.id == rid]
        return None if r.empty else float(r.lat_p95_ms.iloc[0])

    lines = []
    for a, b, what in RATIOS:
        pa, pb = p95(a), p95(b)
        lines.append(f"- {what} ({a}): " + (f"p95 speedup {pb / pa:.2f}x against {b}" if pa and pb
                                             else "not kept by the seed's rules, or not measured"))
    d1, b2 = t[t.id == "D1"], t[t.id == "B2"]
    if len(d1) and len(b2):
        lines.append(f"- distillation into the F2 architecture (D1): validation {d1.val_accuracy.iloc[0]:.2f}%, "
                     f"test {d1.accuracy.iloc[0]:.2f}%, against the teacher's {b2.val_accuracy.iloc[0]:.2f}% / "
                     f"{b2.accuracy.iloc[0]:.2f}%")
    if final.chosen is not None:
        c = final.chosen
        lines.append(f"- final: {c.id}, {c.variant}: p95 {c.lat_p95_ms:.4f} ms, test {c.accuracy:.2f}%")
    return lines


def final_candidate(final: FinalTable, entries: list[dict]) -> dict | None:
    """The final candidate's entry (its loaded model, Spec, id, variant): what J5 exports. None when nothing
    clears the bar."""
    return report.export_choice(final.table, {e["id"]: e for e in entries}, final.bar)


def export_candidate(s: Session, final: FinalTable, candidate: dict | None) -> dict | None:
    """The final model exported whole (series.export: weights and architecture, the Spec, ONNX checked
    against PyTorch, a model card) in the full profile; said in one line otherwise. Returns export's report."""
    from . import export

    if s.run.profile.is_smoke or candidate is None:
        print("not exported: " + ("smoke profile" if s.run.profile.is_smoke else "no final candidate"))
        return None
    c = final.chosen
    info = export.export_final(candidate["model"], candidate["model_name"], len(s.splits.classes), s.run.out_dir,
                               s.test[0][:256].cpu(), spec=candidate["spec"], mean=s.splits.mean, std=s.splits.std,
                               classes=s.splits.classes, id=candidate["id"], variant=candidate["variant"],
                               val_accuracy=float(c.val_accuracy), test_accuracy=float(c.accuracy),
                               lat_p95_ms=float(c.lat_p95_ms), lat_mean_ms=float(c.lat_mean_ms),
                               device_name=s.run.env["device"], data_source=s.splits.source,
                               git_commit=s.run.env["git_commit"])
    print(json.dumps(info, indent=2))
    return info
