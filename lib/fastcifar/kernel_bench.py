"""`python -m fastcifar.kernel_bench --out DIR`: GPU benchmark of the megakernel (fastcifar.series.kernel_bench)."""
import sys

from .series.kernel_bench import main

if __name__ == "__main__":
    sys.exit(main())
