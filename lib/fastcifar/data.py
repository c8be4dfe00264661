"""`python -m fastcifar.data --from-shared DIR | --download NAME`: prepare CIFAR data (fastcifar.core.data)."""
import sys

from .core.data import main

if __name__ == "__main__":
    sys.exit(main())
