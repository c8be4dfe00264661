"""Configs of the command-line tools (train, lr_finder, grid_search, evaluate): one flat YAML mapping.

Every key is declared once here (type, default, one-line help); configs/*.yaml document each key in
comments. A config is checked whole before any work starts: an unknown key (with the nearest known
one), a wrong type or range, or a missing data folder raises `ConfigError` with one message naming the
key and what was expected. The commands print that message and exit with code 2.

Command-line overrides change single keys: `--max_epochs 20`, `--max_epochs=20` or `max_epochs=20`;
values are read as YAML (`blocks=[2,2,2]`, `data_dir=null`).

Why hand-written and not pydantic or OmegaConf (weighed, kept): the checks here are one table of keys
and about a hundred lines, and what they say is the point: one line per mistake, naming the key, whether
the file or the command line gave it, what was expected, and the nearest known key for a typo. pydantic
would validate the types as well, but its errors are a multi-line report per model (location tuples,
error types, input values) that the commands would have to rewrite into that line, it knows nothing of
which layer gave a value, and it is a dependency the library does not otherwise need. OmegaConf's
dotlist merge does `key=value` overrides, but not the `--key value` forms, not YAML 1.1's `1e-4` read
as text, not the refusal of a key given twice, and its errors name neither the file nor the fix. Either
would move the same rules into another library's vocabulary without removing any of them.
"""
from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import data, engine, env, models

# YAML 1.1 (PyYAML) reads `1e-4` as a string: number keys accept such strings.

# Where users' runs go by default, under the outputs folder: git-ignored, apart from the committed
# evidence in outputs/toolkit/.
RUNS_FOLDER = "runs"


class ConfigError(ValueError):
    """A user's mistake in a config file or an override; the message says what was expected."""


@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # int | float | bool | str | choice | int3 | floats | int3s
    default: Any
    help: str
    choices: tuple = ()
    optional: bool = False  # null allowed
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # strictly greater than
    below: float | None = None  # strictly less than


