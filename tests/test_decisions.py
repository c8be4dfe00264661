"""The decisions J2, J4 and J5 take, on fixed tables: which variant stands for each row, what the
seed's rules keep, F1/F2, ratios, the export choice, the sanity verdicts."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from fastcifar.core import bench, engine, models, optimize
from fastcifar.series import report


def rows(*specs):
    """(id, precision, memory_format, val, test, p95, compile_s) tuples -> a results-like table."""
    return pd.DataFrame([{"id": i, "variant": f"v {i}", "precision": p, "memory_format": m, "val_accuracy": v,
                          "accuracy": t, "lat_p95_ms": l, "compile_mode": "", "compile_s": c}
                         for i, p, m, v, t, l, c in specs])


B1 = rows(("fp32", "fp32", "contiguous", 86.0, 86.2, 5.0, np.nan),
          ("fp16", "fp16", "contiguous", 86.0, 86.1, 4.0, np.nan),
          ("cl", "fp32", "channels_last", 86.0, 86.2, 4.9, np.nan),
          ("compiled", "fp16", "contiguous", 86.0, 86.1, 0.5, 21.0),
          ("graph", "fp16", "contiguous", 86.0, 86.1, 0.4, np.nan),
          ("skipped", "fp16", "contiguous", np.nan, np.nan, np.nan, np.nan))


def test_fastest_ignores_unmeasured_rows():
    assert report.fastest(B1).id == "graph"
    assert report.fastest(B1, ["fp32", "cl"]).id == "cl"
    assert report.fastest(B1, ["skipped"]) is None


def test_seed_decisions_apply_both_rules():
    dec = report.seed_decisions(B1, "fp32", {"O1": ["fp16"], "O2": ["compiled"], "O3": ["cl"]}, 0.5, 0.05)
    assert dec.origin == {"O1": "fp16", "O2": "compiled", "O3": "cl"}
    assert [r["id"] for r in dec.rows] == ["O1", "O2", "O3"]
    assert dec.keep == {"fp16": True, "channels_last": False}  # 5.0 -> 4.9 ms is a 2% gain, under 5%
    assert any("channels_last" in line and "DROPPED" in line for line in dec.lines)
    assert any("compile time 21.0 s" in line for line in dec.lines)
    worse = B1.assign(accuracy=B1.accuracy.where(B1.id != "fp16", 85.5))  # a 0.7-point drop
    assert report.seed_decisions(worse, "fp32", {"O1": ["fp16"]}).keep["fp16"] is False
    missing = report.seed_decisions(B1, "fp32", {"O1": ["skipped"]})
    assert missing.rows == [] and "not measured" in missing.lines[0]


def test_allowed_follows_the_verdicts():
    assert set(report.allowed(B1, {"fp16": True, "channels_last": False}).id) == {"fp32", "fp16", "compiled", "graph"}
    assert set(report.allowed(B1, {"fp16": False, "channels_last": True}).id) == {"fp32", "cl"}
    assert set(report.allowed(B1, {}).id) == {"fp32"}  # no verdict reached: the default only


def test_family_choice_meets_or_flags():
    row, met, line = report.family_choice(B1, 85.0, "F1")
    assert met and row.id == "graph" and "F1 = graph" in line
    row, met, line = report.family_choice(B1, 99.0, "F2")
    assert not met and "MISSED" in line and row.val_accuracy == B1.val_accuracy.max()
    assert report.family_choice(B1[B1.id == "skipped"], 85.0, "F1")[0] is None


def test_choose_light_model():
    light = rows(("a", "fp32", "contiguous", 84.0, 84.0, 3.0, np.nan),
                 ("b", "fp32", "contiguous", 86.0, 85.0, 6.0, np.nan),
                 ("c", "fp32", "contiguous", 87.0, 86.0, 5.0, np.nan)).assign(model=["a", "b", "c"])
    row, why = report.choose_light_model(light, ["a", "b", "c"], 85.0)
    assert row.model == "c" and "clears" in why
    row, why = report.choose_light_model(light, ["a"], 85.0)
    assert row.model == "a" and "kept the most accurate" in why


def final_table():
    return pd.DataFrame([
        {"id": "B2", "val_accuracy": 92.0, "accuracy": 91.5, "lat_p95_ms": 2.0},
        {"id": "O4", "val_accuracy": 92.0, "accuracy": 91.5, "lat_p95_ms": 0.25},
        {"id": "F1", "val_accuracy": 87.0, "accuracy": 86.0, "lat_p95_ms": 0.09},
        {"id": "F2", "val_accuracy": 92.5, "accuracy": 92.2, "lat_p95_ms": 0.2},
        {"id": "F1-mega", "val_accuracy": 87.0, "accuracy": 86.0, "lat_p95_ms": 0.05},
    ])


def test_same_run_ratios():
    out = report.same_run_ratios(final_table(), ["O4", "B2", "X9"])
    f1 = out[out.id == "F1-mega"].iloc[0]
    assert f1.x_vs_O4 == pytest.approx(5.0) and f1.x_vs_B2 == pytest.approx(40.0)
    assert out.x_vs_X9.isna().all()


def test_family_status_lines():
    lines = report.family_status(final_table(), 85.0, 92.0, {"F1": 0.08, "F1-mega": 0.04})
    assert lines[0].startswith("F1: val 87.00% vs 85.00% (met)") and "target 0.080 ms (MISSED)" in lines[0]
    assert "(met)" in lines[1]  # F2: 92.5 >= the teacher's 92.0
    assert "target 0.040 ms (MISSED)" in lines[2]
    assert lines[3] == "F2-mega: not in this table"


def test_export_choice_is_the_final_candidate():
    entries = {r: {"id": r} for r in final_table().id}
    assert report.export_choice(final_table(), entries, 85.0)["id"] == "F1-mega"
    assert report.export_choice(final_table(), entries, 99.0) is None


def test_sanity_failures():
    good = [{"model": "m", "initial loss": math.log(10) + 0.05, "loss after overfitting 64 images": 0.01}]
    assert engine.sanity_failures(good, 10) == []
    bad = [{"model": "m", "initial loss": 3.0, "loss after overfitting 64 images": 0.2}]
    problems = engine.sanity_failures(bad, 10)
    assert len(problems) == 2 and "ln(10)" in problems[0] and "not memorised" in problems[1]
    assert len(engine.sanity_failures(bad, 10, overfit=False)) == 1


def test_parity_and_reused_accuracies_on_the_cpu():
    torch.manual_seed(0)
    model = models.build_model("fastnet", widths=(8, 8, 16)).eval()
    test = (torch.randn(40, 3, 32, 32), torch.randint(0, 10, (40,)))
    variant = optimize.build(model, optimize.Spec(fold_bn=True, mirror=True), test[0][:1])
    p = optimize.parity(model, variant, test, n_random=20)
    assert p["max_rel_logit_diff_random"] < 1e-4 and p["same_prediction_pct"] == 100.0
    assert p["accuracy_fp32_pct"] == p["accuracy_variant_pct"]
    _, row = optimize.evaluated(model, optimize.Spec(), test, test, known={"accuracy": 12.5, "val_accuracy": 25.0})
    assert row["accuracy"] == 12.5 and row["val_accuracy"] == 25.0


def test_kernel_profile_needs_cuda():
    with pytest.raises(RuntimeError, match="CUDA"):
        bench.kernel_profile(lambda x: x, torch.zeros(1))


# ---------------------------------------------------------------- the notebooks' own decisions (fastcifar.series.j4, j5)

from fastcifar.series import j4, j5, records  # noqa: E402


def point(trained: bool, mirror: bool, val_acc: float = 90.0, val_acc_mirror: float = 91.0) -> records.FastNetPoint:
    extra = {"checkpoint": "ck.pth", "train_s": 1.0, "val_acc": val_acc, "val_acc_mirror": val_acc_mirror} if trained else {}
    return records.FastNetPoint(point="p", id="p", mirror=mirror, threshold=92.0, met=False, val_accuracy=91.0,
                                lat_p95_ms=0.3, arch={"widths": [8, 8, 16], "convs": 2}, recipe="short", epochs=1.0,
                                **extra)


def test_f2_is_d1_unless_the_labels_only_model_scores_higher():
    assert j4.f2_network(point(trained=False, mirror=True), 10.0, 10.0) == "D1"  # nothing else was trained
    assert j4.f2_network(point(True, mirror=True, val_acc_mirror=91.0), 95.0, 90.5) == "F2"  # judged with the mirror
    assert j4.f2_network(point(True, mirror=False, val_acc=91.0), 95.0, 90.5) == "D1"  # judged without it
    assert j4.f2_network(point(True, mirror=False, val_acc=91.0), 91.0, 0.0) == "D1"  # a tie goes to D1


def test_o4_is_the_fastest_teacher_path_within_the_fp16_rule():
    t = rows(("t32", "fp32", "contiguous", 92.0, 91.0, 2.0, np.nan),
             ("t16", "fp16", "contiguous", 92.0, 90.4, 0.2, np.nan),   # drops 0.6 points: not allowed
             ("t16cl", "fp16", "channels_last", 92.0, 90.8, 0.3, np.nan))
    assert j4.choose_o4(t, 0.5).id == "t16cl"
    assert j4.choose_o4(t, 1.0).id == "t16"


def test_the_seed_branch_follows_the_bar():
    assert "I3 optimisations only" in j4.seed_branch(85.2, 85.0)
    assert "distillation (I4) needed" in j4.seed_branch(84.9, 85.0)


def decisions(keep: dict) -> report.SeedDecisions:
    dec = report.SeedDecisions(origin={"O1": "b-fp16", "O2": "b-compiled", "O3": "b-cl", "O4": "t-graph"}, keep=keep)
    dec.rows = [{"id": oid, "accuracy": 80.0 + i, "val_accuracy": 81.0 + i} for i, oid in enumerate(dec.origin)]
    return dec


@pytest.mark.parametrize("keep, survivors", [
    ({"fp16": True, "channels_last": True}, ["O1", "O2", "O3", "O4"]),
    ({"fp16": False, "channels_last": True}, ["O2", "O3", "O4"]),
    ({"fp16": True, "channels_last": False}, ["O1", "O2", "O4"]),
    ({}, ["O2", "O4"]),  # a verdict not reached drops its row too
])
def test_which_seed_rows_survive_into_j5(keep, survivors):
    assert j4.surviving_seed_rows(decisions(keep)) == survivors


def family(choice: dict, rows_by_key: dict | None = None) -> j4.Family:
    return j4.Family(networks={}, rows=rows_by_key or {}, choice=choice, specs={})


def test_the_series_rows_are_the_seed_rows_then_d1_then_the_family_under_its_ids():
    f1 = pd.Series({"id": "J4-F1-fp16-fold-graph", "variant": "f1", "lat_p95_ms": 0.1, "model_key": "F1"})
    f2 = pd.Series({"id": "J4-F2-fp32", "variant": "f2", "lat_p95_ms": 0.5, "model_key": "D1"})
    mega = pd.Series({"id": "J4-F1-megakernel-graph", "variant": "f1 mega", "lat_p95_ms": 0.05, "model_key": "F1"})
    d1 = j4.Distilled(rows=pd.DataFrame([{"id": "D1", "lat_p95_ms": 0.6}]), result=None, recipe=None, checkpoint="d.pth")
    out = j4.series_rows(decisions({"fp16": True}), d1, family({"F1": (f1, True), "F2": (f2, False)}),
                         family({"F1": (mega, True)}))
    assert list(out.id) == ["O1", "O2", "O3", "O4", "D1", "F1", "F2", "F1-mega"]
    assert "model_key" not in out.columns
    none = j4.series_rows(decisions({}), d1, family({"F1": (None, False)}), family({}))
    assert list(none.id) == ["O1", "O2", "O3", "O4", "D1"]


def test_where_the_time_goes_divides_by_the_launch_floor():
    o4 = pd.Series({"variant": "teacher", "lat_p50_ms": 0.2, "lat_p95_ms": 0.25})
    f1 = pd.Series({"variant": "f1", "lat_p50_ms": 0.04, "lat_p95_ms": 0.05})
    table = j4.time_table([("O4", o4), ("F1-mega", f1)], {"O4": {"kernels_per_call": 30.0, "gpu_busy_ms": 0.1}}, 0.01)
    assert list(table.row) == ["O4", "F1-mega"]
    assert table["p95 / launch floor"].tolist() == pytest.approx([25.0, 5.0])
    assert table.kernels_per_call.iloc[0] == 30.0 and np.isnan(table.kernels_per_call.iloc[1])
    assert np.isnan(j4.time_table([("O4", o4)], {}, None)["p95 / launch floor"].iloc[0])  # no floor measured


def runs_table():
    """Two interleaved runs of a small final measurement, as optimize.remeasure returns them."""
    base = [("B1", "mobilenet_v3_small", 86.0, 85.5, 4.0), ("B2", "resnet18", 92.0, 91.5, 2.0),
            ("O4", "resnet18", 92.0, 91.4, 0.25), ("F1", "fastnet", 87.0, 86.0, 0.09),
            ("F1-mega", "fastnet", 86.9, 86.1, 0.05), ("D1", "fastnet", 92.5, 92.2, 1.5)]
    rows = []
    for run, wobble in ((1, 1.0), (2, 1.1)):
        rows += [{"id": i, "variant": f"v {i}", "model": m, "val_accuracy": v, "accuracy": t, "lat_mean_ms": p * wobble,
                  "lat_p95_ms": p * wobble, "size_mb": 1.0, "gpu_mean_ms": p, "run": run} for i, m, v, t, p in base]
    return pd.DataFrame(rows)


def test_the_final_table_ratios_flags_and_candidate():
    final = j5.final_table(runs_table(), 85.0)
    t = final.table.set_index("id")
    assert final.chosen_id == "F1-mega" and t.final.tolist().count(True) == 1 and t.loc["F1-mega", "final"]
    assert t.loc["B1", "speedup"] == pytest.approx(1.0) and t.loc["O4", "speedup"] == pytest.approx(8.0)  # vs B2
    assert np.isnan(t.loc["F1", "speedup"])  # no FP32 row of its own architecture
    assert t.loc["F1-mega", "x_vs_O4"] == pytest.approx(5.0) and t.loc["F1-mega", "x_vs_B2"] == pytest.approx(40.0)
    assert t.loc["B1", "p95_spread_pct"] == pytest.approx(10.0)
    assert j5.columns_present(final) == list(j5.FINAL_COLUMNS)
    nothing = j5.final_table(runs_table(), 99.0)
    assert nothing.chosen is None and not nothing.table.final.any() and "99" in nothing.why_none


def test_the_final_tables_markdown_says_how_it_was_measured():
    final = j5.final_table(runs_table(), 85.0)
    text = j5.table_markdown(final, 2, 500, {"device": "NVIDIA H200", "torch": "2.11", "git_commit": "abc123"},
                             "cifar10 official", "full")
    head, *_, last = text.strip().splitlines()
    assert head.startswith("| ID | Variant | Test acc. (%)") and "| Final |" in head
    assert last == ("6 variants, 2 interleaved runs each, 500 timed calls per run, on NVIDIA H200; torch 2.11; "
                    "data: cifar10 official; commit abc123; profile full.")
    assert "| F1-mega |" in text and "| yes |" in text


def test_the_candidate_lines_and_the_analysis():
    final = j5.final_table(runs_table(), 85.0)
    lines = j5.candidate_lines(final, {"F1-mega": 0.04}, 0.01)
    assert lines[0] == "final candidate: F1-mega = v F1-mega"
    assert any(line.startswith("F1-mega: val 86.90% vs 85.00% (met)") and "(MISSED)" in line for line in lines)
    assert lines[-1] == "  the final candidate's p95 is 5.2x that floor"  # 0.0525 ms (two runs) over 0.01
    assert not any("launch floor" in line for line in j5.candidate_lines(final, {}, None))
    analysis = j5.analysis_lines(final)
    assert "- the teacher's best path (O4): p95 speedup 8.00x against B2" in analysis
    assert "- the megakernel on F1 (F1-mega): p95 speedup 1.80x against F1" in analysis
    assert "- FP16 on B1 (O1): not kept by the seed's rules, or not measured" in analysis
    assert analysis[-1].startswith("- final: F1-mega") and any("distillation into the F2" in a for a in analysis)


def test_what_j5_exports_is_the_final_candidates_entry():
    final = j5.final_table(runs_table(), 85.0)
    entries = [{"id": i} for i in final.table.id]
    assert j5.final_candidate(final, entries) == {"id": "F1-mega"}
    assert j5.final_candidate(j5.final_table(runs_table(), 99.0), entries) is None


def test_the_seed_rules_default_to_the_sprint_plan():
    rules = report.seed_rules()
    assert (rules.bar, rules.fp16_max_drop, rules.channels_last_min_gain) == (
        report.SEED_BAR, report.FP16_MAX_DROP, report.CHANNELS_LAST_MIN_GAIN)
    assert report.seed_rules(90).bar == 90.0 and report.seed_rules(None, 1.0).fp16_max_drop == 1.0
