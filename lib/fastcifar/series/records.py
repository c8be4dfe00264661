"""The records the notebooks hand to each other, typed.

| file | record | written by | read by |
|---|---|---|---|
| `sweep/chosen.json` | `SweepRecord` | `python -m fastcifar.sweep` | J2 |
| `b1.json` | `LightChoice` | J2 | J4 |
| `fastnet.json` | `FastNetPoints` | J2 | J4 |
| `variants.json` | `KeptVariants` | J4 | J5 |

Each record is a frozen dataclass whose fields are documented where they are defined, and carries a
`version`: the number of its schema, raised whenever a field is added, removed or changes meaning.
`write(record, path)` writes it as JSON, atomically (core.atomic: a stopped run leaves the old file
or the new one, never half of one). `read(Record, path)` gives it back or raises RecordError, one
line naming the file, what is wrong with it and what to run to make it again:
- missing: no such file;
- damaged: not JSON, or fields missing, unknown or of the wrong type;
- stale: written with another version of the schema (or before records had one).

The fields are checked by their annotations (str, int, float, bool, dict, `X | None`, lists and
dicts of records); a number where text is expected, say, is "damaged", not a surprise three cells
later. What a field holds beyond its type (a Spec's settings, a checkpoint that exists) is checked
where it is used, with the file named in the error.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..core import atomic

J2 = "J2 (`python -m fastcifar.pipeline --only J2`)"
J4 = "J4 (`python -m fastcifar.pipeline --only J4`, after J2 and J3)"
SWEEP = "`python -m fastcifar.sweep` on a GPU (or pass J2 another record with `-p J2.sweep_record=PATH`)"


class RecordError(RuntimeError):
    """A hand-off record that is missing, damaged or stale; the message is one line saying what to run."""


class _Wrong(ValueError):
    """A field that does not fit its annotation (internal: becomes a RecordError naming the file)."""


# ---------------------------------------------------------------- the records

@dataclass(frozen=True)
class SweepChoice:
    """One of the sweep's choices (F1 or F2): the sweep row it picked."""

    point: str            # the point's name (series.sweep.POINTS), a key of SweepRecord.points
    id: str               # the sweep row: the point, with "+mirror" when the mirror is part of the call
    mirror: bool          # flip test-time augmentation inside the call
    threshold: float      # validation accuracy (%) the choice had to reach: the seed's bar, or the teacher's
    met: bool             # whether the row reached it (else: the most accurate row, flagged)
    val_accuracy: float   # the row's validation accuracy (%)
    lat_p95_ms: float     # the row's p95 latency at batch 1 on the sweep's timing path


@dataclass(frozen=True)
class PointSetting:
    """How a sweep point is built and trained."""

    arch: dict            # FastNet's architecture: {"widths": [a, b, c], "convs": 2 or 3}
    recipe: str           # a name in series.recipe.RECIPES
    epochs: float | None  # epochs of training; None: the recipe's own


@dataclass(frozen=True)
class FastNetPoint:
    """A FastNet point the sweep chose (F1, or F2's architecture), and what J2 measured when it trained it."""

    point: str            # the sweep's point name
    id: str               # the sweep row chosen (see SweepChoice.id)
    mirror: bool          # flip test-time augmentation inside the call
    threshold: float      # the sweep's bar for this choice (%)
    met: bool             # whether the sweep's row reached it
    val_accuracy: float   # the sweep row's validation accuracy (%)
    lat_p95_ms: float     # the sweep row's p95 latency (ms)
    arch: dict            # FastNet's architecture: {"widths": [a, b, c], "convs": 2 or 3}
    recipe: str           # a name in series.recipe.RECIPES
    epochs: float | None  # the sweep's epochs (None: the recipe's own); once trained in J2, J2's epochs
    checkpoint: str | None = None      # J2's checkpoint, relative to the project root; None: not trained in J2
    train_s: float | None = None       # J2's training time (s)
    val_acc: float | None = None       # J2's validation accuracy of the final weights (%)
    val_acc_mirror: float | None = None  # the same with the mirror (%)

    @property
    def trained(self) -> bool:
        return self.checkpoint is not None


@dataclass(frozen=True)
class SweepRecord:
    """sweep/chosen.json: the FastNet sweep's F1/F2 choice and how each point is built."""

    FILE: ClassVar[str] = "chosen.json"
    VERSION: ClassVar[int] = 1
    MADE_BY: ClassVar[str] = SWEEP

    chosen: dict[str, SweepChoice]      # "F1", "F2" (F2 only when the teacher's accuracy was known)
    points: dict[str, PointSetting]     # every point the sweep trained, by name
    floor_p95_ms: float | None          # the launch floor's p95 in that run (None without CUDA)
    teacher_val: float | None           # the teacher's validation accuracy F2 aimed at (%)
    profile: str                        # run profile: full, or smoke (CPU, not GPU latency)
    device_name: str
    torch: str
    data_source: str                    # data provenance (core.data.provenance)
    git_commit: str
    version: int = VERSION

    def chosen_points(self) -> dict[str, FastNetPoint]:
        """{"F1": FastNetPoint, "F2": ...}: each choice with how its point is built."""
        out = {}
        for key, c in self.chosen.items():
            if c.point not in self.points:
                raise RecordError(f"{self.FILE}: choice {key} names point {c.point!r}, which is not among its points "
                                  f"{sorted(self.points)}; run {self.MADE_BY} again")
            out[key] = FastNetPoint(**dataclasses.asdict(c), **dataclasses.asdict(self.points[c.point]))
        return out


