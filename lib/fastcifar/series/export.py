"""Export the final model: a checkpoint (state_dict, model name and architecture, how it is run), an ONNX
graph (dynamic batch, preprocessing and class names in its metadata, flip TTA folded in when the Spec
has it) checked for parity against PyTorch, and a short model card."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..core import atomic
from ..core.engine import save_checkpoint
from ..core.models import arch_of, label
from ..core.optimize import with_mirror

MAX_COMMIT_MB = 10.0  # larger files are not committed
PARITY_TOLERANCE = 1e-3  # largest |ONNX - PyTorch| logit difference accepted (FP32 on the CPU)
METADATA_PREFIX = "fastcifar."


class Inference(nn.Module):
    """What the ONNX graph computes: the model, and with `mirror` optimize.with_mirror of it (the mean
    of its logits for the batch and for the batch mirrored left-right, one pass over 2N images)."""

    def __init__(self, model: nn.Module, mirror: bool = False):
        super().__init__()
        self.model, self.mirror = model, mirror

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return with_mirror(self.model)(image) if self.mirror else self.model(image)


def _spec_dict(spec) -> dict | None:
    if spec is None:
        return None
    return spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)


def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor, mirror: bool = False,
                metadata: dict | None = None) -> Path:
    """FP32 ONNX graph of `model` (with flip TTA when `mirror`) in one file, written atomically.

    Input `image` (N, 3, 32, 32) float32 with N free; output `logits` (N, classes). `metadata` goes into
    the file's metadata_props under `fastcifar.<key>` (values that are not text are stored as JSON)."""
    import onnx

    wrapped = Inference(copy.deepcopy(model).float().eval().cpu(), mirror).eval()
    example = example.float().cpu()
    if len(example) < 2:  # torch.export fixes a dimension of size 1; trace with two images
        example = torch.cat([example, example.flip(3)])[:2]
    batch = torch.export.Dim("batch", min=1, max=65536)
    with atomic.atomic_path(path) as tmp:
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(wrapped, (example[:2],), str(tmp), dynamo=True, external_data=False,
                              input_names=["image"], output_names=["logits"],
                              dynamic_shapes={"image": {0: batch}})
        proto = onnx.load(str(tmp))
        props = {**(metadata or {}), "mirror_folded": bool(mirror), "fastcifar_version": __version__}
        for key, value in props.items():
            entry = proto.metadata_props.add()
            entry.key = METADATA_PREFIX + key
            entry.value = value if isinstance(value, str) else json.dumps(value)
        onnx.save(proto, str(tmp))
    return Path(path)


def onnx_metadata(path: str | Path) -> dict:
    """The `fastcifar.*` metadata of an exported ONNX file, JSON values decoded."""
    import onnx

    out = {}
    for entry in onnx.load(str(path), load_external_data=False).metadata_props:
        if entry.key.startswith(METADATA_PREFIX):
            try:
                out[entry.key[len(METADATA_PREFIX):]] = json.loads(entry.value)
            except json.JSONDecodeError:
                out[entry.key[len(METADATA_PREFIX):]] = entry.value
    return out


def onnx_parity(path: str | Path, model: nn.Module, images: torch.Tensor, mirror: bool = False) -> float:
    """Largest absolute difference between ONNX Runtime (CPU) and PyTorch logits (with the same flip TTA
    when `mirror`): one image at a time, then all images as one batch (the batch dimension is free)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = Inference(copy.deepcopy(model).float().eval().cpu(), mirror).eval()
    images = images.float().cpu()
    worst = 0.0
    with torch.inference_mode():
        for img in images:
            ref = reference(img[None]).numpy()
            got = session.run(None, {"image": img[None].numpy()})[0]
            worst = max(worst, float(np.abs(ref - got).max()))
        if len(images) > 1:
            got = session.run(None, {"image": images.numpy()})[0]
            worst = max(worst, float(np.abs(reference(images).numpy() - got).max()))
    return worst


def _figure(meta: dict, key: str, fmt: str = "{:.2f}") -> str:
    value = meta.get(key)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "not given"
    return fmt.format(value) if isinstance(value, (int, float)) else str(value)


def model_card(model_name: str, arch: dict, info: dict, meta: dict, spec: dict | None, mean, std,
               classes) -> str:
    """A short markdown card of the exported model, from the values the caller passed (never invented)."""
    from ..core.optimize import Spec

    timed = Spec.from_dict(spec).label if spec else "not given"
    lat = "; ".join(f"{name} {_figure(meta, key, '{:.4f}')} ms" for name, key in (("p95", "lat_p95_ms"), ("mean", "lat_mean_ms"))
                    if meta.get(key) is not None) or "not given"
    if meta.get("device_name"):
        lat += f" on {meta['device_name']}"
    norm = (f"RGB scaled to [0, 1], then (x - mean) / std per channel, mean {list(mean)}, std {list(std)}"
            if mean is not None and std is not None else "not given")
    names = ", ".join(f"{i} {c}" for i, c in enumerate(classes)) if classes else "not given"
    mirror = bool(spec and spec.get("mirror"))
    return f"""# Final model: {meta.get('variant') or label(model_name, arch)}

