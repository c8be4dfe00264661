"""The config-driven commands of the CIFAR-100 report (`fastcifar COMMAND` or `python -m fastcifar.COMMAND`).
Imports core and toolkit only.

- config: the commands' configs: keys, checks, overrides
- rundir: one folder per command run, with the resolved config and run.json
- commands: what the commands share (parsing, run folder, data, model)
- train: sanity checks, then full training from a config
- lr_finder: learning-rate sweep, suggested range and value
- grid_search: lr x weight decay x blocks x widths for a few epochs, best on validation
- evaluate: loss, top-1/top-5, per-class accuracy, confusion matrix of a checkpoint
"""
