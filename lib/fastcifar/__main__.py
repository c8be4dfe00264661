"""`python -m fastcifar COMMAND ...`: the `fastcifar` console script without installing it."""
import sys

from .cli import main

sys.exit(main())
