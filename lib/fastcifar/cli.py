"""The `fastcifar` console script: one entry point for the config-driven commands.

    fastcifar train       --config FILE [overrides]
    fastcifar lr_finder   --config FILE [overrides]
    fastcifar grid_search --config FILE [overrides]
    fastcifar evaluate    --config FILE --checkpoint PATH [overrides]
    fastcifar pipeline    [--profile ...] [--only J1 ...]   (the notebook series)
    fastcifar predict     IMAGE_OR_FOLDER... [--model PATH] [--top K] [--json]   (the final model on images)

Also `python -m fastcifar ...` without installing. Dashes and underscores are the same in command names.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("fastcifar.toolkit.train", "sanity checks, then full training from a config"),
    "lr_finder": ("fastcifar.toolkit.lr_finder", "learning-rate sweep: smoothed loss against lr, suggested range and value"),
    "grid_search": ("fastcifar.toolkit.grid_search", "lr x weight decay x blocks x widths for a few epochs, best on validation"),
    "evaluate": ("fastcifar.toolkit.evaluate", "loss, top-1/top-5, per-class accuracy, confusion matrix of a checkpoint"),
    "pipeline": ("fastcifar.series.pipeline", "re-execute the notebooks J1..J5 with papermill"),
    "predict": ("fastcifar.series.predict", "classify image files or folders with the final model"),
}


def usage() -> str:
    lines = ["usage: fastcifar COMMAND [options]   (COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<12} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name = argv[0].replace("-", "_")
    if name not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv[0] = f"fastcifar {name}"  # what argparse shows in usage lines (pipeline's parser reads it)
    status = module.main(argv[1:])
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
