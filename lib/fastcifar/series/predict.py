"""The final model on real images: `Predictor` in Python, `fastcifar predict` on the command line, and
what J5 shows of them (the e2e rows, a grid of classified test images, the confusion matrix).

    from fastcifar.series.predict import Predictor
    predictor = Predictor.load("outputs/final_model.pt")
    prediction = predictor("cat.jpg")  # a file, a PIL image or a uint8 HxWx3 RGB array

    fastcifar predict IMAGE_OR_FOLDER... [--model PATH] [--top K] [--json] [--device auto|cuda|cpu]

Images as people have them: any size is resized to 32x32 (PIL, Lanczos, which is antialiased; the
aspect ratio is not kept); greyscale and palette images become RGB; an alpha channel is dropped (the
stored colour is kept, nothing is composited); 16-bit images keep their high byte (value // 256, what
Pillow does when it reads 16-bit RGB); a photo's EXIF orientation is applied. A predictor says each of
these once, the first time it happens. A file that is missing, not an image, truncated or unreadable is
one ImageError naming it; the command reports it, classifies the other files and exits 2.

How it runs. On CUDA: the variant the checkpoint's Spec describes, the whole trip in one CUDA graph:
the 3 KB image copied from a pinned host buffer to the GPU, normalised there (with the megakernel
backend, folded into its first layer's weights and bias), the network, the logits and the class copied
back into pinned host buffers. A call copies the pixels into the pinned buffer, launches the graph once
and waits for it. Without CUDA: the FP32 model on the CPU (with the Spec's mirror), said in one note.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from ..core import atomic, bench, data, engine, env, graphs, optimize, plots

SIZE = 32
FINAL_MODEL = "final_model.pt"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm")
E2E_LABEL = "e2e: uint8 host image -> class id on host"
E2E_TARGET_US = 5.0  # how far the e2e p95 may sit above the device-resident p95 of the same variant
# What a predictor says once, the first time an image needs it.
NOTES = {
    "rotated": "a photo's EXIF orientation is applied",
    "16bit": "16-bit images keep their high byte (value // 256)",
    "grey": "greyscale images are made RGB (the grey in all three channels)",
    "palette": "palette images are made RGB (their palette's colours)",
    "alpha": "alpha channels are dropped (the stored colour is kept, not composited)",
    "other": "images in other colour modes (CMYK, YCbCr, ...) are made RGB by PIL",
    "resized": "images that are not 32x32 are resized to 32x32 with PIL (Lanczos, antialiased; aspect ratio not kept)",
}
# How the megakernel's graph meets the host: "host", the kernel reads the image from and writes its result
# into pinned host memory (no copy nodes); "copies", copy nodes up and back around the kernel.
MEGAKERNEL_IO = "host"
# Compile modes that capture CUDA graphs of their own, and what runs instead inside the predictor's graph.
_WITHOUT_GRAPHS = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


class PredictError(ValueError):
    """A predictor cannot be made or used as asked; the message says why and what to do."""


class ImageError(PredictError):
    """An input that is not a usable image; the message names it and says what was expected."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


# ---------------------------------------------------------------- images as people have them

def _sixteen_bit(img) -> bool:
    """Whether PIL is about to read 16-bit samples (a 16-bit RGB PNG opens as 8-bit RGB)."""
    try:
        return any(";16" in str(tile[3]) for tile in getattr(img, "tile", None) or ())
    except (IndexError, TypeError):
        return False


