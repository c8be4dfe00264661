"""`python -m fastcifar.evaluate --config FILE --checkpoint PATH`: the final evaluation (fastcifar.toolkit.evaluate)."""
import sys

from .toolkit.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
