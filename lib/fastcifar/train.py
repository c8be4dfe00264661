"""`python -m fastcifar.train --config FILE [overrides]`: the train command (fastcifar.toolkit.train)."""
import sys

from .toolkit.train import main

if __name__ == "__main__":
    sys.exit(main())
