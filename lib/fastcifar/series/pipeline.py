"""Re-execute the notebook series headlessly with papermill.

    python -m fastcifar.pipeline [--profile auto|full|smoke] [--only J1 J3] [-p name=value] [-p J2.name=value]

Executed copies go to outputs/notebooks/ (full profile) or outputs/smoke/notebooks/, with a timing
table. Notebooks run in order, in one process tree, so checkpoints written by J2/J3 are there for J4/J5
and the teacher never has to leave the machine it was trained on.

Parameters: `-p epochs=5` goes to every selected notebook that declares `epochs`; `-p J2.epochs=5` to J2
only (and wins over a global value there). Values are checked against each notebook's parameters cell
(names and types) before anything runs. The profile is chosen with --profile only.

Failures and interruptions: a notebook that fails is kept as `<name>.failed.ipynb` beside the executed
copies (the traceback is in it) and the pipeline exits non-zero naming the notebook and the cell. The
results files of the output folder (its top-level files, figures/ and checkpoints/) and README's
final-table block (J5 rewrites it) are snapshotted before each notebook and put back when the notebook
fails or the run is stopped (Ctrl-C, SIGTERM), so they always match the executed notebooks that are
kept. A run killed outright (SIGKILL) leaves the snapshot and temporary files; the next start puts
the snapshot back and removes the temporaries, and the data folder's half-built `.rebuild-*` folders.

One run at a time per output folder: a run holds `<output folder>/.pipeline.lock` (pid, host, start time,
command) from before its clean-up to its end. A second run is refused in one line naming the first (exit
2), or waits for it with --wait; a lock whose process is gone is taken over. The clean-up touches only
what the pipeline owns: the snapshot, and temporary files among the results files and notebooks/ (never
the toolkit's run folders or other subfolders).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..core import atomic, env, lock
from .notebook_params import ParameterError, notebook_parameters, resolve

NOTEBOOKS = ["J1", "J2", "J3", "J4", "J5"]
SNAPSHOT_DIR = ".pipeline-snapshot"
LOCK_NAME = ".pipeline.lock"
FAILED_SUFFIX = ".failed.ipynb"
KERNEL_LOG_SUFFIX = ".kernel.log"


class OutputsNotWritable(RuntimeError):
    """The outputs folder cannot take the executed notebooks; found before anything runs."""


class NotebookFailed(RuntimeError):
    """A notebook raised while it ran; the message names it, the cell and the kept executed copy."""


class KernelDied(NotebookFailed):
    """The notebook's kernel process ended while a cell ran (a crash, the OOM killer); the message names
    the log of the kernel's own messages."""


_kernels_started: list = []


def _kernel_manager_class(stderr_path: Path | None = None):
    """A kernel manager that remembers its kernels, so a stopped run can end them itself, and sends the
    kernel process's own stderr (ipykernel's log, C-level messages) to `stderr_path`.

    papermill's own cleanup of a kernel after Ctrl-C or SIGTERM may run only at interpreter exit, after
    the results were put back: the kernel could go on writing in between. What a notebook prints reaches
    the executed notebook either way; the kernel's stderr would otherwise interleave with the pipeline's
    lines (a stopped kernel prints tracebacks of its closed sockets)."""
    from jupyter_client import AsyncKernelManager

    class RememberedKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            _kernels_started.append(self)

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if stderr_path is None:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            with open(stderr_path, "ab") as log:  # the kernel holds its own copy of the descriptor
                return await super()._async_launch_kernel(kernel_cmd, **{**kw, "stderr": log})

    return RememberedKernelManager


def end_kernels(grace_s: float = 10.0) -> None:
    """Kill every kernel this run started that still runs, with its process group, and wait for it."""
    while _kernels_started:
        provisioner = getattr(_kernels_started.pop(), "provisioner", None)
        process = getattr(provisioner, "process", None)
        if process is None or process.poll() is not None:
            continue
        try:  # kernels start in their own session: the group holds their data loaders and compile workers
            os.killpg(getattr(provisioner, "pgid", None) or process.pid, signal.SIGKILL)
        except (AttributeError, OSError):  # no process groups here, or the group is gone
            process.kill()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass


