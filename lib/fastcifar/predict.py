"""`python -m fastcifar.predict IMAGE_OR_FOLDER... [--model PATH] [--top K] [--json]` (fastcifar.series.predict)."""
import sys

from .series.predict import main

if __name__ == "__main__":
    sys.exit(main())