KEYS = [
    # data
    Key("dataset", "choice", "cifar10", "which dataset", choices=tuple(sorted(data.LAYOUTS))),
    Key("data_dir", "str", None, "folder holding cifar-10-batches-py/ or cifar-100-python/ (null: $FASTCIFAR_DATA "
        "or <project>/data)", optional=True),
    Key("val_size", "int", 5000, "validation images drawn from the official training set, stratified", minimum=1),
    Key("train_limit", "int", None, "use only this many training images (smoke runs)", optional=True, minimum=1),
    Key("eval_limit", "int", None, "use only this many validation and test images (smoke runs)", optional=True,
        minimum=1),
    # model
    Key("model", "choice", "resnet_custom", "registered model name", choices=tuple(sorted(models.MODELS))),
    Key("blocks", "int3", [3, 3, 3], "residual blocks per stage (resnet_custom)", minimum=1),
    Key("widths", "int3", [64, 128, 256], "channels per stage (resnet_custom)", minimum=1),
    # optimisation
    Key("optimizer", "choice", "adam", "sgd | adam | adamw", choices=engine.OPTIMIZERS),
    Key("lr", "float", 0.002, "learning rate (the step size used; not scaled with the batch)", above=0),
    Key("momentum", "float", 0.9, "SGD momentum", minimum=0, below=1),
    Key("nesterov", "bool", True, "Nesterov momentum (SGD)"),
    Key("weight_decay", "float", 1e-4, "weight decay", minimum=0),
    Key("batch_size", "int", 128, "training batch size", minimum=1),
    Key("max_epochs", "int", 20, "training epochs", minimum=1),
    Key("schedule", "choice", "constant", "learning-rate schedule", choices=engine.SCHEDULES),
    Key("warmup_epochs", "float", 0.0, "linear warm-up (schedule warmup_cosine)", minimum=0),
    Key("label_smoothing", "float", 0.0, "label smoothing of the training loss", minimum=0, below=1),
    Key("cutout", "int", 0, "side of the cutout square in pixels (0: off)", minimum=0),
    Key("bf16", "bool", True, "bf16 autocast (CUDA only)"),
    Key("channels_last", "bool", True, "channels_last memory format"),
    Key("checkpoint_every", "int", 5, "epochs between resumable checkpoints", minimum=1),
    Key("seed", "int", 42, "seed of the split, the initialisation and the augmentation (0 to 2**32 - 1, numpy's "
        "range)", minimum=0, maximum=2**32 - 1),
    # where and how
    Key("device", "choice", "auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda")),
    Key("output_dir", "str", None, "runs go to <output_dir>/<dataset>/<command>-<UTC time>/ (null: "
        f"$FASTCIFAR_OUTPUTS/{RUNS_FOLDER} or <project>/outputs/{RUNS_FOLDER}, git-ignored)", optional=True),
    Key("tensorboard", "bool", True, "TensorBoard logs beside the CSV log (when installed)"),
    Key("progress", "bool", True, "progress bars"),
    # sanity checks (train, before fitting)
    Key("sanity_checks", "bool", True, "baselines, initial loss and the small-sample overfit before training"),
    Key("overfit_images", "int", 64, "images of the overfit check", minimum=1),
    Key("overfit_steps", "int", 50, "steps of the overfit check (one batch: steps = epochs)", minimum=1),
    Key("overfit_lr", "float", 0.1, "SGD learning rate of the overfit check", above=0),
    # lr_finder
    Key("lr_finder_min", "float", 1e-6, "first learning rate of the sweep", above=0),
    Key("lr_finder_max", "float", 1.0, "last learning rate of the sweep", above=0),
    Key("lr_finder_steps", "int", 200, "steps of the sweep", minimum=5),
    Key("lr_finder_smoothing", "float", 0.95, "exponential smoothing of the loss curve", minimum=0, below=1),
    Key("lr_finder_divergence", "float", 4.0, "stop when the smoothed loss exceeds this times its minimum",
        above=1),
    # grid_search
    Key("grid_lr", "floats", [0.0005, 0.001, 0.002], "learning rates of the grid", above=0),
    Key("grid_weight_decay", "floats", [1e-5, 1e-4], "weight decays of the grid", minimum=0),
    Key("grid_blocks", "int3s", [[2, 2, 2], [3, 3, 3]], "block counts of the grid", minimum=1),
    Key("grid_widths", "int3s", [[48, 96, 192], [64, 128, 256]], "widths of the grid", minimum=1),
    Key("grid_epochs", "int", 3, "epochs of each grid point", minimum=1),
    # evaluate
    Key("eval_split", "choice", "test", "split the evaluate command measures", choices=("test", "val")),
    Key("eval_batch_size", "int", 1000, "batch size of evaluation", minimum=1),
]
KEY = {k.name: k for k in KEYS}


def defaults() -> dict:
    return {k.name: _copy(k.default) for k in KEYS}


def _copy(value):
    return [_copy(v) for v in value] if isinstance(value, list) else value


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, KEY, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(KEY)}"


