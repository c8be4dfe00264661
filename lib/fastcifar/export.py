"""Export the final model: a checkpoint (state_dict + how it is run) and ONNX, checked for parity."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import torch

from . import atomic
from .train import save_checkpoint

MAX_COMMIT_MB = 10.0  # larger files are not committed


def export_onnx(model: torch.nn.Module, path: str | Path, example: torch.Tensor) -> Path:
    """FP32 ONNX graph of `model` in one file, written atomically."""
    model = model.float().eval().cpu()
    with atomic.atomic_path(path) as tmp, contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, (example.float().cpu(),), str(tmp), dynamo=True, external_data=False,
                          input_names=["image"], output_names=["logits"])
    return Path(path)


def onnx_parity(path: str | Path, model: torch.nn.Module, images: torch.Tensor) -> float:
    """Largest absolute difference between ONNX Runtime (CPU) and PyTorch logits, one image at a time."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = model.float().eval().cpu()
    worst = 0.0
    with torch.inference_mode():
        for img in images.float().cpu():
            ref = model(img[None]).numpy()
            got = session.run(None, {"image": img[None].numpy()})[0]
            worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def export_final(model: torch.nn.Module, model_name: str, num_classes: int, out_dir: str | Path, images: torch.Tensor,
                 **meta) -> dict:
    """Write final_model.pt and final_model.onnx under out_dir when the checkpoint is at most
    MAX_COMMIT_MB; report sizes and the ONNX parity figure."""
    out_dir = Path(out_dir)
    model = model.float().eval().cpu()
    ckpt = save_checkpoint(out_dir / "final_model.pt", model, model_name, num_classes, **meta)
    size = os.path.getsize(ckpt) / 1e6
    if size > MAX_COMMIT_MB:
        ckpt.unlink()
        return {"exported": False, "reason": f"checkpoint is {size:.1f} MB > {MAX_COMMIT_MB} MB"}
    onnx_path = export_onnx(model, out_dir / "final_model.onnx", images[:1])
    max_diff = onnx_parity(onnx_path, model, images)
    return {"exported": True, "checkpoint": str(ckpt), "checkpoint_mb": size, "onnx": str(onnx_path),
            "onnx_mb": os.path.getsize(onnx_path) / 1e6, "onnx_max_abs_diff": max_diff,
            "parity_ok": max_diff < 1e-3, "images_checked": len(images)}