What it is: a CIFAR-10 classifier ({label(model_name, arch)}; `{model_name}`{', ' + json.dumps(arch) if arch else ''}),
variant `{_figure(meta, 'id')}`, exported by fastcifar {__version__} at commit {_figure(meta, 'git_commit')}.
Data: {_figure(meta, 'data_source')}.

| figure | value |
|---|---|
| validation accuracy (%) | {_figure(meta, 'val_accuracy')} |
| test accuracy (%) | {_figure(meta, 'test_accuracy')} |
| latency at batch 1, as timed ({timed}) | {lat} |
| input | float32 (N, 3, 32, 32), {norm} |
| classes | {names} |

Files: `final_model.pt` (weights, model name, architecture and the inference Spec) and `final_model.onnx`
(FP32, batch dimension free{', flip test-time augmentation folded in' if mirror else ''}; mean, std, class
names and variant in its metadata; largest difference to PyTorch on {info['images_checked']} images:
{info['onnx_max_abs_diff']:.2e}).

Load and run, x a normalised (N, 3, 32, 32) tensor: in PyTorch (FP32, without the flip TTA)

```python
from fastcifar.core.engine import load_model
model, ckpt = load_model("final_model.pt")
logits = model(x)
```

or with ONNX Runtime (as exported{', flip TTA included' if mirror else ''})

```python
import onnxruntime
session = onnxruntime.InferenceSession("final_model.onnx")
logits = session.run(None, {{"image": x.numpy()}})[0]
```

Classify images as they come (a file, a PIL image or a uint8 HxWx3 RGB array, any size: resized to
32x32), with the variant above in one CUDA graph on a GPU, else in FP32 on the CPU:

```python
from fastcifar.series.predict import Predictor
predictor = Predictor.load("final_model.pt")
prediction = predictor("image.png")  # .name, .probability, .probabilities, .top(3)
```

or from the command line (one line per image, then the model's time per image; `--json` for JSON lines):

```bash
fastcifar predict image.png photos/ --model final_model.pt --top 3
```
"""


def export_final(model: nn.Module, model_name: str, num_classes: int, out_dir: str | Path, images: torch.Tensor,
                 spec=None, mean=None, std=None, classes=None, **meta) -> dict:
    """Write final_model.pt, final_model.onnx and final_model.md under out_dir when the checkpoint is at
    most MAX_COMMIT_MB; report sizes and the ONNX parity figure.

    `spec` (an optimize.Spec or its dict) is how the model is run: stored in the checkpoint, and its
    mirror (flip TTA) is folded into the ONNX graph. `mean`, `std` and `classes` describe the input and
    output (ONNX metadata, card). `meta` (id, variant, val_accuracy, test_accuracy, lat_p95_ms,
    lat_mean_ms, device_name, data_source, git_commit, ...) is stored in the checkpoint and shown in the
    card; what is not given is shown as "not given"."""
    out_dir = Path(out_dir)
    model = copy.deepcopy(model).float().eval().cpu()  # the caller's model stays where and as it is
    spec = _spec_dict(spec)
    described = {"spec": spec, "mean": list(mean) if mean is not None else None,
                 "std": list(std) if std is not None else None, "classes": list(classes) if classes else None}
    ckpt = save_checkpoint(out_dir / "final_model.pt", model, model_name, num_classes,
                           **{k: v for k, v in described.items() if v is not None}, **meta)
    size = os.path.getsize(ckpt) / 1e6
    if size > MAX_COMMIT_MB:
        ckpt.unlink()
        return {"exported": False, "reason": f"checkpoint is {size:.1f} MB > {MAX_COMMIT_MB} MB"}
    mirror = bool(spec and spec.get("mirror"))
    metadata = {k: v for k, v in {**described, "model_name": model_name, "arch": arch_of(model),
                                  "variant": meta.get("variant"), "id": meta.get("id")}.items() if v is not None}
    onnx_path = export_onnx(model, out_dir / "final_model.onnx", images[:2], mirror=mirror, metadata=metadata)
    max_diff = onnx_parity(onnx_path, model, images, mirror=mirror)
    info = {"exported": True, "checkpoint": str(ckpt), "checkpoint_mb": size, "onnx": str(onnx_path),
            "onnx_mb": os.path.getsize(onnx_path) / 1e6, "onnx_max_abs_diff": max_diff,
            "parity_ok": max_diff < PARITY_TOLERANCE, "images_checked": len(images), "mirror_in_onnx": mirror}
    card = atomic.write_text(out_dir / "final_model.md",
                             model_card(model_name, arch_of(model), info, meta, spec, mean, std, classes))
    info["card"] = str(card)
    return info