def _number(value, key: Key, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {key.name} must be a number, got {value!r} ({type(value).__name__})")
    return value


def _bounds(value, key: Key, where: str, what: str):
    if key.minimum is not None and value < key.minimum:
        raise ConfigError(f"{where}: {key.name} must be {what} >= {key.minimum:g}, got {value!r}")
    if key.maximum is not None and value > key.maximum:
        raise ConfigError(f"{where}: {key.name} must be {what} <= {key.maximum:d}, got {value!r}")
    if key.above is not None and value <= key.above:
        raise ConfigError(f"{where}: {key.name} must be {what} > {key.above:g}, got {value!r}")
    if key.below is not None and value >= key.below:
        raise ConfigError(f"{where}: {key.name} must be {what} < {key.below:g}, got {value!r}")
    return value


def _int(value, key: Key, where: str, what: str = "an integer") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {key.name} must be {what}, got {value!r} ({type(value).__name__})")
    return _bounds(value, key, where, "an integer")


def _int3(value, key: Key, where: str) -> list[int]:
    what = "a list of three integers like [3, 3, 3]"
    if not isinstance(value, list) or len(value) != 3 or any(isinstance(v, bool) or not isinstance(v, int)
                                                             for v in value):
        raise ConfigError(f"{where}: {key.name} must be {what}, got {value!r}")
    return [_bounds(v, key, where, "three integers") for v in value]


def check_value(name: str, value, where: str):
    """The value of key `name` in its canonical type; ConfigError when it has the wrong type or range."""
    key = KEY[name]
    if value is None:
        if key.optional:
            return None
        raise ConfigError(f"{where}: {name} must not be empty (null); expected {_expected(key)}")
    if key.kind == "int":
        return _int(value, key, where)
    if key.kind == "float":
        return _bounds(float(_number(value, key, where)), key, where, "a number")
    if key.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false, got {value!r} ({type(value).__name__})")
        return value
    if key.kind == "str":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: {name} must be a text (a path), got {value!r} ({type(value).__name__})")
        return value
    if key.kind == "choice":
        if value not in key.choices:
            raise ConfigError(f"{where}: {name} must be one of {', '.join(key.choices)}, got {value!r}")
        return value
    if key.kind == "int3":
        return _int3(value, key, where)
    if key.kind == "floats":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: {name} must be a non-empty list of numbers like [0.001, 0.002], "
                              f"got {value!r}")
        return [_bounds(float(_number(v, key, where)), key, where, "numbers") for v in value]
    if key.kind == "int3s":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: {name} must be a non-empty list of three-integer lists like "
                              f"[[2, 2, 2], [3, 3, 3]], got {value!r}")
        return [_int3(v, key, where) for v in value]
    raise AssertionError(key.kind)


def _expected(key: Key) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a text",
            "choice": "one of " + ", ".join(key.choices), "int3": "three integers",
            "floats": "a list of numbers", "int3s": "a list of three-integer lists"}[key.kind]


