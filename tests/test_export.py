import pytest
import torch

from fastcifar.core import data, engine, models, optimize
from fastcifar.series import export

pytest.importorskip("onnxruntime")


def small_fastnet():
    torch.manual_seed(0)
    model = models.build_model("fastnet", widths=(8, 16, 16))
    for m in model.modules():  # BN statistics, so that eval mode is not an identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_export_writes_checkpoint_and_onnx_with_parity(tmp_path):
    model = models.build_model("shufflenet_v2").eval()
    images = torch.randn(4, 3, 32, 32)
    info = export.export_final(model, "shufflenet_v2", 10, tmp_path, images, id="X")
    assert info["exported"] and info["parity_ok"] and info["images_checked"] == 4
    assert info["onnx_max_abs_diff"] < 1e-3
    loaded, ckpt = engine.load_model(tmp_path / "final_model.pt")
    assert ckpt["id"] == "X"
    with torch.inference_mode():
        assert torch.allclose(loaded(images), model(images), atol=1e-6)
    assert (tmp_path / "final_model.onnx").stat().st_size > 1e6


def test_models_over_the_size_cap_are_not_exported(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "MAX_COMMIT_MB", 1.0)
    info = export.export_final(models.build_model("shufflenet_v2"), "shufflenet_v2", 10, tmp_path, torch.randn(1, 3, 32, 32))
    assert not info["exported"] and "MB" in info["reason"]
    assert not list(tmp_path.iterdir())


def test_onnx_batch_dimension_is_free_and_metadata_describes_the_input(tmp_path):
    import onnxruntime as ort

    model = small_fastnet()
    spec = optimize.Spec(fold_bn=True)
    info = export.export_final(model, "fastnet", 10, tmp_path, torch.randn(3, 3, 32, 32), spec=spec,
                               mean=data.CIFAR10_MEAN, std=data.CIFAR10_STD, classes=[f"c{i}" for i in range(10)],
                               id="F1", variant="FastNet test variant")
    assert info["parity_ok"]
    session = ort.InferenceSession(info["onnx"], providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = torch.randn(n, 3, 32, 32)
        with torch.inference_mode():
            ref = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == (n, 10) and abs(got - ref).max() < 1e-3
    meta = export.onnx_metadata(info["onnx"])
    assert meta["mean"] == list(data.CIFAR10_MEAN) and meta["std"] == list(data.CIFAR10_STD)
    assert meta["classes"][3] == "c3" and meta["variant"] == "FastNet test variant" and meta["id"] == "F1"
    assert meta["spec"] == spec.to_dict() and meta["mirror_folded"] is False
    assert meta["arch"]["widths"] == [8, 16, 16] and meta["model_name"] == "fastnet"


def test_checkpoint_rebuilds_the_architecture_and_keeps_the_spec(tmp_path):
    model = small_fastnet()
    spec = optimize.Spec("fp16", cuda_graph=True, mirror=True)
    export.export_final(model, "fastnet", 10, tmp_path, torch.randn(2, 3, 32, 32), spec=spec)
    loaded, ckpt = engine.load_model(tmp_path / "final_model.pt")
    assert ckpt["arch"]["widths"] == [8, 16, 16] and optimize.Spec.from_dict(ckpt["spec"]) == spec
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_mirror_is_folded_into_onnx(tmp_path):
    import onnxruntime as ort

    model = small_fastnet()
    info = export.export_final(model, "fastnet", 10, tmp_path, torch.randn(4, 3, 32, 32),
                               spec=optimize.Spec(mirror=True).to_dict())
    assert info["mirror_in_onnx"] and info["parity_ok"]
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        flip_tta = ((model(x) + model(x.flip(3))) / 2).numpy()
        plain = model(x).numpy()
    got = ort.InferenceSession(info["onnx"], providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    assert abs(got - flip_tta).max() < 1e-3 and abs(got - plain).max() > 1e-3
    assert export.onnx_metadata(info["onnx"])["mirror_folded"] is True


def test_model_card_shows_what_was_given_and_nothing_else(tmp_path):
    model = small_fastnet()
    export.export_final(model, "fastnet", 10, tmp_path, torch.randn(2, 3, 32, 32), spec=optimize.Spec(mirror=True),
                        mean=data.CIFAR10_MEAN, std=data.CIFAR10_STD, classes=["plane", "car"] + list("abcdefgh"),
                        id="F9", val_accuracy=91.234, lat_p95_ms=0.12345, device_name="Some GPU")
    card = (tmp_path / "final_model.md").read_text()
    assert "91.23" in card and "0.1235" in card and "Some GPU" in card and "F9" in card
    assert "test accuracy (%) | not given" in card  # not passed: not invented
    assert "mean [0.4914, 0.4822, 0.4465]" in card and "1 car" in card and "flip test-time augmentation" in card
    assert "load_model" in card and "InferenceSession" in card
    assert "Predictor.load" in card and "fastcifar predict" in card


def test_export_leaves_the_callers_model_as_it_was(tmp_path):
    model = small_fastnet().half()
    export.export_final(model, "fastnet", 10, tmp_path, torch.randn(2, 3, 32, 32))
    assert next(model.parameters()).dtype == torch.float16  # not turned into FP32 (or moved) in place


def test_the_cards_code_runs_as_written_in_a_fresh_interpreter(tmp_path):
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    export.export_final(small_fastnet(), "fastnet", 10, tmp_path, torch.randn(2, 3, 32, 32))
    card = (tmp_path / "final_model.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(blocks) == 3 and "fastcifar predict image.png" in card
    Image.new("RGB", (48, 40), (200, 30, 90)).save(tmp_path / "image.png")  # the predictor's example file
    lib = str(Path(export.__file__).resolve().parents[2])
    for block in blocks:  # nothing imported beforehand but torch for x: the card's own imports must do
        check = ("assert prediction.class_id in range(10) and prediction.name" if "Predictor" in block
                 else "assert tuple(logits.shape) == (3, 10)")
        script = "import torch\nx = torch.randn(3, 3, 32, 32)\n" + block + "\n" + check + "\n"
        proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": lib}, timeout=120)
        assert proc.returncode == 0, proc.stderr[-1500:]
