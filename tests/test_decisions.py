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
