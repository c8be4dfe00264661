"""Re-execute the notebook series headlessly with papermill.

    python -m fastcifar.pipeline [--profile auto|full|smoke] [--only J1 J3] [-p name=value ...]

Executed copies go to outputs/notebooks/ (full profile) or outputs/smoke/notebooks/, with a
timing table. Notebooks run in order, in one process tree, so checkpoints written by J2/J3 are
there for J4/J5 and the teacher never has to leave the machine it was trained on.
"""
from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path

from . import atomic, env

NOTEBOOKS = ["J1", "J2", "J3", "J4", "J5"]


def notebook_paths(root: Path | None = None) -> dict[str, Path]:
    folder = (root or env.project_root()) / "notebooks"
    found = {}
    for nb in NOTEBOOKS:
        matches = sorted(folder.glob(f"{nb}_*.ipynb"))
        if len(matches) != 1:
            raise FileNotFoundError(f"expected one notebook {folder}/{nb}_*.ipynb, found {len(matches)}")
        found[nb] = matches[0]
    return found


def parse_params(pairs: list[str]) -> dict:
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"parameters are name=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
    return params


def run(profile: str = "auto", only: list[str] | None = None, params: dict | None = None,
        progress: bool = True) -> list[dict]:
    import papermill as pm

    prof = env.resolve_profile(profile)
    root = env.project_root()
    selected = only or NOTEBOOKS
    unknown = [nb for nb in selected if nb not in NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown notebooks {unknown}; choose from {NOTEBOOKS}")
    paths = notebook_paths(root)
    out_dir = env.outputs_dir(prof.name) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = []
    for nb in selected:
        source = paths[nb]
        target = out_dir / source.name
        print(f"[pipeline] {nb}: {os.path.relpath(source)} -> {os.path.relpath(target)}", flush=True)
        t0 = time.perf_counter()
        with atomic.atomic_path(target) as tmp:
            pm.execute_notebook(str(source), str(tmp), parameters={"profile": prof.name, **(params or {})},
                                cwd=str(root), kernel_name="python3", progress_bar=progress, log_output=False)
        timings.append({"notebook": nb, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"[pipeline] {nb} done in {timings[-1]['seconds']} s", flush=True)
    summary = {"profile": prof.name, "device": env.device_name(), "git_commit": env.git_commit(),
               "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "notebooks": timings, "total_s": round(sum(t["seconds"] for t in timings), 1)}
    atomic.write_text(env.outputs_dir(prof.name) / f"pipeline_{'_'.join(selected)}.json", json.dumps(summary, indent=2))
    print(f"[pipeline] total {summary['total_s']} s on {summary['device']} ({prof.name})")
    return timings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="auto", choices=["auto", "full", "smoke"])
    ap.add_argument("--only", nargs="+", metavar="J", help=f"subset of {NOTEBOOKS}")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                    help="notebook parameter passed to every selected notebook")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    run(args.profile, args.only, parse_params(args.param), progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