def notebook_paths(root: Path | None = None, which: list[str] | None = None) -> dict[str, Path]:
    folder = (root or env.project_root()) / "notebooks"
    found = {}
    for nb in which or NOTEBOOKS:
        matches = sorted(folder.glob(f"{nb}_*.ipynb"))
        if len(matches) != 1:
            raise FileNotFoundError(f"expected one notebook {folder}/{nb}_*.ipynb, found {len(matches)}")
        found[nb] = matches[0]
    return found


def _as_pairs(params) -> list[str]:
    if params is None:
        return []
    if isinstance(params, dict):  # programmatic use: values as Python objects
        return [f"{k}={v if isinstance(v, str) else repr(v)}" for k, v in params.items()]
    return list(params)


def check_params(params, paths: dict[str, Path]) -> dict[str, dict]:
    """Values for each notebook of `paths`, checked against its parameters cell (ParameterError)."""
    return resolve(_as_pairs(params), {nb: notebook_parameters(path) for nb, path in paths.items()}, NOTEBOOKS)


# ---------------------------------------------------------------- results snapshot

RESULT_FOLDERS = ("figures", "checkpoints")


def results_files(out_dir: Path) -> list[Path]:
    """What a notebook writes as results: the output folder's top-level files, its figures and its
    checkpoints (J4 and J5 load what J2 and J3 saved, so they must match the kept notebooks too)."""
    files = [p for p in out_dir.iterdir() if p.is_file() and not p.name.startswith(".")] if out_dir.is_dir() else []
    for folder in RESULT_FOLDERS:
        if (out_dir / folder).is_dir():
            files += [p for p in (out_dir / folder).iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(files)


def _keep_copy(src: Path, dest: Path) -> None:
    """Checkpoints (tens of MB) as hard links where the file system allows: free, and safe because
    save_checkpoint replaces them atomically (a new file) and never rewrites them in place. Other
    files are copied (a figure saved again rewrites its file in place)."""
    if src.suffix == ".pth":
        try:
            os.link(src, dest)
            return
        except OSError:
            pass
    shutil.copy2(src, dest)


def take_snapshot(out_dir: Path, readme: Path | None = None) -> Path:
    """Keep the results files, and the final-table block of `readme` (J5 rewrites it), in
    out_dir/.pipeline-snapshot; the manifest, written last, makes it valid."""
    from .report import readme_block

    snap = out_dir / SNAPSHOT_DIR
    shutil.rmtree(snap, ignore_errors=True)
    snap.mkdir(parents=True)
    results = [str(path.relative_to(out_dir)) for path in results_files(out_dir)]
    for i, rel in enumerate(results):
        _keep_copy(out_dir / rel, snap / f"{i:05d}")
    block = readme_block(readme) if readme is not None else None
    manifest = {"results": results, "readme": str(Path(readme).resolve()) if block is not None else None,
                "readme_block": block}
    atomic.write_text(snap / "manifest.json", json.dumps(manifest))
    return snap


def restore_snapshot(out_dir: Path) -> bool:
    """Put the results files back as they were at the snapshot (files created since are removed), and
    README's final-table block (the rest of README, perhaps edited meanwhile, stays as it is). False
    when there is no valid snapshot (it is then only removed)."""
    from .report import readme_block, update_readme

    snap = out_dir / SNAPSHOT_DIR
    manifest = snap / "manifest.json"
    if not manifest.is_file():
        shutil.rmtree(snap, ignore_errors=True)
        return False
    kept = json.loads(manifest.read_text())
    if isinstance(kept, list):  # written by an older version: results only
        kept = {"results": kept, "readme": None}
    results = kept["results"]
    for path in results_files(out_dir):
        if str(path.relative_to(out_dir)) not in results:
            path.unlink()
    for i, rel in enumerate(results):
        os.replace(snap / f"{i:05d}", out_dir / rel)
    readme = kept["readme"] and Path(kept["readme"])
    if readme and readme_block(readme) not in (None, kept["readme_block"]):
        update_readme(readme, kept["readme_block"])
    shutil.rmtree(snap)
    return True


def discard_snapshot(out_dir: Path) -> None:
    shutil.rmtree(out_dir / SNAPSHOT_DIR, ignore_errors=True)


def owned_temporaries(out_dir: Path) -> list[Path]:
    """Temporary files among what the pipeline writes: the output folder's top-level files, its results
    folders and notebooks/. Other subfolders (the toolkit's runs, the sweep's, smoke/ beside the full
    profile's results) belong to other commands, which clean their own."""
    found = atomic.stale_temporaries(out_dir, recursive=False)
    for folder in (*RESULT_FOLDERS, "notebooks"):
        found += atomic.stale_temporaries(out_dir / folder)
    return found


def clean_stale(out_dir: Path, data_dir: Path | None = None) -> list[str]:
    """Undo what a run killed outright left: put its snapshot back, remove its temporary files
    (`owned_temporaries`) and half-built data folders. Returns what was done, one line each. Only for a
    run that holds the output folder's lock (`run` does): then no other run is using what it removes."""
    from ..core.data import remove_stale_work_folders

    done = []
    if (out_dir / SNAPSHOT_DIR).exists() and restore_snapshot(out_dir):
        done.append(f"results in {out_dir} put back as they were before an interrupted notebook")
    for tmp in owned_temporaries(out_dir):
        tmp.unlink(missing_ok=True)
        done.append(f"removed {tmp}")
    notebooks = out_dir / "notebooks"
    for log in sorted(notebooks.glob(f".*{KERNEL_LOG_SUFFIX}")) if notebooks.is_dir() else []:
        log.unlink(missing_ok=True)  # the kernel log of a notebook whose run was killed outright
        done.append(f"removed {log}")
    if data_dir is not None:
        done += [f"removed {folder}" for folder in remove_stale_work_folders(data_dir)]
    return done


# ---------------------------------------------------------------- running

def _failure_message(nb: str, kept: Path, exc) -> str:
    source = (getattr(exc, "source", "") or "").strip().splitlines()
    first = f" `{source[0][:80]}`" if source else ""
    return (f"{nb} failed in cell {exc.cell_index} (execution count {exc.exec_count}){first}: "
            f"{exc.ename}: {str(exc.evalue).splitlines()[0] if exc.evalue else ''}; executed copy kept at {kept}")


def run(profile: str = "auto", only: list[str] | None = None, params=None, progress: bool = True,
        paths: dict[str, Path] | None = None, wait: bool = False, command: str | None = None) -> list[dict]:
    """Run the selected notebooks in order. `params`: `-p` texts, or a dict {name or NB.name: value}.
    Another run on the same output folder raises lock.Busy before anything is touched, or with `wait`
    is waited for; `command` is how this run is named to such a second run.

    Raises ParameterError (a user mistake, before anything runs), lock.Busy or NotebookFailed."""
    selected = list(only or NOTEBOOKS)
    unknown = [nb for nb in selected if nb not in NOTEBOOKS]
    if unknown:
        raise ParameterError(f"unknown notebooks {unknown}; choose from {NOTEBOOKS}")
    prof = env.resolve_profile(profile)
    root = env.project_root()
    paths = {nb: p for nb, p in (paths or notebook_paths(root, selected)).items() if nb in selected}
    values = check_params(params, paths)

    out_base = env.outputs_dir(prof.name)
    out_dir = out_base / "notebooks"
    try:
        atomic.ensure_writable(out_dir)
    except OSError as exc:
        raise OutputsNotWritable(f"cannot write to {out_dir} ({exc.strerror or exc}); expected a writable outputs "
                                 f"folder: set ${env.OUTPUTS_ENV} to one") from None
    said = lambda holder: print(f"[pipeline] waiting for {holder.describe()} to finish with {out_base}", flush=True)
    try:
        me, stale = lock.acquire(out_base / LOCK_NAME, command, wait=wait, on_wait=said, hint=", or pass --wait")
    except KeyboardInterrupt as exc:  # stopped while waiting: this run had not started
        exc.nothing_started = True
        raise
    try:
        if stale is not None:
            print(f"[pipeline] took over the lock of {stale.describe()}, which is gone", flush=True)
        if prof.is_smoke:  # said on the terminal too, not only inside the executed notebooks
            cpu = env.default_device().type != "cuda"
            print(f"[pipeline] SMOKE PROFILE{': no CUDA GPU here' if cpu else ''}; small subsets, {prof.max_epochs} "
                  f"epoch(s), {'CPU timings, not GPU latency' if cpu else 'timings of a smoke run'}; rows marked "
                  f"profile=smoke, results in {out_base}", flush=True)
        return _run_locked(prof, selected, paths, values, progress, root, out_base, out_dir)
    finally:
        lock.release(out_base / LOCK_NAME, me)


def _run_locked(prof, selected, paths, values, progress, root, out_base, out_dir) -> list[dict]:
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    for line in clean_stale(out_base, env.data_dir()):
        print(f"[pipeline] {line}", flush=True)
    timings = []
    for nb in selected:
        source = paths[nb]
        target = out_dir / source.name
        failed = out_dir / (source.stem + FAILED_SUFFIX)
        kernel_log = out_dir / f".{source.stem}{KERNEL_LOG_SUFFIX}"
        kept_log = out_dir / (source.stem + KERNEL_LOG_SUFFIX)
        print(f"[pipeline] {nb}: {os.path.relpath(source)} -> {os.path.relpath(target)}", flush=True)
        t0 = time.perf_counter()
        take_snapshot(out_base, readme=root / "README.md")
        kernel_log.unlink(missing_ok=True)
        try:
            with atomic.atomic_path(target) as tmp:
                try:
                    pm.execute_notebook(str(source), str(tmp), parameters={**values[nb], "profile": prof.name},
                                        cwd=str(root), kernel_name="python3", progress_bar=progress,
                                        log_output=False, kernel_manager_class=_kernel_manager_class(kernel_log))
                except pm.PapermillExecutionError as exc:
                    atomic.move_into_place(tmp, failed)  # papermill wrote the executed copy, traceback included
                    raise NotebookFailed(_failure_message(nb, failed, exc)) from exc
                except DeadKernelError as exc:
                    raise KernelDied(f"{nb}: its kernel died while a cell ran ({exc}); its own messages are in "
                                     f"{kept_log}") from exc
        except BaseException as exc:
            end_kernels()  # nothing writes any more: what the kernel left half-written is dead temporaries
            restore_snapshot(out_base)
            for stale in owned_temporaries(out_base):
                stale.unlink(missing_ok=True)
            # Kept when the kernel died or something unforeseen failed: a crash's own messages are there.
            # A cell's error is in the executed copy, and a stop only leaves complaints about closed sockets.
            if isinstance(exc, KernelDied) or not isinstance(exc, (KeyboardInterrupt, NotebookFailed)):
                if kernel_log.is_file():
                    os.replace(kernel_log, kept_log)
            kernel_log.unlink(missing_ok=True)
            raise
        _kernels_started.clear()  # papermill shut it down
        kernel_log.unlink(missing_ok=True)
        kept_log.unlink(missing_ok=True)  # an older failure's log is superseded
        discard_snapshot(out_base)
        failed.unlink(missing_ok=True)  # an older failure of this notebook is superseded
        timings.append({"notebook": nb, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"[pipeline] {nb} done in {timings[-1]['seconds']} s", flush=True)
    summary = {"profile": prof.name, "device": env.device_name(), "git_commit": env.git_commit(),
               "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "parameters": {nb: values[nb] for nb in selected if values[nb]},
               "notebooks": timings, "total_s": round(sum(t["seconds"] for t in timings), 1)}
    atomic.write_text(out_base / f"pipeline_{'_'.join(selected)}.json", json.dumps(summary, indent=2))
    print(f"[pipeline] total {summary['total_s']} s on {summary['device']} ({prof.name})")
    return timings


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv=None) -> int:
    ap = _OneLineParser(prog="python -m fastcifar.pipeline", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="auto", choices=["auto", "full", "smoke"])
    ap.add_argument("--only", nargs="+", metavar="J", choices=NOTEBOOKS, help=f"subset of {NOTEBOOKS}")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="[NB.]NAME=VALUE",
                    help="notebook parameter: to every selected notebook that has it, or to NB only")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--wait", action="store_true",
                    help="when another run uses the same outputs folder, wait for it to end (default: refuse)")
    args = ap.parse_args(argv)
    command = shlex.join(["python", "-m", "fastcifar.pipeline", *(sys.argv[1:] if argv is None else argv)])
    try:
        with atomic.signals_raise():
            run(args.profile, args.only, args.param, progress=not args.no_progress, wait=args.wait, command=command)
    except (ParameterError, env.ProfileError, FileNotFoundError, OutputsNotWritable,
            lock.Busy) as exc:  # FileNotFoundError: no project or notebook
        print(f"{ap.prog}: error: {exc}", file=sys.stderr)
        return 2
    except NotebookFailed as exc:
        print(f"{ap.prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        said, status = atomic.stop_reason(exc)
        done = ("nothing was started (it was waiting for another run)" if getattr(exc, "nothing_started", False)
                else "temporary files removed, results put back as before the interrupted notebook")
        print(f"{ap.prog}: {said}; {done}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
