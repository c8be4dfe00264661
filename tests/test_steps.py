"""Steps of the notebooks (fastcifar.series.j1 ... j5) on the CPU with tiny data: what they read, decide
and hand on. The GPU-only steps say so and return nothing; the pure decisions are in test_decisions.py."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fastcifar.core import bench, data, engine, env, models, optimize
from fastcifar.series import j1, j2, j4, j5, records, report
from fastcifar.series.session import Session


def session(tmp_path, profile: str = "smoke") -> Session:
    run = env.Run(notebook="J", profile=env.PROFILES[profile], device=torch.device("cpu"), root=tmp_path,
                  data_dir=tmp_path / "data", out_dir=tmp_path / "outputs", env={"device": "cpu", "git_commit": "abc"})
    run.ckpt_dir.mkdir(parents=True)
    return Session(run, splits=None, val=None, test=None, meta={})


def test_j1_data_facts_are_the_same_lines_as_before(cifar_factory):
    gen = cifar_factory("cifar10", per_file=100)
    cifar = data.load_cifar("cifar10", gen.base)
    lines = j1.data_facts(cifar, 42, n_val=50).splitlines()
    assert lines[0] == "train (500, 32, 32, 3) uint8 test (100, 32, 32, 3)"
    assert lines[1].startswith("classes: 10 ['airplane'")
    assert lines[2] == "train/val split: 450 50 | val images per class: [5]"


def test_j1_gpu_steps_say_they_need_cuda(tmp_path, capsys):
    s = session(tmp_path)
    assert j1.launch_floor(s.run, 1, 1) is None
    assert j1.graph_replay_validation(s.run, None, None, 1, 1, 3) is None
    out = capsys.readouterr().out
    assert "launch floor skipped" in out and "graph replay skipped" in out
    assert not (s.run.out_dir / j1.FLOOR_CSV).exists()


def test_the_launch_floor_is_read_from_the_graph_call_path(tmp_path):
    out = tmp_path / "outputs"
    out.mkdir()
    assert j1.floor_p95(out) is None  # J1 did not measure it (no CUDA)
    rows = [{"id": f"L{k}", "variant": name, "lat_p95_ms": p95}
            for k, (name, p95) in enumerate([(bench.FLOOR_EAGER, 0.02), (bench.FLOOR_GRAPH, 0.008),
                                             (bench.FLOOR_DEVICE_SYNC, 0.012)], 1)]
    bench.write_results(out / j1.FLOOR_CSV, rows)
    assert j1.floor_p95(out) == pytest.approx(0.008)
    bench.write_results(out / j1.FLOOR_CSV, [{"id": "L2", "variant": "an older name", "lat_p95_ms": 1.0}])
    assert j1.floor_p95(out) is None  # no row of that call path: no floor rather than another path's


def test_j2_describes_the_chosen_points_as_the_notebook_checks_them():
    chosen = records.read(records.SweepRecord, env.project_root() / "outputs" / "sweep" / "chosen.json").chosen_points()
    assert j2.describe_points(chosen).splitlines() == [
        "F1: point w32, FastNet 32/64/128 x2, 295,096 parameters, recipe 'short', mirror False",
        "F2: point w128-512-x3-e90, FastNet 128/512/512 x3, 12,721,208 parameters, recipe 'long', mirror True"]


def tiny_fastnet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build_model("fastnet", widths=(8, 8, 16)).eval()


def fastnet_point(key: str, checkpoint: str | None, mirror: bool) -> records.FastNetPoint:
    extra = {"checkpoint": checkpoint, "train_s": 1.0, "val_acc": 50.0, "val_acc_mirror": 51.0} if checkpoint else {}
    return records.FastNetPoint(point=key.lower(), id=key.lower(), mirror=mirror, threshold=85.0, met=True,
                                val_accuracy=86.0, lat_p95_ms=0.1, arch={"widths": [8, 8, 16], "convs": 2},
                                recipe="short", epochs=1.0, **extra)


def measured_rows(*ids):
    return pd.DataFrame([{"id": i, "variant": f"v {i}", "accuracy": 80.0 + k, "val_accuracy": 81.0 + k,
                          "lat_p95_ms": 1.0 / (k + 1)} for k, i in enumerate(ids)])


def test_j4_keeps_what_the_rules_allow_with_the_accuracies_it_measured():
    b1_model, teacher, f1, d1_net = tiny_fastnet(0), tiny_fastnet(1), tiny_fastnet(2), tiny_fastnet(3)
    inputs = j4.Inputs(records.LightChoice("fastnet", "ck/b1.pth", "fastest"), b1_model, teacher, "ck/teacher.pth",
                       {"F1": fastnet_point("F1", "ck/f1.pth", False), "F2": fastnet_point("F2", None, True)},
                       nets={"F1": f1, "D1": d1_net}, checkpoints={"F1": "ck/f1.pth", "D1": "ck/d1.pth"})
    b1 = j4.Measured(measured_rows("J4-B1-fp32", "J4-B1-fp16", "J4-B1-cl"), {}, j4.b1_specs([]))
    teacher_m = j4.Teacher(measured_rows(*j4.TEACHER_SPECS), {}, dict(j4.TEACHER_SPECS), None, 81.0)
    dec = report.SeedDecisions(origin={"O1": "J4-B1-fp16", "O3": "J4-B1-cl", "O4": "J4-B2-fp16-fold-graph"},
                               keep={"fp16": True, "channels_last": False})
    dec.rows = [{"id": "O1", "accuracy": 85.0, "val_accuracy": 86.0}, {"id": "O3", "accuracy": 85.5, "val_accuracy": 86.5},
                {"id": "O4", "accuracy": 91.0, "val_accuracy": 92.0}]
    d1 = j4.Distilled(pd.DataFrame([{"id": "D1", "accuracy": np.nan, "val_accuracy": np.nan}]), None, None, "ck/d1.pth")
    stock_specs = {**j4.stock_specs("F1", False), **j4.stock_specs("F2", True)}
    f1_row = pd.Series({"id": "J4-F1-fp16-fold-graph", "accuracy": 86.0, "val_accuracy": 87.0, "model_key": "F1"})
    f2_row = pd.Series({"id": "J4-F2-fp32", "accuracy": 90.0, "val_accuracy": 90.5, "model_key": "D1"})
    stock = j4.Family({}, choice={"F1": (f1_row, True), "F2": (f2_row, False)}, specs=stock_specs)
    mega = j4.Megakernel({}, choice={}, specs={})
    kept = j4.kept_variants(inputs, dec, b1, teacher_m, d1, stock, mega)
    by_id = {e.id: e for e in kept.entries}
    assert list(by_id) == ["B1", "B2", "O1", "O4", "D1", "F1", "F2"]  # O3: channels_last was dropped
    assert by_id["O1"].checkpoint == "ck/b1.pth" and by_id["O1"].spec == optimize.Spec("fp16").to_dict()
    assert by_id["O4"].checkpoint == "ck/teacher.pth"
    assert by_id["O4"].spec == j4.TEACHER_SPECS["J4-B2-fp16-fold-graph"].to_dict()
    assert by_id["F2"].checkpoint == "ck/d1.pth" and by_id["F2"].spec["mirror"] is True
    assert by_id["F1"].variant == "FastNet 8/8/16 x2, FP16 + BN folded + CUDA graph"
    assert (by_id["B1"].accuracy, by_id["B1"].val_accuracy) == (80.0, 81.0)  # B1's FP32 row measured here
    assert (by_id["O4"].accuracy, by_id["F2"].val_accuracy) == (91.0, 90.5)
    assert by_id["D1"].accuracy is None and by_id["D1"].val_accuracy is None  # not measured here: J5 measures it


def save_model(tmp_path, name: str, seed: int) -> str:
    path = tmp_path / "outputs" / "checkpoints" / name
    engine.save_checkpoint(path, tiny_fastnet(seed), "fastnet", 10)
    return str(path.relative_to(tmp_path))


def test_j5_loads_each_checkpoint_once_and_keeps_j4s_accuracies(tmp_path):
    s = session(tmp_path)
    a, b = save_model(tmp_path, "a.pth", 0), save_model(tmp_path, "b.pth", 1)
    spec = optimize.Spec(fold_bn=True).to_dict()
    kept = records.KeptVariants([records.KeptVariant("B1", "fastnet", a, optimize.Spec().to_dict(), "a", 80.0, 81.0),
                                 records.KeptVariant("O1", "fastnet", a, spec, "a folded"),
                                 records.KeptVariant("F1", "fastnet", b, spec, "b folded", 70.0, None)])
    records.write(kept, s.output(records.KeptVariants.FILE))
    entries = j5.load_variants(s)
    assert [e["id"] for e in entries] == ["B1", "O1", "F1"]
    assert entries[0]["model"] is entries[1]["model"] and entries[2]["model"] is not entries[0]["model"]
    assert entries[1]["spec"] == optimize.Spec(fold_bn=True)
    assert entries[0]["accuracy"] == 80.0 and "accuracy" not in entries[1] and "accuracy" not in entries[2]
    assert list(j5.variants_table(entries).id) == ["B1", "O1", "F1"]


def test_j5_names_the_file_when_a_kept_spec_cannot_be_built(tmp_path):
    s = session(tmp_path)
    a = save_model(tmp_path, "a.pth", 0)
    retired = {**optimize.Spec().to_dict(), "backend": "fused-layers"}
    records.write(records.KeptVariants([records.KeptVariant("F1-fused", "fastnet", a, retired, "retired")]),
                  s.output(records.KeptVariants.FILE))
    with pytest.raises(records.RecordError) as info:
        j5.load_variants(s)
    text = str(info.value)
    assert "variants.json: entry F1-fused" in text and "fused-layers" in text and "J4" in text and "\n" not in text


def test_j5_missing_variants_is_one_line_naming_j4(tmp_path):
    with pytest.raises(records.RecordError, match=r"variants\.json: no such file.*J4"):
        j5.load_variants(session(tmp_path))


def test_j4_missing_b1_record_is_one_line_naming_j2(tmp_path):
    with pytest.raises(records.RecordError, match=r"b1\.json: no such file.*J2"):
        j4.load_inputs(session(tmp_path))


def test_j4_megakernel_step_without_a_backend_or_cuda_says_why(tmp_path, capsys):
    s = session(tmp_path)
    x = torch.randn(4, 3, 32, 32)
    s = Session(s.run, None, (x, torch.arange(4)), (x, torch.arange(4)), {})
    inputs = j4.Inputs(None, None, None, "", {}, nets={"F1": tiny_fastnet(0)})
    none = j4.megakernel_rows(s, inputs, {"F1": ("F1", False)}, [], 85.0, 90.0)
    assert none.rows == {} and none.choice == {} and "F1-mega: not measured here: no backend" in capsys.readouterr().out
    cpu = j4.megakernel_rows(s, inputs, {"F1": ("F1", False)}, ["megakernel"], 85.0, 90.0)
    assert cpu.choice == {} and cpu.parity.notes.iloc[0].startswith("not run: backend 'megakernel' runs a CUDA kernel")
    assert not s.output("kernel_parity.csv").exists()  # smoke profile: nothing written beside the evidence
    assert j4.megakernel_layers(s, inputs, cpu).empty
