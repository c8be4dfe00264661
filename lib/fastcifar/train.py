"""`python -m fastcifar.train --config FILE [overrides]`: the train command (fastcifar.commands)."""
import sys

from .commands import train_main as main

if __name__ == "__main__":
    sys.exit(main())
