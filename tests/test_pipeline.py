import json

import pandas as pd
import pytest

from fastcifar import bench, pipeline


def test_parse_params():
    assert pipeline.parse_params(["epochs=3", "bar=90.5", "name=resnet", "modes=['a', 'b']"]) == {
        "epochs": 3, "bar": 90.5, "name": "resnet", "modes": ["a", "b"]}
    with pytest.raises(ValueError, match="name=value"):
        pipeline.parse_params(["epochs"])


def test_every_notebook_is_found_and_has_a_parameters_cell():
    import nbformat

    paths = pipeline.notebook_paths()
    assert list(paths) == pipeline.NOTEBOOKS
    for path in paths.values():
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and 'profile: str = "auto"' in tagged[0].source, path.name


def test_unknown_notebook_is_refused():
    with pytest.raises(ValueError, match="unknown notebooks"):
        pipeline.run("smoke", ["J9"])


def test_smoke_run_of_j1(tmp_path, monkeypatch):
    """The pipeline executes J1 headlessly in the smoke profile and writes its evidence."""
    monkeypatch.setenv("FASTCIFAR_OUTPUTS", str(tmp_path))
    timings = pipeline.run("smoke", ["J1"], progress=False)
    assert [t["notebook"] for t in timings] == ["J1"]
    out = tmp_path / "smoke"
    assert (out / "notebooks" / "J1_benchmark.ipynb").is_file()
    rows = bench.read_results(out / "results_j1_validation.csv")
    assert list(rows.id) == ["V1", "V2", "V3"]
    assert (rows.profile == "smoke").all() and rows.device_name.str.startswith("cpu").all()
    assert (pd.to_numeric(rows.lat_p95_ms) > 0).all()
    summary = json.loads((out / "pipeline_J1.json").read_text())
    assert summary["profile"] == "smoke" and summary["notebooks"][0]["notebook"] == "J1"
