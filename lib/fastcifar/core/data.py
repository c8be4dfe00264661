"""CIFAR-10/100 from their standard python layouts, provenance, the validation split and loaders.

Two ways to feed images:
- `GpuLoader` keeps the whole uint8 split on the device and augments there (crop, flip, optional
  cutout) by indexing: no worker processes, no host-to-device copies inside the training loop.
- `TorchvisionSplit` + `torchvision_transform` is the classic path, for looking at images and for
  a batch-size-1 DataLoader.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import atomic, env, lock

# J1 card 2 gives these for CIFAR-10 (per-pixel std); the CIFAR-100 report gives its own.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


@dataclass(frozen=True)
class Layout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    meta_file: str
    names_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    archive_dataset: str  # torchvision class holding URL and md5 sums
    coarse_key: str | None = None  # CIFAR-100's 20 superclasses, kept beside the fine labels
    coarse_names_key: str | None = None


LAYOUTS = {
    "cifar10": Layout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                      "labels", "batches.meta", "label_names", 10, CIFAR10_MEAN, CIFAR10_STD, "CIFAR10"),
    "cifar100": Layout("cifar-100-python", ("train",), ("test",), "fine_labels", "meta", "fine_label_names",
                       100, CIFAR100_MEAN, CIFAR100_STD, "CIFAR100", "coarse_labels", "coarse_label_names"),
}


class DataError(RuntimeError):
    """Data missing or damaged; the message says what was looked for and how to get it."""


@dataclass
class Split:
    images: np.ndarray  # (N, 32, 32, 3) uint8, HWC
    labels: np.ndarray  # (N,) int64
    coarse_labels: np.ndarray | None = None  # (N,) int64, CIFAR-100 superclasses; None elsewhere

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "Split":
        coarse = None if self.coarse_labels is None else self.coarse_labels[index]
        return Split(self.images[index], self.labels[index], coarse)

    def head(self, limit: int | None) -> "Split":
        return self if limit is None or limit >= len(self) else self.subset(np.arange(limit))


@dataclass
class Cifar:
    name: str
    train: Split
    test: Split
    classes: list[str]
    source: str  # provenance, stamped on every results row
    folder: Path
    coarse_classes: list[str] = field(default_factory=list)  # CIFAR-100 superclass names

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.name]

    @property
    def num_classes(self) -> int:
        return self.layout.num_classes


def download_command(name: str) -> str:
    """The command that fetches dataset `name` (the official archive; needs internet)."""
    return f"python -m fastcifar.data --download {name}"


def _how_to_get(name: str, folder: Path) -> str:
    rebuild = "Get it with `make data` (rebuilds CIFAR-10 from ../shared/data), or " if name == "cifar10" else "Get it "
    return (f"{rebuild}with `{download_command(name)}` on a machine that is online, or point "
            f"${env.DATA_ENV} at the folder that contains {folder.name}/.")


def _layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise ValueError(f"dataset must be one of {sorted(LAYOUTS)}, not {name!r}")
    return LAYOUTS[name]


# What the CIFAR python pickles hold: dicts, lists, str, bytes, numbers and numpy arrays. Arrays are
# rebuilt through these numpy functions (numpy 1 and 2 module names, in-band protocol 5 included);
# nothing else may be imported while unpickling, so a crafted file cannot call os.system & co.
_NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric")
_NUMPY_NAMES = ("_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer")


def _latin1_encode(text, encoding="latin1"):
    """Python 3 pickles bytes with protocol < 3 as _codecs.encode(text, 'latin1'); admit only that codec."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not admitted")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module in _NUMPY_MODULES and name in _NUMPY_NAMES:
            return super().find_class(module, name)
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR file never holds "
                                     "(only numpy arrays, lists, dicts, str, bytes and numbers are admitted)")


def restricted_load(f) -> object:
    """Unpickle a CIFAR file object admitting only the types those files hold."""
    return _CifarUnpickler(f, encoding="latin1").load()


