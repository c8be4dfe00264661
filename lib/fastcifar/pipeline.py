"""`python -m fastcifar.pipeline [--profile ...] [--only J1 ...]`: the notebooks J1..J5 (fastcifar.series.pipeline)."""
import sys

from .series.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
