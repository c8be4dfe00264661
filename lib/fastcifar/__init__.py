"""fastcifar: the shared library behind notebooks J1..J5.

How low can GPU latency at batch size 1 go for a CIFAR-10 classifier that still clears the accuracy
bar? The notebooks tell the story; this package holds the code they call, so it can be tested.

Rooms: core/ (env, atomic, data, models, distill, engine, sanity, bench, optimize, kernels, plots,
tables) is what both wings stand on; series/ (j1..j5, the notebooks' steps; session, records, recipe,
sweep, report, export, pipeline, notebook_params, kernel_bench, predict) is what the notebooks call; toolkit/
(config, rundir, commands, train, lr_finder, grid_search, evaluate) holds the config-driven commands of
the CIFAR-100 report. The modules beside them are the `python -m fastcifar.<command>` entry points and
cli, the `fastcifar` console script. docs/layout.md has the rooms in short.
"""

__version__ = "0.1.0"