def _unpickle(path: Path, name: str) -> dict:
    if not path.is_file():
        raise DataError(f"{name}: missing file {path}. " + _how_to_get(name, path.parent))
    try:
        with open(path, "rb") as f:
            entry = restricted_load(f)
    except Exception as exc:  # every unpickling failure (also OverflowError, MemoryError, ImportError, ...)
        raise DataError(f"{name}: {path} is damaged or not a CIFAR pickle ({type(exc).__name__}: {exc}); "
                        f"delete {path.parent} and get it again. " + _how_to_get(name, path.parent)) from exc
    if not isinstance(entry, dict):
        raise DataError(f"{name}: {path} holds a {type(entry).__name__}, expected a dict of arrays")
    # Official files are Python 2 pickles with bytes keys; rebuilt ones use str keys.
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _read_split(folder: Path, files: tuple[str, ...], layout: Layout, name: str) -> Split:
    images, labels, coarse = [], [], []
    for fname in files:
        path = folder / fname
        entry = _unpickle(path, name)
        for key in ("data", layout.label_key):
            if key not in entry:
                raise DataError(f"{name}: {path} has no {key!r} entry (keys: {sorted(entry)}); "
                                f"it is not a {layout.folder} file")
        data = np.asarray(entry["data"])
        lab = np.asarray(entry[layout.label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{name}: {path} 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072) "
                            "rows of 32x32 RGB planes")
        if len(lab) != len(data):
            raise DataError(f"{name}: {path} has {len(data)} images but {len(lab)} labels")
        if len(lab) and (lab.min() < 0 or lab.max() >= layout.num_classes):
            raise DataError(f"{name}: {path} has labels outside 0..{layout.num_classes - 1}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
        if layout.coarse_key and layout.coarse_key in entry:
            coarse.append(np.asarray(entry[layout.coarse_key], dtype=np.int64))
    # Coarse labels only when every file has them, so they always line up with the images.
    coarse_labels = np.concatenate(coarse) if coarse and len(coarse) == len(files) else None
    return Split(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), coarse_labels)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def official_md5(name: str) -> dict[str, str]:
    """md5 sums of the official files, as torchvision lists them."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, _layout(name).archive_dataset)
    return {fname: md5 for fname, md5 in (*cls.train_list, *cls.test_list)}


def provenance(folder: Path, name: str, train: Split, test: Split) -> str:
    """'official' when every file matches torchvision's md5, otherwise say so; plus a fingerprint."""
    layout = _layout(name)
    sums = official_md5(name)
    official = all(_md5(folder / f) == sums.get(f) for f in (*layout.train_files, *layout.test_files))
    fingerprint = hashlib.sha256()
    for split in (train, test):
        fingerprint.update(split.images.tobytes())
        fingerprint.update(split.labels.astype(np.int64).tobytes())
    kind = "official (md5 ok)" if official else "non-official (md5 differs)"
    note = folder / "SOURCE.txt"
    extra = f"; {note.read_text().strip().rstrip('.')}" if not official and note.is_file() else ""
    return f"{name} {kind}{extra}; sha256:{fingerprint.hexdigest()[:12]}"


def load_cifar(name: str = "cifar10", data_dir: str | os.PathLike | None = None, download: bool = False) -> Cifar:
    """Read a CIFAR dataset from `<data_dir>/<layout folder>/`; str or bytes pickle keys are accepted."""
    layout = _layout(name)
    base = env.data_dir(data_dir)
    folder = base / layout.folder
    if not folder.is_dir():
        if download:
            download_cifar(name, base)
        else:
            raise DataError(f"{name}: no folder {folder}. " + _how_to_get(name, folder))
    train = _read_split(folder, layout.train_files, layout, name)
    test = _read_split(folder, layout.test_files, layout, name)
    meta = _unpickle(folder / layout.meta_file, name) if (folder / layout.meta_file).is_file() else {}
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(layout.names_key, [])]
    if len(classes) != layout.num_classes:
        classes = [str(i) for i in range(layout.num_classes)]
    coarse_classes = [c.decode() if isinstance(c, bytes) else str(c)
                      for c in meta.get(layout.coarse_names_key, [])] if layout.coarse_names_key else []
    return Cifar(name, train, test, classes, provenance(folder, name, train, test), folder, coarse_classes)


