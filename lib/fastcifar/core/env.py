"""Where things are and what we run on: project root, folders, run profile, versions.

Every notebook starts with `run = start("J1", profile)`. On a machine without CUDA the profile is
`smoke`: small subsets and few iterations, results written under outputs/smoke/ and marked as such,
so a CPU timing can never be mistaken for a GPU latency.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT_ENV = "FASTCIFAR_ROOT"
DATA_ENV = "FASTCIFAR_DATA"
OUTPUTS_ENV = "FASTCIFAR_OUTPUTS"
COMMIT_ENV = "FASTCIFAR_COMMIT"


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The folder holding pyproject.toml and lib/fastcifar.

    nbval starts kernels in notebooks/ and papermill in the caller's folder, so look upward from the
    working directory, then from this file, instead of trusting either.
    """
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).resolve()
    for origin in (Path(start or os.getcwd()).resolve(), Path(__file__).resolve()):
        for folder in (origin, *origin.parents):
            if (folder / "pyproject.toml").is_file() and (folder / "lib" / "fastcifar").is_dir():
                return folder
    raise FileNotFoundError(
        "could not find the project root (a folder with pyproject.toml and lib/fastcifar) above "
        f"{Path(start or os.getcwd()).resolve()}; run from inside the project or set {ROOT_ENV}"
    )


def _project_root_or_none() -> Path | None:
    try:
        return project_root()
    except FileNotFoundError:
        return None


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Data folder: the argument, else $FASTCIFAR_DATA, else <root>/data inside the project, else
    ./data (an installed package used outside the project needs no project folder)."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    root = _project_root_or_none()
    return (root if root is not None else Path.cwd()) / "data"


def outputs_dir(profile: str = "full") -> Path:
    """Committed evidence lives in outputs/; smoke runs go to outputs/smoke/ (git-ignored).
    Outside the project (an installed package): ./outputs, unless $FASTCIFAR_OUTPUTS says otherwise."""
    if os.environ.get(OUTPUTS_ENV):
        base = Path(os.environ[OUTPUTS_ENV])
    else:
        root = _project_root_or_none()
        base = (root if root is not None else Path.cwd()) / "outputs"
    return base if profile == "full" else base / "smoke"


def git_commit() -> str:
    """Commit of the code that produced a result; '-dirty' when the tree has uncommitted changes.

    A copy of the tree without .git (a remote GPU machine) gets it from $FASTCIFAR_COMMIT.
    """
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    try:
        root = project_root()
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError, FileNotFoundError):
        return "unknown"


def device_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} threads)"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def versions() -> dict:
    """Versions stamped on every results row."""
    import torchvision

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # TorchVersion objects do not survive weights_only loading
        "torchvision": str(torchvision.__version__),
        "cuda": torch.version.cuda or "none",
        "cudnn": str(cudnn) if cudnn else "none",
    }


def environment_report(device: torch.device | None = None) -> dict:
    """What J1 card 1 asks to document: versions, GPU, torch.compile availability."""
    device = device or default_device()
    report = {**versions(), "device": device_name(device), "git_commit": git_commit(),
              "torch.compile available": hasattr(torch, "compile"),
              "platform": platform.platform()}
    try:
        import triton  # noqa: F401  (inductor's GPU backend)

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = "not installed"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        report.update({"FP32 convolutions may use TF32": torch.backends.cudnn.allow_tf32,
                       "compute capability": f"{props.major}.{props.minor}",
                       "GPU memory (GiB)": round(props.total_memory / 2**30, 1),
                       "multiprocessors": props.multi_processor_count})
    return report


@dataclass(frozen=True)
class Profile:
    """How much work a notebook does. `full` needs CUDA; `smoke` proves the code runs anywhere."""

    name: str
    train_limit: int | None  # images of the training split used for training
    eval_limit: int | None  # images of val and test used for evaluation
    max_epochs: int | None
    warmup_iters: int
    measure_iters: int
    compile: bool  # torch.compile variants (minutes on a CPU: skipped in smoke)
    sanity_steps: int  # steps of the "overfit 64 images" check

    def epochs(self, wanted: int) -> int:
        return wanted if self.max_epochs is None else min(wanted, self.max_epochs)

    @property
    def is_smoke(self) -> bool:
        return self.name == "smoke"


PROFILES = {
    # Seed protocol: warm-up 50-200 iterations, measure 500-2000 (sprint plan, section 2); J1 card 3's
    # defaults (50, 500) keep the whole series inside its time budget.
    "full": Profile("full", None, None, None, warmup_iters=50, measure_iters=500, compile=True, sanity_steps=150),
    "smoke": Profile("smoke", 256, 256, 1, warmup_iters=3, measure_iters=20, compile=False, sanity_steps=5),
}


class ProfileError(RuntimeError, ValueError):
    """A profile that does not exist or cannot run here (a user's choice, reported in one line)."""


def resolve_profile(requested: str = "auto") -> Profile:
    if requested == "auto":
        return PROFILES["full" if torch.cuda.is_available() else "smoke"]
    if requested not in PROFILES:
        raise ProfileError(f"profile must be 'auto', 'full' or 'smoke', not {requested!r}")
    if requested == "full" and not torch.cuda.is_available():
        raise ProfileError("profile 'full' measures GPU latency and needs a CUDA GPU, and none is "
                           "visible; use profile='smoke' (or 'auto') on this machine")
    return PROFILES[requested]


@dataclass
class Run:
    """What a notebook needs to know about where it runs; made by `start`."""

    notebook: str
    profile: Profile
    device: torch.device
    root: Path
    data_dir: Path
    out_dir: Path
    env: dict = field(default_factory=dict)

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def fig_dir(self) -> Path:
        return self.out_dir / "figures"

    @property
    def results_csv(self) -> Path:
        return self.out_dir / "results.csv"

    def relative(self, path) -> str:
        """Path as stored in JSON files: relative to the project root, so a copy elsewhere still works."""
        path = Path(path).resolve()
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def resolve(self, stored: str) -> Path:
        return self.root / stored if not Path(stored).is_absolute() else Path(stored)

    def row_meta(self) -> dict:
        """Columns every results row carries."""
        return {"profile": self.profile.name, "device_name": self.env["device"], "torch": self.env["torch"],
                "cuda": self.env["cuda"], "cudnn": self.env["cudnn"], "git_commit": self.env["git_commit"],
                "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def start(notebook: str, profile: str = "auto", seed: int = 42) -> Run:
    """Resolve profile and folders, fix seeds, print a banner (loud when this is only a smoke run)."""
    prof = resolve_profile(profile)
    device = default_device()
    torch.manual_seed(seed)
    if device.type == "cuda":
        # Fixed shapes everywhere: let cuDNN time its algorithms once (inside warm-ups) and keep the best.
        torch.backends.cudnn.benchmark = True
    run = Run(notebook=notebook, profile=prof, device=device, root=project_root(), data_dir=data_dir(),
              out_dir=outputs_dir(prof.name), env=environment_report(device))
    for folder in (run.out_dir, run.ckpt_dir, run.fig_dir):
        folder.mkdir(parents=True, exist_ok=True)
    if prof.is_smoke:
        bar = "!" * 78
        print(f"{bar}\n  SMOKE PROFILE: no CUDA GPU here. Small subsets, {prof.max_epochs} epoch(s), "
              f"{prof.measure_iters} timing iterations.\n  Timings below are CPU timings, not GPU "
              f"latency; rows are marked profile=smoke\n  and written to {run.out_dir}.\n{bar}")
    else:
        print(f"{notebook}: profile full on {run.env['device']}; results in {run.out_dir}")
    return run

