"""fastcifar: the shared library behind notebooks J1..J5.

How low can GPU latency at batch size 1 go for a CIFAR-10 classifier that still clears the accuracy
bar? The notebooks tell the story; this package holds the code they call, so it can be tested.

Modules: env (paths, profile, versions), data, models, bench, train, distill, optimize, report,
export, pipeline. The config-driven commands of the CIFAR-100 report: config, rundir, commands (and
train), sanity, lr_finder, grid_search, evaluate, cli.
"""

__version__ = "0.1.0"