def download_cifar(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Download and unpack the official archive (needs internet). Unpacks into a temporary folder
    and renames it into place, so an interrupted download leaves nothing behind."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    layout = _layout(name)
    cls = getattr(tvd, layout.archive_dataset)
    base = env.data_dir(data_dir)
    if (base / layout.folder).exists():
        raise DataError(f"{name}: {base / layout.folder} already exists; delete it first to download again")
    made = not base.exists()
    base.mkdir(parents=True, exist_ok=True)
    try:
        with _data_lock(base), tempfile.TemporaryDirectory(dir=base, prefix=".download-") as tmp:
            try:
                download_and_extract_archive(cls.url, download_root=tmp, filename=cls.filename, md5=cls.tgz_md5)
            except Exception as exc:  # network errors come in many types
                raise DataError(f"{name}: download from {cls.url} failed ({exc}). This machine may be offline. "
                                + _how_to_get(name, base / layout.folder)) from exc
            os.replace(Path(tmp) / layout.folder, base / layout.folder)
    except BaseException:
        if made and base.is_dir() and not any(base.iterdir()):
            base.rmdir()  # the data folder this call made, left empty by a failed download
        raise
    return base / layout.folder


def stratified_split(labels: np.ndarray, n_val: int = 5000, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): n_val images drawn evenly from every class, fixed seed.

    The validation split chooses checkpoints and models; the test set is only reported.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if not 0 < n_val < len(labels):
        raise ValueError(f"n_val must be between 1 and {len(labels) - 1}, got {n_val}")
    rng = np.random.default_rng(seed)
    # Largest-remainder apportionment keeps every class's share proportional.
    exact = counts * n_val / len(labels)
    per_class = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - per_class))[: n_val - per_class.sum()]:
        per_class[i] += 1
    val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, per_class)])
    val.sort()
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