def _unique_key_loader():
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the
    last one silently, so `lr: 0.1` further down a file would quietly win)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (lines {seen[key] + 1} and "
                        f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _read_yaml(text: str, where: str):
    import yaml

    try:
        return yaml.load(text, Loader=_unique_key_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at} ({problem}); expected `key: value` lines") from None


def read_file(path: str | os.PathLike) -> dict:
    """The mapping in a YAML config file (unchecked)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no file {path}; expected a YAML config such as configs/cifar100.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config: cannot read {path} ({exc}); expected a YAML text file") from None
    raw = _read_yaml(text, str(path))
    if raw is None:
        raise ConfigError(f"{path}: the file is empty (or only comments); expected `key: value` lines, e.g. a "
                          "copy of configs/cifar10.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: holds a {type(raw).__name__}, expected a mapping of `key: value` lines")
    return raw


def parse_overrides(tokens: list[str]) -> dict:
    """`--key value`, `--key=value` and `key=value` tokens -> {key: value read as YAML}."""
    overrides, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--"):
            body = token[2:]
            if "=" in body:
                name, text = body.split("=", 1)
            elif i + 1 < len(tokens):
                name, text = body, tokens[i + 1]
                i += 1
            else:
                raise ConfigError(f"command line: {token} has no value; expected `{token} VALUE` or `{token}=VALUE`")
        elif "=" in token:
            name, text = token.split("=", 1)
        else:
            raise ConfigError(f"command line: unexpected {token!r}; overrides are `--key value` or `key=value`")
        name = name.replace("-", "_")
        overrides[name] = _read_yaml(text, f"command line ({name})") if text.strip() else None
        i += 1
    return overrides


def resolve(raw: dict, overrides: dict | None = None, source: str = "config", check_data: bool = True) -> dict:
    """Defaults <- file <- overrides, every key checked; the data folder must exist when check_data."""
    resolved, given = defaults(), {}
    for layer, where in ((raw, source), (overrides or {}, "command line")):
        for name, value in layer.items():
            if not isinstance(name, str) or name not in KEY:
                raise ConfigError(f"{where}: unknown key {name!r}{_suggest(str(name))}")
            given[name] = (value, where)  # an override replaces the file's value before it is checked
    for name, (value, where) in given.items():
        resolved[name] = check_value(name, value, where)

    def where(*names: str) -> str:  # blame the layer that gave the value: the command line wins over the file
        layers = {given[n][1] for n in names if n in given}
        return "command line" if "command line" in layers else source

    if resolved["output_dir"] is None:
        resolved["output_dir"] = str(env.outputs_dir() / RUNS_FOLDER)
    if resolved["lr_finder_min"] >= resolved["lr_finder_max"]:
        raise ConfigError(f"{where('lr_finder_min', 'lr_finder_max')}: lr_finder_min ({resolved['lr_finder_min']:g}) "
                          f"must be below lr_finder_max "
                          f"({resolved['lr_finder_max']:g})")
    if resolved["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{where('device')}: device is cuda but no CUDA GPU is visible; expected auto or cpu "
                              "here")
    if check_data:
        folder = data_folder(resolved)
        if not folder.is_dir():
            get = f"`{data.download_command(resolved['dataset'])}` (needs internet)"
            if resolved["dataset"] == "cifar10":
                get = f"`make data` (from ../shared/data) or {get}"
            raise ConfigError(f"{where('data_dir', 'dataset')}: data_dir: no folder {folder} for dataset "
                              f"{resolved['dataset']}; expected data_dir (or ${env.DATA_ENV}) to name the folder "
                              f"holding {folder.name}/; get it with {get}")
    return resolved


def load(path: str | os.PathLike, overrides: dict | None = None, check_data: bool = True) -> dict:
    return resolve(read_file(path), overrides, str(path), check_data)


def data_folder(config: dict) -> Path:
    return env.data_dir(config["data_dir"]) / data.LAYOUTS[config["dataset"]].folder


def num_classes(config: dict) -> int:
    return data.LAYOUTS[config["dataset"]].num_classes


def model_arch(config: dict, model_name: str | None = None) -> dict:
    """Architecture parameters the config gives `model_name` (its blocks and widths for resnet_custom)."""
    name = model_name or config["model"]
    return {"blocks": list(config["blocks"]), "widths": list(config["widths"])} if name == "resnet_custom" else {}


def train_config(config: dict, **changes) -> "engine.TrainConfig":
    """The engine's TrainConfig for this config; `lr` is the step size used, so base_batch = batch_size."""
    values = dict(epochs=config["max_epochs"], batch_size=config["batch_size"], lr=config["lr"],
                  base_batch=config["batch_size"], optimizer=config["optimizer"], momentum=config["momentum"],
                  nesterov=config["nesterov"], weight_decay=config["weight_decay"], schedule=config["schedule"],
                  warmup_epochs=config["warmup_epochs"], label_smoothing=config["label_smoothing"],
                  cutout=config["cutout"], bf16=config["bf16"], channels_last=config["channels_last"],
                  seed=config["seed"], checkpoint_every=config["checkpoint_every"])
    values.update(changes)
    return engine.TrainConfig(**values)


def to_yaml(config: dict, header: str = "") -> str:
    """The resolved config as YAML, keys in schema order, each with its help as a comment."""
    import yaml

    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for key in KEYS:
        value = yaml.safe_dump({key.name: config[key.name]}, default_flow_style=True, width=10_000).strip()
        value = value[1:-1] if value.startswith("{") else value  # flow style wraps the mapping in braces
        lines.append(f"{value}  # {key.help}")
    return "\n".join(lines) + "\n"
