"""`python -m fastcifar.lr_finder --config FILE [overrides]`: the learning-rate finder (fastcifar.toolkit.lr_finder)."""
import sys

from .toolkit.lr_finder import main

if __name__ == "__main__":
    sys.exit(main())