@dataclass
class Splits:
    """Train (minus validation), validation and test, as used by every notebook."""

    train: Split
    val: Split
    test: Split
    mean: tuple
    std: tuple
    classes: list[str]
    source: str

    def tensors(self, which: str, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised images, labels) of the 'train', 'val' or 'test' split, on `device`."""
        split = getattr(self, which)
        return to_tensor(split.images, device, self.mean, self.std), torch.as_tensor(split.labels, device=device)


def make_splits(data: Cifar, n_val: int = 5000, seed: int = 42, train_limit: int | None = None,
                eval_limit: int | None = None) -> Splits:
    train_idx, val_idx = stratified_split(data.train.labels, n_val, seed)
    train, val = data.train.subset(train_idx), data.train.subset(val_idx)
    if train_limit is not None:  # smoke runs: a random, fixed subset
        train = train.subset(np.random.default_rng(seed).permutation(len(train))[:train_limit])
    return Splits(train, val.head(eval_limit), data.test.head(eval_limit), data.layout.mean, data.layout.std,
                  data.classes, data.source)


def splits_for(run, seed: int = 42, n_val: int = 5000, dataset: str = "cifar10") -> Splits:
    """Splits of `dataset` (cifar10 or cifar100) as a notebook's run profile wants them (subsets in
    smoke runs)."""
    cifar = load_cifar(dataset, run.data_dir)
    return make_splits(cifar, n_val, seed, train_limit=run.profile.train_limit, eval_limit=run.profile.eval_limit)


def to_tensor(images: np.ndarray, device, mean, std, channels_last: bool = False) -> torch.Tensor:
    """uint8 HWC images -> normalised float NCHW tensor on `device`."""
    x = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float().div_(255)
    x = (x - torch.tensor(mean, device=device).view(1, 3, 1, 1)) / torch.tensor(std, device=device).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def denormalise(x: torch.Tensor, mean, std) -> np.ndarray:
    """Normalised NCHW tensor -> uint8 HWC images, for looking at what a loader produced."""
    x = x.float().cpu() * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


class GpuLoader:
    """Batches from a split kept whole on `device` as uint8; augmentation runs there too.

    Train mode: reshuffle each epoch, RandomCrop(32, padding=4) with zero padding, horizontal flip,
    optional cutout; the last incomplete batch is dropped so every step has the same shape.
    Eval mode: fixed order, no augmentation, every image once.
    """

    def __init__(self, split: Split, batch_size: int, device, mean, std, train: bool, padding: int = 4,
                 flip: bool = True, cutout: int = 0, seed: int = 0, channels_last: bool = False):
        if len(split) == 0:
            raise ValueError("GpuLoader got an empty split")
        self.device = torch.device(device)
        self.batch_size, self.train, self.padding, self.flip, self.cutout = batch_size, train, padding, flip, cutout
        self.channels_last = channels_last
        images = torch.as_tensor(split.images, device=self.device).permute(0, 3, 1, 2).contiguous()
        if train and padding:
            images = torch.nn.functional.pad(images, (padding,) * 4)
        self.images = images
        self.labels = torch.as_tensor(split.labels, device=self.device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.train and n >= self.batch_size else -(-n // self.batch_size)

    def _rand(self, *shape, high: int) -> torch.Tensor:
        return torch.randint(0, high, shape, device=self.device, generator=self.generator)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.padding:
            ar = torch.arange(32, device=self.device)
            dy, dx = self._rand(b, high=2 * self.padding + 1), self._rand(b, high=2 * self.padding + 1)
            rows = (dy[:, None] + ar)[:, None, :, None]
            cols = (dx[:, None] + ar)[:, None, None, :]
            x = x[torch.arange(b, device=self.device)[:, None, None, None],
                  torch.arange(3, device=self.device)[None, :, None, None], rows, cols]
        if self.flip:
            x = torch.where(self._rand(b, 1, 1, 1, high=2).bool(), x.flip(3), x)
        return x

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        if self.train and self.cutout:
            b, size = x.shape[0], self.cutout
            cy, cx = self._rand(b, 1, 1, high=32), self._rand(b, 1, 1, high=32)
            ar = torch.arange(32, device=self.device)
            oy, ox = ar[None, :, None] - cy + size // 2, ar[None, None, :] - cx + size // 2
            hole = (oy >= 0) & (oy < size) & (ox >= 0) & (ox < size)  # a size x size square around (cy, cx)
            x = x.masked_fill(hole[:, None], 0.0)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def __iter__(self):
        n = len(self.labels)
        order = (torch.randperm(n, device=self.device, generator=self.generator) if self.train
                 else torch.arange(n, device=self.device))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.train:
                x = self._augment(x)
            yield self._normalise(x), self.labels[idx]


def torchvision_transform(train: bool, mean=CIFAR10_MEAN, std=CIFAR10_STD, rotation: float = 0.0):
    """The seed's transforms: RandomCrop(32, padding=4), flip (and optional rotation) for train;
    normalisation only for test."""
    import torchvision.transforms as T

    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
    if train and rotation:
        steps.append(T.RandomRotation(rotation))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


class TorchvisionSplit(torch.utils.data.Dataset):
    """A Split as a map-style dataset of PIL images through torchvision transforms."""

    def __init__(self, split: Split, transform=None):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.split.images[i])
        return (self.transform(img) if self.transform else img), int(self.split.labels[i])


WORK_FOLDER_PREFIXES = (".rebuild-", ".download-")  # temporary folders of rebuild_from_shared / download_cifar


def stale_work_folders(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Temporary folders (up to 180 MB each) left in the data folder by a rebuild or download that was
    killed before it could clean up."""
    base = env.data_dir(data_dir)
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith(WORK_FOLDER_PREFIXES))


DATA_LOCK = ".data.lock"


@contextmanager
def _data_lock(base: Path):
    """One rebuild or download at a time per data folder (core.lock): its work folder is then never
    taken for one left by a killed run."""
    try:
        with lock.held(base / DATA_LOCK):
            yield
    except lock.Busy as exc:
        raise DataError(str(exc)) from None


