"""The notebook series J1..J5: what the notebooks call, and the commands that feed them. Imports core and
series only.

- recipe: FastNet's training recipe (hyperparameters in one place; distillation optional)
- sweep: the FastNet sweep command and the F1/F2 choice (`python -m fastcifar.sweep`)
- report: decision rules, final selection, tables and plots of the notebooks
- export: final model export (checkpoint + Spec, ONNX, parity check, model card)
- pipeline: the papermill runner of J1..J5 (`python -m fastcifar.pipeline`)
- notebook_params: the notebooks' parameters cells and `-p` values checked against them
- kernel_bench: the GPU benchmark of the megakernel against PyTorch (`python -m fastcifar.kernel_bench`)
"""
