"""What the notebook series (fastcifar.series) and the config-driven commands (fastcifar.toolkit) both
stand on. Imports nothing outside core.

- env: project root, data/output folders, run profiles, versions
- atomic: atomic writes, stale temporary files, SIGTERM as an interruption
- data: CIFAR readers, provenance, validation split, GPU-resident loader (`python -m fastcifar.data`)
- models: ResNet-18, MobileNetV3-Small, ShuffleNetV2, FastNet, the custom ResNet
- distill: distillation loss, soft labels
- engine: the training loop, TrainConfig, checkpoints, evaluation, sanity-check helpers
- sanity: baselines, initial loss and small-sample overfit as one call
- bench: the batch-1 latency benchmark, launch floor, results CSV schema
- graphs: the one CUDA-graph capture and its lean call (cudaGraphLaunch on the current stream)
- optimize: inference variants (precision, memory format, BN folding, compile, CUDA graphs, backends)
- kernels: FastNet in one CUDA C++ kernel launch (the megakernel) and its CPU reference
- plots: figures both wings draw, and save_figure
- tables: markdown tables
"""