def _rgb(img, source: str, sixteen: bool = False) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """(32, 32, 3) uint8 RGB pixels of a PIL image, and the conversions made: (kind, detail) pairs."""
    from PIL import Image, ImageOps

    done: list[tuple[str, str]] = []
    if img.getexif().get(0x0112, 1) not in (0, 1):  # EXIF Orientation: 1 means as stored
        img = ImageOps.exif_transpose(img)
        done.append(("rotated", ""))
    mode = img.mode
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageError(f"{source}: {mode} pixels outside 0..65535; expected an 8- or 16-bit image")
        grey = (values.astype(np.uint32) >> 8).astype(np.uint8)
        img = Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
        done += [("16bit", ""), ("grey", "")]
    elif mode == "F":
        raise ImageError(f"{source}: floating-point pixels; expected an 8-bit RGB image (save it as PNG or JPEG)")
    else:
        if sixteen:
            done.append(("16bit", ""))
        if mode in ("1", "L"):
            done.append(("grey", ""))
        elif mode in ("LA", "La"):
            done += [("grey", ""), ("alpha", "")]
        elif mode in ("RGBA", "RGBa"):
            done.append(("alpha", ""))
        elif mode in ("P", "PA"):
            done.append(("palette", ""))
            if mode == "PA" or "transparency" in img.info:
                img = img.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
                done.append(("alpha", ""))
        elif mode not in ("RGB", "RGBX"):
            done.append(("other", mode))
        if img.mode != "RGB":
            try:
                img = img.convert("RGB")
            except ValueError as exc:
                raise ImageError(f"{source}: PIL cannot make RGB of its {mode} pixels ({_first_line(exc)}); expected "
                                 "an RGB, greyscale or palette image") from None
    if img.size != (SIZE, SIZE):
        done.append(("resized", f"{img.size[0]}x{img.size[1]}"))
        img = img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return np.array(img, dtype=np.uint8), done


def _open(path: Path) -> tuple[np.ndarray, list[tuple[str, str]]]:
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: a folder; expected an image file (the command takes folders)")
    try:
        with Image.open(path) as img:
            sixteen = _sixteen_bit(img)
            img.load()
            return _rgb(img, str(path), sixteen)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image PIL can read; expected PNG, JPEG, BMP, GIF, WebP or TIFF") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: too many pixels to decode safely ({_first_line(exc)})") from None
    except PermissionError as exc:
        raise ImageError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    except (OSError, SyntaxError, EOFError, ValueError) as exc:  # what PIL raises for cut or damaged data
        raise ImageError(f"{path}: truncated or damaged image ({_first_line(exc)}); expected a complete image "
                         "file") from None


def _from_array(a: np.ndarray, source: str) -> tuple[np.ndarray, list[tuple[str, str]]]:
    from PIL import Image

    if a.dtype != np.uint8:
        raise ImageError(f"{source}: a {a.dtype} array; expected uint8 HxWx3 RGB values 0..255 "
                         "(convert with (x * 255).round().astype(np.uint8) if it holds 0..1)")
    if a.shape == (SIZE, SIZE, 3):
        return np.ascontiguousarray(a), []
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        return _rgb(Image.fromarray(np.ascontiguousarray(a), "L"), source)
    if a.ndim == 3 and a.shape[2] in (3, 4) and min(a.shape[:2]) > 0:
        return _rgb(Image.fromarray(np.ascontiguousarray(a), "RGB" if a.shape[2] == 3 else "RGBA"), source)
    raise ImageError(f"{source}: an array of shape {a.shape}; expected HxWx3 (RGB), HxWx4 (RGBA) or HxW (grey)")


