"""`python -m fastcifar.sweep [--out DIR] [--profile ...]`: the FastNet sweep (fastcifar.series.sweep)."""
import sys

from .series.sweep import main

if __name__ == "__main__":
    sys.exit(main())