@dataclass(frozen=True)
class LightChoice:
    """b1.json: the light model J2 keeps as row B1."""

    FILE: ClassVar[str] = "b1.json"
    VERSION: ClassVar[int] = 1
    MADE_BY: ClassVar[str] = J2

    model: str            # a name in core.models.MODELS
    checkpoint: str       # its best checkpoint (validation accuracy), relative to the project root
    reason: str           # the rule's verdict in one line (report.choose_light_model)
    version: int = VERSION


@dataclass(frozen=True)
class FastNetPoints:
    """fastnet.json: the FastNet points J2 passes on to J4 (F1 trained there; F2's architecture for D1)."""

    FILE: ClassVar[str] = "fastnet.json"
    VERSION: ClassVar[int] = 1
    MADE_BY: ClassVar[str] = J2

    points: dict[str, FastNetPoint]     # "F1", "F2"
    version: int = VERSION


@dataclass(frozen=True)
class KeptVariant:
    """One variant J4 keeps for J5: what to rebuild and how to call it, with the accuracies J4 measured."""

    id: str               # its row in the final table (B1, B2, O1-O4, D1, F1, F2, F1-mega, F2-mega)
    model_name: str       # the core.models name its checkpoint rebuilds
    checkpoint: str       # relative to the project root
    spec: dict            # optimize.Spec.to_dict(): how the variant is built and called
    variant: str          # the row's label: the model, then the Spec's label
    accuracy: float | None = None      # test accuracy J4 measured on this very build (%); None: J5 measures it
    val_accuracy: float | None = None  # validation accuracy, likewise (%)


@dataclass(frozen=True)
class KeptVariants:
    """variants.json: every variant J4 keeps (the seed's rules applied), in the final table's order."""

    FILE: ClassVar[str] = "variants.json"
    VERSION: ClassVar[int] = 1
    MADE_BY: ClassVar[str] = J4

    entries: list[KeptVariant]
    version: int = VERSION


RECORDS = (SweepRecord, LightChoice, FastNetPoints, KeptVariants)


# ---------------------------------------------------------------- writing and reading

def write(record, path: str | Path) -> Path:
    """Write `record` as JSON (its version first), atomically."""
    body = dataclasses.asdict(record)
    body = {"version": body.pop("version"), **body}
    return atomic.write_text(path, json.dumps(body, indent=2) + "\n")


def read(cls, path: str | Path):
    """The record of type `cls` stored at `path`; RecordError (one line) when it is missing, damaged or stale."""
    path = Path(path)
    again = f"run {cls.MADE_BY} to write it again"
    if not path.is_file():
        raise RecordError(f"{path}: no such file; expected {cls.__doc__.split(':')[0]} written by {cls.MADE_BY}: "
                          "run that first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RecordError(f"{path} is damaged (not UTF-8 text); {again}") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path} is damaged (not JSON: {exc.msg} at line {exc.lineno}); {again}") from None
    found = data.get("version") if isinstance(data, dict) else None
    if found is None:
        raise RecordError(f"{path} is stale: it carries no schema version (written before the records were "
                          f"versioned); this code reads version {cls.VERSION}; {again}")
    if found != cls.VERSION:
        raise RecordError(f"{path} is stale: schema version {found!r}, this code reads version {cls.VERSION} "
                          f"(written by another commit); {again}")
    try:
        return _record(cls, data, "")
    except _Wrong as exc:
        raise RecordError(f"{path} is damaged ({exc}); {again}") from None


def _record(cls, data, where: str):
    if not isinstance(data, dict):
        raise _Wrong(f"{where or 'the file'} must be an object, found {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _Wrong(f"unknown field {_at(where, unknown[0])}; expected only {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Wrong(f"field {_at(where, name)} is missing")
            continue
        values[name] = _value(hints[name], data[name], _at(where, name))
    return cls(**values)


def _at(where: str, name) -> str:
    return f"{where}.{name}" if where else str(name)


def _value(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, value, where)
    if dataclasses.is_dataclass(hint):
        return _record(hint, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise _Wrong(f"{where} must be an object, found {type(value).__name__}")
        return {k: _value(args[1], v, _at(where, k)) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise _Wrong(f"{where} must be a list, found {type(value).__name__}")
        return [_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    ok = {float: isinstance(value, (int, float)) and not isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str),
          dict: isinstance(value, dict), list: isinstance(value, list)}.get(hint)
    if ok is None:
        raise TypeError(f"records: no check for the annotation {hint!r} of {where}")
    if not ok:
        raise _Wrong(f"{where} must be {hint.__name__}, found {type(value).__name__} {value!r:.40}")
    return float(value) if hint is float else value