def load_pixels(image) -> tuple[np.ndarray, str, list[tuple[str, str]]]:
    """(pixels, source, conversions): the (32, 32, 3) uint8 RGB image the network sees, what to call the
    input in messages, and the conversions made on the way ((kind, detail) pairs, kinds of NOTES).
    `image` is a path, a PIL image or a uint8 array; ImageError when it cannot be used."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        return _named(_open(Path(image)), str(image))
    if isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or "<PIL image>"
        return _named(_rgb(image, name), name)
    if isinstance(image, np.ndarray):
        return _named(_from_array(image, "<array>"), "<array>")
    raise ImageError(f"got a {type(image).__name__}; expected a file path, a PIL image or a uint8 HxWx3 array")


def _named(result, source: str):
    pixels, done = result
    return pixels, source, done


# ---------------------------------------------------------------- the predictor

def softmax(logits) -> np.ndarray:
    """Probabilities (float64) from logits, along the last axis."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Prediction:
    """One image's result. `model_ms` is the host clock around the model's part of the call: from the
    pixels in memory to the class on the host (reading, decoding and resizing a file not included)."""

    source: str
    class_id: int
    name: str
    probability: float
    probabilities: np.ndarray = field(repr=False)  # (classes,) float64, summing to 1
    model_ms: float
    classes: tuple[str, ...] = field(repr=False, default=())

    def top(self, k: int = 3) -> list[tuple[int, str, float]]:
        """The k most probable classes: (id, name, probability), most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(int(i), self.classes[int(i)], float(self.probabilities[i])) for i in order]

    def as_dict(self, k: int = 3) -> dict:
        return {"file": self.source, "class_id": self.class_id, "class": self.name,
                "probability": round(self.probability, 6),
                "top": [{"class_id": i, "class": n, "probability": round(p, 6)} for i, n, p in self.top(k)],
                "model_ms": round(self.model_ms, 4)}

    def line(self, k: int = 3) -> str:
        text = f"{self.source}  {self.name} {self.probability:.1%}"
        if k > 1:
            text += f"  top-{k}: " + ", ".join(f"{n} {p:.1%}" for _, n, p in self.top(k))
        return text


def _usable_spec(spec) -> tuple[optimize.Spec, str | None]:
    """The Spec to run and the name of a backend the checkpoint names that no longer exists (its Spec
    then runs on the PyTorch path: precision, BN folding, mirror kept)."""
    if spec is None:
        return optimize.Spec(), None
    if isinstance(spec, optimize.Spec):
        return spec, None
    d = dict(spec)
    gone = None
    if d.get("backend", "torch") not in optimize.BACKENDS:
        gone, d["backend"] = d["backend"], "torch"
    known = {f.name for f in dataclasses.fields(optimize.Spec)}
    try:
        return optimize.Spec(**{k: v for k, v in d.items() if k in known}), gone
    except (TypeError, ValueError) as exc:
        raise PredictError(f"the checkpoint's Spec {spec} cannot be run ({exc})") from None


def _device(device) -> torch.device:
    if device in (None, "auto"):
        return env.default_device()
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise PredictError(f"device {device!r}: expected 'auto', 'cuda' or 'cpu'") from None
    if d.type not in ("cuda", "cpu"):
        raise PredictError(f"device {device!r}: expected 'auto', 'cuda' or 'cpu'")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"device {device!r} asked for, but no CUDA device is visible; use 'auto' or 'cpu'")
    return d


class _CpuPath:
    """The FP32 model on the CPU, the image normalised as data.to_tensor does (the mirror kept)."""

    def __init__(self, model, mirror: bool, mean, std):
        import copy

        self.module = copy.deepcopy(model).float().eval().cpu()  # the caller's model stays where it is
        self.fn = optimize.with_mirror(self.module) if mirror else self.module
        self.mean, self.std = mean, std
        self.logits = None

    @torch.inference_mode()
    def run(self, pixels: np.ndarray) -> int:
        out = self.fn(data.to_tensor(np.asarray(pixels)[None], "cpu", self.mean, self.std))
        self.logits = out[0].float().numpy().copy()
        return int(self.logits.argmax())


class _GraphPath:
    """The whole trip in one CUDA graph, between pinned host buffers: the image in, the logits and the
    class out. `run` copies the pixels into the pinned input buffer, launches the graph and waits.

    The megakernel reads the uint8 image from pinned host memory itself (its bulk copy of the image
    crosses the bus) and writes its logits and class there (MEGAKERNEL_IO "host"), so the graph is that
    one kernel; with "copies", a copy up and the kernel's own buffers copied back. The PyTorch path
    copies the image up, normalises it on the GPU, runs the variant, and copies logits and class back
    in one copy (the class as the float after the logits)."""

    def __init__(self, model, spec: optimize.Spec, mean, std, device: torch.device, notes: list[str]):
        self.device = device
        self.host_in = torch.zeros((SIZE, SIZE, 3), dtype=torch.uint8, pin_memory=True)
        step = None
        if spec.backend == "megakernel":
            from ..core.kernels.megakernel import MegakernelError

            try:
                step = self._megakernel(model, spec, mean, std)
            except (MegakernelError, ValueError, TypeError) as exc:  # an older GPU, a network that does not fit
                spec = optimize.Spec("fp16", fold_bn=True, mirror=spec.mirror)
                notes.append(f"the megakernel cannot run here ({_first_line(exc)}); running {spec.label} instead")
        if step is None:
            step = self._torch(model, spec, mean, std)
        self.graph, self.outputs, self._launch = graphs.record(step, device)
        self.step = step  # the graph reads and writes the buffers step's closure holds: keep them alive
        self._wait = graphs.waiter(device)
        self._pixels = self.host_in.numpy()

    def _megakernel(self, model, spec, mean, std):
        from ..core import kernels
        from ..core.kernels import megakernel

        packed = kernels.pack(model, mirror=spec.mirror, device=self.device)
        host_logits = torch.zeros((1, packed.num_classes), dtype=torch.float32, pin_memory=True)
        host_class = torch.zeros(1, dtype=torch.int32, pin_memory=True)
        if MEGAKERNEL_IO == "host":
            kernel = megakernel.build_kernel(packed, input_kind="uint8", mean=mean, std=std,
                                             outputs=(host_logits, host_class))

            def step():
                return kernel.launch(self.host_in)
        else:
            kernel = megakernel.build_kernel(packed, input_kind="uint8", mean=mean, std=std)
            dev_in = torch.zeros((SIZE, SIZE, 3), dtype=torch.uint8, device=self.device)

            def step():
                graphs.copy_async(dev_in, self.host_in)
                kernel.launch(dev_in)
                graphs.copy_async(host_logits, kernel.logits)
                graphs.copy_async(host_class, kernel.top_class)
                return kernel.logits

        self.kernel = kernel
        self.logits = host_logits.numpy()[0]  # views: the next run overwrites them
        self._class, self._class_at = host_class.numpy(), 0
        where = "reads the uint8 image and writes its result in pinned host memory" if MEGAKERNEL_IO == "host" \
            else "uint8 image copied up, result copied back"
        self.what = f"{spec.label}; normalisation folded into its first layer, {where}"
        return step

    def _torch(self, model, spec, mean, std):
        spec = dataclasses.replace(spec, backend="torch", cuda_graph=False,
                                   compile_mode=_WITHOUT_GRAPHS.get(spec.compile_mode, spec.compile_mode))
        variant = optimize.build(model, spec, torch.zeros(1, 3, SIZE, SIZE, device=self.device))
        mean_t = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        dev_in = torch.zeros((SIZE, SIZE, 3), dtype=torch.uint8, device=self.device)

        def forward():  # data.to_tensor's arithmetic, on the GPU
            x = dev_in.permute(2, 0, 1).unsqueeze(0).float().div_(255)
            x = ((x - mean_t) / std_t).to(variant.input_dtype).contiguous(memory_format=variant.memory_format)
            out = variant(x).float()
            return torch.cat([out, out.argmax(1, keepdim=True).float()], dim=1)  # class ids are exact in FP32

        with torch.inference_mode():
            classes = forward().shape[1] - 1
        host_out = torch.zeros((1, classes + 1), dtype=torch.float32, pin_memory=True)

        def step():
            graphs.copy_async(dev_in, self.host_in)
            out = forward()
            graphs.copy_async(host_out, out)
            return out

        self.variant = variant
        self.logits = host_out.numpy()[0, :classes]  # views: the next run overwrites them
        self._class, self._class_at = host_out.numpy()[0], classes
        self.what = f"{spec.label}; uint8 image copied up and normalised on the GPU, result copied back"
        return step

    def run(self, pixels: np.ndarray) -> int:
        np.copyto(self._pixels, pixels)
        self._launch()
        self._wait()
        return int(self._class[self._class_at])

    def trip(self) -> None:
        """The graph alone on the pixels already in the pinned buffer: launch, wait."""
        self._launch()
        self._wait()


class Predictor:
    """A trained classifier for images as people have them (see the module docstring).

    `predictor(image)` -> Prediction for a file path, a PIL image or a uint8 HxWx3 RGB array;
    `predictor.many(images)` -> a list of them; `predictor.class_id(pixels)` -> the class id alone of a
    (32, 32, 3) uint8 RGB image already in memory (the call J5's e2e row times). Notes (CPU fallback,
    conversions of images, the first time each happens) go to `say`, stderr by default."""

    def __init__(self, model: torch.nn.Module, spec=None, mean=data.CIFAR10_MEAN, std=data.CIFAR10_STD,
                 classes=None, device="auto", say: Callable[[str], None] | None = _stderr):
        self.say = say or (lambda line: None)
        self._said: set[str] = set()
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.spec, gone = _usable_spec(spec)
        self.device = _device(device)
        gone_note = f"; its backend {gone!r} no longer exists" if gone else ""
        notes = []
        if self.device.type == "cuda":
            if gone:
                notes.append(f"backend {gone!r} of this model no longer exists: its Spec runs on the PyTorch path")
            self._path = _GraphPath(model, self.spec, self.mean, self.std, self.device, notes)
            self.runs = f"{self._path.what}; one CUDA graph per call on {env.device_name(self.device)}"
        else:
            self._path = _CpuPath(model, self.spec.mirror, self.mean, self.std)
            self.runs = f"FP32{' + mirror TTA' if self.spec.mirror else ''} on the CPU"
            why = "no CUDA device" if device in (None, "auto") else "device 'cpu' asked for"
            notes.append(f"{why}: the FP32 model runs on the CPU, not the exported variant "
                         f"({self.spec.label}{gone_note}), which needs CUDA")
        self._path.run(np.zeros((SIZE, SIZE, 3), dtype=np.uint8))  # the warm-up
        n = len(self._path.logits)
        self.classes = [str(c) for c in classes] if classes is not None and len(classes) == n else [str(i) for i in range(n)]
        for line in notes:
            self.say(f"note: {line}")

    @classmethod
    def load(cls, path=None, device="auto", say: Callable[[str], None] | None = _stderr) -> "Predictor":
        """The model J5 exported (default: final_model.pt in the outputs folder), run as its Spec says
        on CUDA, else in FP32 on the CPU. CheckpointError when there is no usable checkpoint."""
        path = Path(path) if path is not None else env.outputs_dir() / FINAL_MODEL
        if not path.is_file():
            raise engine.CheckpointError(f"no final model at {path}; J5 exports it (make pipeline), or give the "
                                         "path of one")
        model, ckpt = engine.load_model(path)
        predictor = cls(model, ckpt.get("spec"), ckpt.get("mean", data.CIFAR10_MEAN), ckpt.get("std", data.CIFAR10_STD),
                        ckpt.get("classes"), device, say)
        predictor.path = path
        predictor.checkpoint = {k: ckpt.get(k) for k in ("id", "variant", "model_name")}
        return predictor

    def pixels(self, image) -> tuple[np.ndarray, str]:
        """(the (32, 32, 3) uint8 RGB pixels the network sees, the input's name), each conversion said once."""
        pixels, source, done = load_pixels(image)
        for kind, detail in done:
            if kind not in self._said:
                self._said.add(kind)
                self.say(f"note: {NOTES[kind]} (first: {source}{', ' + detail if detail else ''})")
        return pixels, source

    def __call__(self, image) -> Prediction:
        pixels, source = self.pixels(image)
        t0 = time.perf_counter()
        class_id = self._path.run(pixels)
        model_ms = (time.perf_counter() - t0) * 1e3
        p = softmax(self._path.logits)
        return Prediction(source, class_id, self.classes[class_id], float(p[class_id]), p, model_ms, tuple(self.classes))

    def many(self, images: Iterable, keep_errors: bool = False) -> list:
        """Predictions of `images`, one call each, in order. An unusable image raises its ImageError, or
        with `keep_errors` takes its place in the list (the others are still classified)."""
        out = []
        for image in images:
            try:
                out.append(self(image))
            except ImageError as exc:
                if not keep_errors:
                    raise
                out.append(exc)
        return out

    def class_id(self, pixels) -> int:
        """The class id of a (32, 32, 3) uint8 RGB image in host memory (numpy or a CPU tensor), nothing
        else: one copy into the pinned buffer, one graph launch, one wait (J5's e2e row)."""
        if isinstance(pixels, torch.Tensor):
            pixels = pixels.numpy()
        return self._path.run(pixels)


# ---------------------------------------------------------------- what J5 shows

def subject(candidate: dict | None, table, entries: list[dict]) -> tuple[dict, str]:
    """What J5 shows on real images, and a line saying what it is: the final candidate's entry; without
    one (smoke runs: nothing clears the bar), the entry of the fastest measured row of the final table."""
    from . import report

    if candidate is not None:
        return candidate, f"the final candidate, {candidate['id']}: {candidate['variant']}"
    row = report.fastest(table)
    by_id = {e["id"]: e for e in entries}
    if row is None or row["id"] not in by_id:
        raise ValueError("no measured variant in the final table to classify images with")
    return by_id[row["id"]], (f"no variant clears the bar in this run: the fastest one, {row['id']}, stands in "
                              "for the final candidate")


def e2e_rows(entry: dict, image: np.ndarray, mean, std, classes, runs: int, warmup_iters: int, measure_iters: int,
             meta: dict, device, say: Callable[[str], None] | None = _stderr):
    """One variant timed in the same run, alternately, `runs` times (rows per run, `run` 1..):
    - `<id>`: device-resident, the variant optimize.build makes, the image normalised on the device
      before the loops (the sprint plan's protocol, as in J5's table);
    - `<id>-e2e`: the Predictor's class_id, the uint8 image on the host -> its class id on the host, the
      transfers inside the timed call (bench.benchmark_latency(end_to_end=...));
    - `<id>-e2e-graph` (CUDA): the predictor's graph alone, launch and wait, the pixels already in its
      pinned buffer: what the e2e call costs on top of it is host work.
    `entry` is a J5 entry (id, variant, model_name, model, spec); `image` one (32, 32, 3) uint8 RGB image.
    Without CUDA the first two are the FP32 model on the CPU (smoke runs)."""
    import pandas as pd

    device = torch.device(device)
    spec = entry["spec"] if device.type == "cuda" else optimize.Spec(mirror=entry["spec"].mirror)
    x = data.to_tensor(np.asarray(image)[None], device, mean, std)
    variant = optimize.build(entry["model"], spec, x)
    x = variant.prepare(x)
    predictor = Predictor(entry["model"], entry["spec"], mean, std, classes, device=device, say=say)
    host_image = torch.from_numpy(np.ascontiguousarray(image))
    same = {"model": entry["model_name"], "precision": spec.precision, **meta}
    timed = [(entry["id"], f"{entry['variant']}; device-resident (normalised image on the device)",
              "; ".join(variant.notes), lambda: bench.benchmark_latency(variant, x, warmup_iters, measure_iters)),
             (f"{entry['id']}-e2e", f"{entry['variant']}; {E2E_LABEL}", f"{E2E_LABEL}; {predictor.runs}",
              lambda: bench.benchmark_latency(predictor.class_id, host_image, warmup_iters, measure_iters,
                                              end_to_end=device))]
    if device.type == "cuda":
        predictor.class_id(image)  # the pixels in the pinned buffer
        trip = predictor._path.trip
        timed.append((f"{entry['id']}-e2e-graph", f"{entry['variant']}; e2e graph alone (launch + wait, the pixels "
                      "already in the pinned buffer)", predictor.runs,
                      lambda: bench.benchmark_latency(lambda _: trip(), host_image, warmup_iters, measure_iters,
                                                      end_to_end=device)))
    rows = []
    for r in range(1, runs + 1):
        for vid, variant_text, notes, measure in timed:
            rows.append({"id": vid, "variant": variant_text, **same, **measure().row(), "run": r, "notes": notes})
    df = pd.DataFrame(rows)
    return bench.numeric_columns(df.reindex(columns=list(dict.fromkeys([*bench.RESULT_COLUMNS, *df.columns]))))


def e2e_verdict(rows, target_us: float | None = None) -> list[str]:
    """What e2e_rows measured, in words: the e2e p95 (the mean over runs of each run's p95) against the
    device-resident one and the target (None: E2E_TARGET_US), and, where the graph alone was timed, how
    the excess splits between the graph (its transfers across the bus) and the host's part of the call."""
    import pandas as pd

    target_us = E2E_TARGET_US if target_us is None else target_us

    rows = bench.numeric_columns(pd.DataFrame(rows).copy())
    p95 = rows.groupby("id", sort=False).lat_p95_ms.mean() * 1000  # us
    lines = []
    for e2e_id in [i for i in p95.index if str(i).endswith("-e2e")]:
        base_id = e2e_id[: -len("-e2e")]
        if base_id not in p95:
            lines.append(f"{e2e_id}: no device-resident row of {base_id} in the same run to compare with")
            continue
        excess = p95[e2e_id] - p95[base_id]
        lines.append(f"{e2e_id}: e2e p95 {p95[e2e_id] / 1000:.4f} ms against {p95[base_id] / 1000:.4f} ms "
                     f"device-resident, {excess:+.1f} us (target: within {target_us:g} us): "
                     f"{'met' if excess <= target_us else 'MISSED'}")
        if f"{e2e_id}-graph" in p95:
            graph = p95[f"{e2e_id}-graph"]
            lines.append(f"  of that, the graph alone (its transfers across the bus, launch and wait): "
                         f"{graph - p95[base_id]:+.1f} us; the host's part of the call (the pixels into the pinned "
                         f"buffer, reading the class): {p95[e2e_id] - graph:+.1f} us (p95 differences)")
        if rows.profile.astype(str).eq("smoke").any():
            lines.append("  (CPU timings of a smoke run: not GPU latencies)")
    return lines


def write_e2e(path, rows) -> Path:
    """e2e_rows' rows as a results CSV of their own (ids <id>#<run>), replacing the previous run's."""
    return bench.write_results(path, rows.assign(id=rows.id + "#" + rows.run.astype(int).astype(str)).to_dict("records"),
                               replace="file")


def with_e2e(table, rows, accuracy: float | None = None):
    """The final table with each e2e row of e2e_rows (averaged over the runs, report.aggregate_runs) placed
    right after the row of its variant: `accuracy` is the test accuracy measured through the predictor
    (confusion_on), validation accuracy is left empty, so the row never takes part in the choice."""
    import pandas as pd

    from . import report

    e2e = report.aggregate_runs(rows[rows.id.astype(str).str.endswith("-e2e")])
    e2e["accuracy"] = np.nan if accuracy is None else accuracy
    e2e["val_accuracy"] = np.nan
    if "final" in table.columns:
        e2e["final"] = False
    table = table[~table.id.isin(e2e.id)].reset_index(drop=True)
    parts, rest = [], table
    for _, row in e2e.iterrows():
        base = row["id"][: -len("-e2e")]
        at = rest.index[rest.id == base]
        cut = (at[0] + 1) if len(at) else len(rest)
        parts += [rest.iloc[:cut], row.to_frame().T]
        rest = rest.iloc[cut:]
    out = pd.concat([*parts, rest], ignore_index=True).infer_objects()
    return bench.numeric_columns(out.reindex(columns=list(dict.fromkeys([*table.columns, *e2e.columns]))))


def prediction_grid(predictor: Predictor, images, labels, path=None, n: int = 24, per_row: int = 8):
    """The first `n` images classified one by one through `predictor`, as uint8 HxWx3 arrays (what a
    camera or a file gives), shown with the predicted class and its probability over the true class;
    mistakes in red, marked with a cross. Returns (figure, predictions)."""
    import matplotlib.pyplot as plt

    images, labels = np.asarray(images)[:n], np.asarray(labels)[:n]
    found = predictor.many(images)
    rows = -(-len(images) // per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(per_row * 1.4, rows * 1.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    mistakes = 0
    for ax, img, label, p in zip(axes.flat, images, labels, found):
        wrong = p.class_id != int(label)
        mistakes += wrong
        ax.imshow(img)
        ax.set_title(f"{'x ' if wrong else ''}{p.name} {p.probability:.0%}\ntrue: {predictor.classes[int(label)]}",
                     fontsize=7, color="red" if wrong else "black")
        if wrong:
            for side in ax.spines.values():
                side.set_visible(True)
                side.set_color("red")
                side.set_linewidth(2)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{len(images)} test images through the predictor ({predictor.runs}): {mistakes} mistakes, "
                 "marked x in red", fontsize=8)
    fig.tight_layout()
    return plots.save_figure(fig, path), found


def confusion_counts(true, predicted, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts: rows the true class, columns the predicted one."""
    true, predicted = np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    return np.bincount(true * num_classes + predicted, minlength=num_classes * num_classes).reshape(num_classes,
                                                                                                   num_classes)


def confusion_on(predictor: Predictor, images, labels, path=None) -> dict:
    """Every image classified through `predictor` (uint8 HxWx3 arrays), the confusion matrix drawn
    (plots.confusion_figure) and returned with the accuracy (%) and the predicted classes."""
    labels = np.asarray(labels)
    predicted = np.array([p.class_id for p in predictor.many(images)], dtype=np.int64)
    counts = confusion_counts(labels, predicted, len(predictor.classes))
    accuracy = 100.0 * float((predicted == labels).mean()) if len(labels) else float("nan")
    plots.confusion_figure(counts, predictor.classes, path,
                           f"{len(labels)} test images through the predictor: {accuracy:.2f}% correct")
    return {"counts": counts, "accuracy": accuracy, "predicted": predicted}


# ---------------------------------------------------------------- the command

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other mistake on the command line
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def image_files(inputs: Iterable[str]) -> tuple[list[Path], list[str]]:
    """(files to classify, one error line per input that gives none), in the order given. A folder gives
    its image files (by suffix, sorted, hidden files skipped; subfolders are not searched)."""
    files, errors = [], []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.name.startswith(".") and p.is_file())
            if not found:
                errors.append(f"{path}: no image files in this folder (looked for {' '.join(IMAGE_SUFFIXES)}; "
                              "subfolders are not searched)")
            files += found
        elif path.exists():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or folder")
    return files, errors


def _timing_line(predictions: list[Prediction], runs: str) -> str:
    ms = np.array([p.model_ms for p in predictions])
    return (f"model time per image: mean {ms.mean():.3f} ms, median {np.median(ms):.3f} ms over {len(ms)} "
            f"image{'s' if len(ms) != 1 else ''} ({runs}; host clock from the pixels in memory to the class on "
            "the host, reading and resizing files not included)")


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="fastcifar predict", description="Classify images with the final model: one line per "
                 "image (file, class, probability, top-K), then the model's time per image.")
    ap.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                    help=f"image files ({' '.join(IMAGE_SUFFIXES)}, any size) or folders of them")
    ap.add_argument("--model", metavar="PATH", help=f"checkpoint exported by J5 (default: {FINAL_MODEL} in the "
                    f"outputs folder, {env.outputs_dir() / FINAL_MODEL})")
    ap.add_argument("--top", type=int, default=3, metavar="K", help="the K most probable classes (default 3)")
    ap.add_argument("--json", action="store_true", help="one JSON object per image instead of text lines")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                    help="auto: CUDA when there is a GPU, else the CPU")
    args = ap.parse_args(argv)
    if args.top < 1:
        ap.error(f"--top {args.top}: expected K >= 1")
    try:
        with atomic.signals_raise():
            return _classify(args, ap.prog)
    except KeyboardInterrupt as exc:  # nothing is written, so nothing is left half-done
        print(f"{ap.prog}: {atomic.stop_reason(exc)[0]}", file=sys.stderr)
        return atomic.stop_reason(exc)[1]


def _classify(args, prog: str) -> int:
    def error(line: str) -> None:
        print(f"{prog}: error: {line}", file=sys.stderr, flush=True)

    files, errors = image_files(args.inputs)
    for line in errors:
        error(line)
    if not files:
        return 2
    held: list[str] = []  # the load's notes, said once the command line is known to be right
    try:
        predictor = Predictor.load(args.model, device=args.device, say=held.append)
    except (engine.CheckpointError, PredictError) as exc:
        error(str(exc))
        return 2
    if args.top > len(predictor.classes):
        error(f"--top {args.top}: this model has {len(predictor.classes)} classes")
        return 2
    predictor.say = lambda line: print(f"{prog}: {line}", file=sys.stderr, flush=True)
    for line in held:
        predictor.say(line)
    done = []
    for path in files:
        try:
            prediction = predictor(path)
        except ImageError as exc:
            error(str(exc))
            errors.append(str(exc))
            continue
        done.append(prediction)
        print(json.dumps(prediction.as_dict(args.top)) if args.json else prediction.line(args.top), flush=True)
    if done:
        line = _timing_line(done, predictor.runs)
        print(f"{prog}: {line}" if args.json else line, file=sys.stderr if args.json else sys.stdout, flush=True)
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
