import torch

from fastcifar import export, models, train


def test_export_writes_checkpoint_and_onnx_with_parity(tmp_path):
    model = models.build_model("shufflenet_v2").eval()
    images = torch.randn(4, 3, 32, 32)
    info = export.export_final(model, "shufflenet_v2", 10, tmp_path, images, id="X")
    assert info["exported"] and info["parity_ok"] and info["images_checked"] == 4
    assert info["onnx_max_abs_diff"] < 1e-3
    loaded, ckpt = train.load_model(tmp_path / "final_model.pt")
    assert ckpt["id"] == "X"
    with torch.inference_mode():
        assert torch.allclose(loaded(images), model(images), atol=1e-6)
    assert (tmp_path / "final_model.onnx").stat().st_size > 1e6


def test_models_over_the_size_cap_are_not_exported(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "MAX_COMMIT_MB", 1.0)
    info = export.export_final(models.build_model("shufflenet_v2"), "shufflenet_v2", 10, tmp_path, torch.randn(1, 3, 32, 32))
    assert not info["exported"] and "MB" in info["reason"]
    assert not list(tmp_path.iterdir())
