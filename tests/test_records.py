"""The typed hand-off records (fastcifar.series.records): written atomically, read back equal, and one
clear error, naming the file and what to run, when a file is missing, damaged or stale."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastcifar.core import atomic
from fastcifar.series import records as R

ROOT = Path(__file__).resolve().parents[1]

CHOICE = R.SweepChoice(point="w32", id="w32", mirror=False, threshold=85.0, met=True, val_accuracy=87.1,
                       lat_p95_ms=0.13)
POINT = R.FastNetPoint(point="w32", id="w32", mirror=False, threshold=85.0, met=True, val_accuracy=87.1,
                       lat_p95_ms=0.13, arch={"widths": [32, 64, 128], "convs": 2}, recipe="short", epochs=20.0,
                       checkpoint="outputs/checkpoints/fastnet_F1.pth", train_s=9.6, val_acc=86.6, val_acc_mirror=87.8)
EXAMPLES = {
    R.SweepRecord: R.SweepRecord(chosen={"F1": CHOICE},
                                 points={"w32": R.PointSetting({"widths": [32, 64, 128], "convs": 2}, "short", None)},
                                 floor_p95_ms=None, teacher_val=92.9, profile="smoke", device_name="cpu", torch="2",
                                 data_source="generated", git_commit="abc"),
    R.LightChoice: R.LightChoice(model="mobilenet_v3_small", checkpoint="outputs/checkpoints/m.pth", reason="fastest"),
    R.FastNetPoints: R.FastNetPoints(points={"F1": POINT, "F2": R.FastNetPoint(
        point="w128", id="w128+mirror", mirror=True, threshold=92.9, met=False, val_accuracy=92.7, lat_p95_ms=0.3,
        arch={"widths": [128, 512, 512], "convs": 3}, recipe="long", epochs=90.0)}),
    R.KeptVariants: R.KeptVariants(entries=[
        R.KeptVariant(id="B1", model_name="mobilenet_v3_small", checkpoint="outputs/checkpoints/m.pth",
                      spec={"precision": "fp32"}, variant="MobileNetV3-Small (CIFAR stem), FP32", accuracy=85.4,
                      val_accuracy=85.1),
        R.KeptVariant(id="F1", model_name="fastnet", checkpoint="outputs/checkpoints/f.pth",
                      spec={"precision": "fp16", "cuda_graph": True}, variant="FastNet 32/64/128 x2, FP16")]),
}
KINDS = list(EXAMPLES)


def one_line(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
def test_a_record_is_written_atomically_and_read_back_equal(cls, tmp_path):
    path = tmp_path / cls.FILE
    R.write(EXAMPLES[cls], path)
    assert R.read(cls, path) == EXAMPLES[cls]
    assert json.loads(path.read_text())["version"] == cls.VERSION
    assert next(iter(json.loads(path.read_text()))) == "version"  # the schema's number comes first
    assert atomic.stale_temporaries(tmp_path) == []


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
def test_a_missing_record_names_the_file_and_what_writes_it(cls, tmp_path):
    with pytest.raises(R.RecordError) as info:
        R.read(cls, tmp_path / cls.FILE)
    text = one_line(info.value)
    assert str(tmp_path / cls.FILE) in text and "no such file" in text and cls.MADE_BY in text


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("damage, said", [
    ("{not json", "not JSON"),
    ("\xff\xfe", "not UTF-8"),
])
def test_a_record_that_is_not_json_is_damaged(cls, damage, said, tmp_path):
    path = tmp_path / cls.FILE
    path.write_bytes(damage.encode("latin-1"))
    with pytest.raises(R.RecordError) as info:
        R.read(cls, path)
    text = one_line(info.value)
    assert "is damaged" in text and said in text and cls.MADE_BY in text


def _written(cls, tmp_path) -> tuple[Path, dict]:
    path = tmp_path / cls.FILE
    R.write(EXAMPLES[cls], path)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
def test_wrong_fields_are_damage_naming_the_field(cls, tmp_path):
    path, body = _written(cls, tmp_path)
    first = next(k for k in body if k != "version")
    cases = [
        ({**body, "surprise": 1}, "unknown field surprise"),
        ({k: v for k, v in body.items() if k != first}, f"field {first} is missing"),
        ({**body, first: 12345}, f"{first} must be"),
    ]
    for broken, said in cases:
        path.write_text(json.dumps(broken))
        with pytest.raises(R.RecordError) as info:
            R.read(cls, path)
        text = one_line(info.value)
        assert "is damaged" in text and said in text, text


def test_nested_fields_are_checked_by_their_annotations(tmp_path):
    path, body = _written(R.FastNetPoints, tmp_path)
    body["points"]["F1"]["mirror"] = "yes"
    path.write_text(json.dumps(body))
    with pytest.raises(R.RecordError, match=r"points\.F1\.mirror must be bool, found str"):
        R.read(R.FastNetPoints, path)
    path, body = _written(R.KeptVariants, tmp_path)
    body["entries"][1]["accuracy"] = True  # a bool is not a number here
    path.write_text(json.dumps(body))
    with pytest.raises(R.RecordError, match=r"entries\[1\]\.accuracy must be float"):
        R.read(R.KeptVariants, path)


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
def test_another_schema_version_is_stale(cls, tmp_path):
    path, body = _written(cls, tmp_path)
    path.write_text(json.dumps({**body, "version": cls.VERSION + 1}))
    with pytest.raises(R.RecordError) as info:
        R.read(cls, path)
    text = one_line(info.value)
    assert "is stale" in text and f"version {cls.VERSION + 1}" in text and cls.MADE_BY in text
    del body["version"]  # the shape before records were versioned
    path.write_text(json.dumps(body))
    with pytest.raises(R.RecordError, match="stale: it carries no schema version"):
        R.read(cls, path)


def test_the_old_list_shaped_variants_file_is_stale_not_a_crash(tmp_path):
    path = tmp_path / "variants.json"
    path.write_text(json.dumps([{"id": "B1"}]))
    with pytest.raises(R.RecordError, match="stale"):
        R.read(R.KeptVariants, path)


def test_a_failed_write_keeps_the_previous_record(tmp_path, monkeypatch):
    path = tmp_path / "b1.json"
    R.write(EXAMPLES[R.LightChoice], path)
    before = path.read_text()

    def stopped(tmp, target):  # the new file is written, then the run is stopped before it takes the old one's place
        assert Path(tmp).read_text().startswith("{")
        raise KeyboardInterrupt("stopped while writing")

    monkeypatch.setattr(atomic, "move_into_place", stopped)
    with pytest.raises(KeyboardInterrupt):
        R.write(R.LightChoice(model="other", checkpoint="x", reason="y"), path)
    assert path.read_text() == before and atomic.stale_temporaries(tmp_path) == []


def test_the_sweep_record_gives_each_choice_with_its_point():
    points = EXAMPLES[R.SweepRecord].chosen_points()
    assert points["F1"].arch == {"widths": [32, 64, 128], "convs": 2} and points["F1"].recipe == "short"
    assert points["F1"].mirror is False and not points["F1"].trained
    broken = R.SweepRecord(**{**EXAMPLES[R.SweepRecord].__dict__, "points": {}})
    with pytest.raises(R.RecordError, match="names point 'w32'"):
        broken.chosen_points()


@pytest.mark.parametrize("cls, relative", [(R.SweepRecord, "outputs/sweep/chosen.json"), (R.LightChoice, "outputs/b1.json"),
                                           (R.FastNetPoints, "outputs/fastnet.json"),
                                           (R.KeptVariants, "outputs/variants.json")])
def test_the_committed_records_are_readable(cls, relative):
    record = R.read(cls, ROOT / relative)
    assert record.version == cls.VERSION