def _remove_work_folders(base: Path) -> list[Path]:
    stale = stale_work_folders(base)
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def remove_stale_work_folders(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Remove what `stale_work_folders` finds, unless a rebuild or download is running there now (its
    lock is live): then they are its own, and nothing is removed."""
    base = env.data_dir(data_dir)
    if not base.is_dir():
        return []
    try:
        with lock.held(base / DATA_LOCK):
            return _remove_work_folders(base)
    except lock.Busy:
        return []


def rebuild_from_shared(shared_data: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """Build cifar-10-batches-py from the JPEG copy's script (used by `make data` and CI)."""
    import subprocess
    import sys

    script = Path(shared_data) / "make_cifar10_batches.py"
    if not script.is_file():
        raise DataError(f"no {script}: cannot rebuild CIFAR-10 without the shared JPEG copy")
    base = env.data_dir(data_dir)
    base.mkdir(parents=True, exist_ok=True)
    with _data_lock(base):
        _remove_work_folders(base)  # this run holds the folder: a work folder there now is a killed run's
        with tempfile.TemporaryDirectory(dir=base, prefix=".rebuild-") as tmp:
            subprocess.run([sys.executable, str(script), tmp], check=True, stdout=subprocess.DEVNULL)
            target = base / LAYOUTS["cifar10"].folder
            if target.exists():
                shutil.rmtree(target)
            os.replace(Path(tmp) / LAYOUTS["cifar10"].folder, target)
    return target


def prepare(from_shared: str | None, download: str | None, data_dir: str | None) -> None:
    """What `python -m fastcifar.data` does: rebuild or download, then say what each dataset there is."""
    sources = {}  # what was read already: each dataset is loaded (and its md5 checked) once
    if from_shared:
        target = env.data_dir(data_dir) / LAYOUTS["cifar10"].folder
        if (target / "test_batch").is_file():
            try:
                sources["cifar10"] = load_cifar("cifar10", data_dir).source
            except DataError as exc:
                raise DataError(f"{exc}; {target} is there but cannot be read: remove it (rm -r {target}) and run "
                                "this again to rebuild it") from None
            print(f"{target} already there")
        else:
            print(f"built {rebuild_from_shared(from_shared, data_dir)}")
    if download:
        remove_stale_work_folders(data_dir)
        print(f"downloaded {download_cifar(download, data_dir)}")
    for name in LAYOUTS:
        if (env.data_dir(data_dir) / LAYOUTS[name].folder).is_dir():
            print(sources.get(name) or load_cifar(name, data_dir).source)


def main(argv=None) -> int:
    """Exit status: 0; 2 with one `error:` line for a missing source, damaged files or a folder that cannot
    be written; 130 or 143 when stopped (the half-built folder is removed)."""
    import argparse

    prog = "python -m fastcifar.data"
    ap = argparse.ArgumentParser(prog=prog, description="Prepare CIFAR data under the data folder.")
    ap.add_argument("--from-shared", metavar="DIR", help="rebuild CIFAR-10 from a folder holding make_cifar10_batches.py")
    ap.add_argument("--download", choices=sorted(LAYOUTS), help="download an official archive (needs internet)")
    ap.add_argument("--data-dir", default=None, help="data folder (default: $FASTCIFAR_DATA or <project>/data)")
    args = ap.parse_args(argv)
    try:
        with atomic.signals_raise():  # SIGTERM cleans up the temporary folder as Ctrl-C does
            prepare(args.from_shared, args.download, args.data_dir)
    except DataError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a data folder that is a file, or read-only, or a full disk
        where = f" {exc.filename}" if exc.filename else ""
        print(f"{prog}: error: cannot use{where} ({exc.strerror or exc}); expected a data folder this user can "
              "read and write (--data-dir or $FASTCIFAR_DATA)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        said, status = atomic.stop_reason(exc)
        print(f"{prog}: {said}; the half-built folder was removed", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
