"""`python -m fastcifar.grid_search --config FILE [overrides]`: the mini grid search (fastcifar.toolkit.grid_search)."""
import sys

from .toolkit.grid_search import main

if __name__ == "__main__":
    sys.exit(main())
