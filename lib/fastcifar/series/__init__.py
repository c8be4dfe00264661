"""The notebook series J1..J5: what the notebooks call, and the commands that feed them. Imports core and
series only.

- j1 ... j5: each notebook's steps, one function per step, in the notebook's order (J1_benchmark.ipynb
  calls j1, and so on); the decisions the notebooks show are functions there or in report
- session: what a notebook starts with (its run, its data on the device, the columns of its rows)
- records: the typed records the notebooks hand to each other (sweep/chosen.json, b1.json, fastnet.json,
  variants.json): versioned, written atomically, one clear error when missing, damaged or stale
- report: the seed's rules and bar (defined once), F1/F2 and final selection, tables and plots
- recipe: FastNet's training recipe (hyperparameters in one place; distillation optional)
- sweep: the FastNet sweep command and the F1/F2 choice (`python -m fastcifar.sweep`)
- export: final model export (checkpoint + Spec, ONNX, parity check, model card)
- pipeline: the papermill runner of J1..J5 (`python -m fastcifar.pipeline`)
- notebook_params: the notebooks' parameters cells and `-p` values checked against them
- kernel_bench: the GPU benchmark of the megakernel against PyTorch (`python -m fastcifar.kernel_bench`)
- predict: the final model on images, `Predictor` and `fastcifar predict` (`python -m fastcifar.predict`),
  and what J5 shows of it (e2e rows, a grid of classified test images, the confusion matrix)
"""
