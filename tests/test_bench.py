"""fastcifar.core.bench on the CPU with a fake clock: statistics, the benchmark loop, stability, results CSVs."""
from __future__ import annotations


import functools

import numpy as np
import pandas as pd
import pytest
import torch

from fastcifar.core import bench
from fastcifar.core.bench import RESULT_COLUMNS, BenchResult, LatencyStats


# ---------------------------------------------------------------- LatencyStats


def test_latency_stats_known_samples():
    samples = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 7.0, 8.0, 9.0]
    s = LatencyStats.of(samples)
    a = np.array(samples)
    assert s.n == 10
    assert s.mean == pytest.approx(5.5)
    assert s.p50 == pytest.approx(5.5)
    assert s.p95 == pytest.approx(np.percentile(a, 95)) == pytest.approx(9.55)
    assert s.p99 == pytest.approx(np.percentile(a, 99))
    assert s.min == 1.0 and s.max == 10.0
    assert s.std == pytest.approx(np.std(a, ddof=1))
    assert all(isinstance(v, float) for v in (s.mean, s.p50, s.p95, s.p99, s.std, s.min, s.max))


def test_latency_stats_from_generator_and_single_sample():
    s = LatencyStats.of(x for x in [2.5])
    assert (s.mean, s.p50, s.p95, s.min, s.max, s.std, s.n) == (2.5, 2.5, 2.5, 2.5, 2.5, 0.0, 1)


def test_latency_stats_percentiles_on_many_samples():
    a = np.random.default_rng(0).lognormal(0, 0.5, 1001)
    s = LatencyStats.of(a)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    assert (s.p50, s.p95, s.p99) == pytest.approx((p50, p95, p99))
    assert s.min <= s.p50 <= s.p95 <= s.p99 <= s.max


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_latency_stats_rejects_empty_and_non_finite(bad):
    with pytest.raises(ValueError):
        LatencyStats.of(bad)


# ---------------------------------------------------------------- benchmark_latency


class Probe(torch.nn.Module):
    """Tiny model recording, per call, whether it ran in eval / inference mode / with grad."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)
        self.calls = 0
        self.seen = []

    def forward(self, x):
        self.calls += 1
        self.seen.append((self.training, torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        return self.lin(x)


def fake_clock(deltas_s, start=100.0):
    """A timer returning, per measured call, t0 then t0 + delta (seconds)."""
    times = []
    t = start
    for d in deltas_s:
        times += [t, t + d]
        t += d + 1.0
    it = iter(times)
    return (lambda: next(it)), times


def test_benchmark_with_fake_clock():
    model = Probe()
    assert model.training
    deltas = [0.001, 0.002, 0.0015, 0.004, 0.003]
    timer, _ = fake_clock(deltas)
    syncs = []
    res = bench.benchmark_latency(model, torch.zeros(1, 4), warmup_iters=3, measure_iters=5, timer=timer,
                                  sync=lambda: syncs.append(1), events=False)
    assert model.calls == 3 + 5
    assert len(syncs) == 1 + 5  # after the warm-up, then after every measured call
    np.testing.assert_allclose(res.host_samples_ms, [1.0, 2.0, 1.5, 4.0, 3.0], rtol=1e-9, atol=1e-9)
    assert res.host.mean == pytest.approx(2.3)
    assert res.host.p95 == pytest.approx(np.percentile([1.0, 2.0, 1.5, 4.0, 3.0], 95))
    assert res.host.min == pytest.approx(1.0) and res.host.max == pytest.approx(4.0)
    assert res.gpu is None and res.gpu_samples_ms is None
    assert (res.warmup_iters, res.measure_iters, res.batch) == (3, 5, 1)
    assert not model.training
    assert all(s == (False, True, False) for s in model.seen)  # eval, inference mode, no grad
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()  # restored afterwards


def test_benchmark_uses_timer_only_inside_measured_loop():
    model = Probe()
    timer, times = fake_clock([0.01] * 4)
    bench.benchmark_latency(model, torch.zeros(2, 4), warmup_iters=10, measure_iters=4, timer=timer,
                            sync=lambda: None, events=False)
    with pytest.raises(StopIteration):  # exactly two readings per measured call were taken
        timer()


def test_benchmark_row_and_batch():
    timer, _ = fake_clock([0.002, 0.002])
    res = bench.benchmark_latency(Probe(), torch.zeros(3, 4), 0, 2, timer=timer, sync=lambda: None, events=False)
    row = res.row()
    assert set(row) <= set(RESULT_COLUMNS)
    assert row["batch"] == 3 and row["warmup_iters"] == 0 and row["measure_iters"] == 2
    assert row["lat_p95_ms"] == pytest.approx(2.0) and row["lat_std_ms"] == pytest.approx(0.0, abs=1e-9)
    assert not any(k.startswith("gpu_") for k in row)


def test_benchmark_plain_callable():
    calls = []
    timer, _ = fake_clock([0.005])
    res = bench.benchmark_latency(lambda t: calls.append(torch.is_inference_mode_enabled()), torch.zeros(1),
                                  2, 1, timer=timer, sync=lambda: None, events=False)
    assert calls == [True, True, True]
    assert res.host.p50 == pytest.approx(5.0)


def test_benchmark_real_clock_on_cpu_defaults():
    res = bench.benchmark_latency(Probe(), torch.zeros(1, 4), warmup_iters=1, measure_iters=3)
    assert res.gpu is None and res.host.n == 3 and res.host.min >= 0


def test_benchmark_rejects_non_tensor_inputs():
    model = Probe()
    with pytest.raises(TypeError, match="tensor"):
        bench.benchmark_latency(model, [[0.0] * 4], 1, 1, sync=lambda: None, events=False)
    assert model.calls == 0


@pytest.mark.parametrize("warmup, measure", [(1, 0), (-1, 5)])
def test_benchmark_rejects_bad_iteration_counts(warmup, measure):
    model = Probe()
    with pytest.raises(ValueError):
        bench.benchmark_latency(model, torch.zeros(1, 4), warmup, measure, sync=lambda: None, events=False)
    assert model.calls == 0


def test_benchmark_rejects_inputs_on_another_device():
    model = Probe()
    with pytest.raises(ValueError, match="device"):
        bench.benchmark_latency(model, torch.zeros(1, 4, device="meta"), 1, 1, sync=lambda: None, events=False)
    assert model.calls == 0


def test_launch_floor_needs_cuda():
    with pytest.raises(RuntimeError, match="CUDA"):
        bench.launch_floor("cpu")


# ---------------------------------------------------------------- stability


def result_with_p95(p95: float) -> BenchResult:
    samples = np.full(20, p95)
    return BenchResult(LatencyStats.of(samples), None, 0, 20, 1, samples)


def test_p95_spread():
    runs = [result_with_p95(v) for v in (2.0, 2.1, 2.4)]
    assert bench.p95_spread(runs) == pytest.approx(0.2)
    assert bench.p95_spread(runs[:1] * 2) == pytest.approx(0.0)


def test_p95_spread_needs_two_runs():
    with pytest.raises(ValueError):
        bench.p95_spread([result_with_p95(1.0)])
    with pytest.raises(ValueError):
        bench.stability_check([])


@pytest.mark.parametrize("second, stable", [(1.09, True), (1.05, True), (1.11, False), (1.5, False)])
def test_stability_check_around_ten_percent(second, stable):
    check = bench.stability_check([result_with_p95(1.0), result_with_p95(second), result_with_p95(1.02)])
    assert check["stable"] is stable
    assert check["runs"] == 3
    assert check["p95_ms"] == [1.0, round(second, 4), 1.02]
    assert check["p95_spread_pct"] == pytest.approx(100 * (second - 1.0), abs=0.01)
    assert check["tolerance_pct"] == pytest.approx(10.0)


def test_stability_check_custom_tolerance():
    runs = [result_with_p95(1.0), result_with_p95(1.03)]
    assert bench.stability_check(runs, tolerance=0.05)["stable"] is True
    assert bench.stability_check(runs, tolerance=0.02)["stable"] is False


# ---------------------------------------------------------------- results CSV


def header(path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


def test_write_results_has_exactly_the_columns_in_order(tmp_path):
    path = bench.write_results(tmp_path / "sub" / "results.csv", [{"id": "J1-01", "accuracy": 91.5}])
    assert path == tmp_path / "sub" / "results.csv"
    assert header(path) == RESULT_COLUMNS
    df = bench.read_results(path)
    assert list(df.columns) == RESULT_COLUMNS and len(df) == 1
    assert df.loc[0, "id"] == "J1-01" and df.loc[0, "accuracy"] == pytest.approx(91.5)
    assert pd.isna(df.loc[0, "lat_p95_ms"])


def test_write_results_rejects_unknown_columns(tmp_path):
    path = tmp_path / "results.csv"
    with pytest.raises(ValueError, match="latency_p95"):
        bench.write_results(path, [{"id": "x", "latency_p95": 1.0}])
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_check_row_fills_missing_columns():
    row = bench.check_row({"id": "a", "lat_p95_ms": 1.5})
    assert list(row) == RESULT_COLUMNS
    assert row["id"] == "a" and row["lat_p95_ms"] == 1.5 and row["notes"] == ""


def test_write_results_replaces_rows_with_same_id(tmp_path):
    path = tmp_path / "results.csv"
    bench.write_results(path, [{"id": "a", "lat_p95_ms": 1.0, "run": 1}, {"id": "b", "lat_p95_ms": 2.0, "run": 1}])
    bench.write_results(path, [{"id": "a", "lat_p95_ms": 0.5, "run": 2}, {"id": "c", "lat_p95_ms": 3.0}])
    df = bench.read_results(path)
    assert sorted(df["id"]) == ["a", "b", "c"]
    assert df.loc[df["id"] == "a", "lat_p95_ms"].tolist() == [0.5]
    assert df.loc[df["id"] == "b", "lat_p95_ms"].tolist() == [2.0]
    assert header(path) == RESULT_COLUMNS


def test_write_results_replace_none_appends(tmp_path):
    path = tmp_path / "results.csv"
    bench.write_results(path, [{"id": "a", "run": 1, "lat_p95_ms": 1.0}])
    bench.write_results(path, [{"id": "a", "run": 2, "lat_p95_ms": 1.1}], replace=None)
    bench.write_results(path, [{"id": "a", "run": 3, "lat_p95_ms": 1.2}], replace=None)
    df = bench.read_results(path)
    assert df["id"].tolist() == ["a", "a", "a"]
    assert df["run"].astype(str).tolist() == ["1", "2", "3"]


def test_write_results_replace_file_drops_rows_of_an_earlier_run(tmp_path):
    path = tmp_path / "launch_floor.csv"
    bench.write_results(path, [{"id": "F1", "device_name": "old GPU"}, {"id": "L1", "device_name": "old GPU"}])
    bench.write_results(path, [{"id": "L1", "device_name": "new GPU"}, {"id": "L2", "device_name": "new GPU"}],
                        replace="file")
    df = bench.read_results(path)
    assert df["id"].tolist() == ["L1", "L2"]
    assert set(df["device_name"]) == {"new GPU"}


def test_write_results_replace_by_other_key(tmp_path):
    path = tmp_path / "results.csv"
    bench.write_results(path, [{"id": "a", "run": 1}, {"id": "a", "run": 2}], replace=None)
    bench.write_results(path, [{"id": "a", "run": 2, "notes": "redo"}], replace="run")
    df = bench.read_results(path)
    assert df["run"].astype(str).tolist() == ["1", "2"] and df["notes"].fillna("").tolist() == ["", "redo"]


def test_write_results_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    bench.write_results(path, [{"id": "a", "lat_p95_ms": 1.0}])
    before = path.read_bytes()
    real_to_csv = pd.DataFrame.to_csv
    calls = []

    def broken_to_csv(self, target=None, *args, **kwargs):
        calls.append(target)
        with open(target, "w") as f:  # half a file, then the crash
            f.write(",".join(RESULT_COLUMNS) + "\nb,par")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(OSError, match="disk full"):
        bench.write_results(path, [{"id": "b", "lat_p95_ms": 2.0}])
    monkeypatch.setattr(pd.DataFrame, "to_csv", real_to_csv)
    assert calls and str(calls[0]) != str(path)  # it wrote somewhere else first
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temp file left behind
    assert bench.read_results(path)["id"].tolist() == ["a"]


def test_read_results_rejects_csv_missing_columns(tmp_path):
    path = tmp_path / "other.csv"
    pd.DataFrame({"id": ["a"], "lat_p95_ms": [1.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="missing columns"):
        bench.read_results(path)
    with pytest.raises(ValueError):  # and write_results will not merge into it
        bench.write_results(path, [{"id": "b"}])
    assert pd.read_csv(path).columns.tolist() == ["id", "lat_p95_ms"]


def test_read_results_reorders_columns(tmp_path):
    path = tmp_path / "r.csv"
    cols = list(reversed(RESULT_COLUMNS)) + ["extra"]
    pd.DataFrame([{c: "" for c in cols} | {"id": "z"}]).to_csv(path, index=False)
    df = bench.read_results(path)
    assert list(df.columns) == RESULT_COLUMNS and df["id"].tolist() == ["z"]


def test_write_results_keeps_string_columns_verbatim(tmp_path):
    path = tmp_path / "results.csv"
    bench.write_results(path, [{"id": "007", "git_commit": "012345678901", "cuda": "12.10"}])
    bench.write_results(path, [{"id": "008"}])
    bench.write_results(path, [{"id": "007", "notes": "rerun", "git_commit": "012345678901", "cuda": "12.10"}])
    lines = path.read_text().splitlines()[1:]
    assert len(lines) == 2  # the rerun replaced its row
    assert any(line.startswith("007,") and "012345678901" in line and "12.10" in line for line in lines)


# ---------------------------------------------------------------- protocol text / formatting


def test_protocol_markdown_mentions_settings():
    md = bench.protocol_markdown(37, 1234, "NVIDIA H100 80GB HBM3", runs=4)
    assert "| warm-up | 37 untimed calls" in md
    assert "| measured calls | 1234 |" in md
    assert "a second loop of 1234 calls" in md
    assert "| device | NVIDIA H100 80GB HBM3 |" in md
    assert "4 runs" in md
    assert md.splitlines()[:2] == ["| setting | value |", "|---|---|"]
    assert all(line.startswith("|") and line.endswith("|") for line in md.strip().splitlines())




def test_missing_numbers_are_nan_and_read_back_as_numbers(tmp_path):
    import math

    import pandas as pd

    row = bench.check_row({"id": "a"})
    assert all(isinstance(row[c], float) and math.isnan(row[c]) for c in bench.NUMERIC_COLUMNS)
    assert row["notes"] == "" and row["compile_mode"] == ""
    path = bench.write_results(tmp_path / "r.csv", [{"id": "a", "lat_p95_ms": 1.0, "compile_s": float("nan")},
                                                    {"id": "b"}])
    df = bench.read_results(path)
    for column in bench.NUMERIC_COLUMNS:
        assert pd.api.types.is_numeric_dtype(df[column]), column
    assert df.lat_p95_ms.iloc[0] == 1.0 and np.isnan(df.compile_s.iloc[0])


def test_text_in_a_number_column_is_an_error(tmp_path):
    path = bench.write_results(tmp_path / "r.csv", [{"id": "a", "lat_p95_ms": 1.0}])
    path.write_text(path.read_text().replace(",1.0,", ",fast,"))
    with pytest.raises(ValueError, match="'lat_p95_ms' must hold numbers"):
        bench.read_results(path)


def _variant_on(device):
    from fastcifar.core import optimize

    module = torch.nn.Linear(4, 2).to(device)
    return optimize.Variant(optimize.Spec(), module, module, torch.float32, torch.contiguous_format)


def _closure_over(module):
    def call(x):
        return module(x)
    return call


@pytest.mark.parametrize("make", [
    lambda: _variant_on("meta"),  # an optimize.Variant
    lambda: _closure_over(torch.nn.Linear(4, 2).to("meta")),  # a plain function using a module
    lambda: functools.partial(torch.nn.functional.linear, weight=torch.zeros(2, 4, device="meta")),
    lambda: torch.nn.Linear(4, 2).to("meta").forward,  # a bound method
])
def test_device_check_sees_through_any_callable(make):
    model = make()
    with pytest.raises(ValueError, match="model is on meta"):
        bench.benchmark_latency(model, torch.zeros(1, 4), 1, 1, sync=lambda: None, events=False)


def test_device_check_accepts_a_callable_on_the_inputs_device():
    res = bench.benchmark_latency(_variant_on("cpu"), torch.zeros(1, 4), 1, 2, sync=lambda: None, events=False)
    assert res.host.n == 2


@pytest.mark.parametrize("warmup", [0, 2])
def test_a_callable_that_moves_data_between_devices_is_refused(warmup):
    with pytest.raises(ValueError, match="moves data between devices"):
        bench.benchmark_latency(lambda x: x.to("meta"), torch.zeros(1, 4), warmup, 2, sync=lambda: None, events=False)


def test_device_check_sees_through_torch_compile_of_a_function():
    module = torch.nn.Linear(4, 2).to("meta")
    compiled = torch.compile(_closure_over(module))  # not called: nothing is compiled here
    with pytest.raises(ValueError, match="model is on meta"):
        bench.benchmark_latency(compiled, torch.zeros(1, 4), 1, 1, sync=lambda: None, events=False)


def _upload_and_compute_on_meta():
    module = torch.nn.Linear(4, 2).to("meta")

    def call(image):  # what an end-to-end call does: upload, compute there, bring a host result back
        module(image.reshape(-1)[:4].float().to("meta"))
        return 3
    return call


def test_end_to_end_times_a_host_input_for_a_model_on_another_device_and_says_so():
    image = torch.zeros(32, 32, 3, dtype=torch.uint8)  # one HWC image on the host
    timer, _ = fake_clock([0.004, 0.004])
    res = bench.benchmark_latency(_upload_and_compute_on_meta(), image, 1, 2, timer=timer, sync=lambda: None,
                                  events=False, end_to_end="meta")
    assert res.end_to_end and res.batch == 1 and res.row()["batch"] == 1
    assert res.host.p95 == pytest.approx(4.0)
    # the same call without end_to_end is still refused: the option is the only way past the check
    with pytest.raises(ValueError, match="model is on meta"):
        bench.benchmark_latency(_upload_and_compute_on_meta(), image, 1, 2, sync=lambda: None, events=False)
    assert not bench.benchmark_latency(Probe(), torch.zeros(1, 4), 0, 1, sync=lambda: None, events=False).end_to_end


def test_end_to_end_needs_a_host_input_a_model_on_that_device_and_a_host_result():
    call = _upload_and_compute_on_meta()
    with pytest.raises(ValueError, match="on the host"):
        bench.benchmark_latency(call, torch.zeros(1, 4, device="meta"), 1, 1, sync=lambda: None, events=False,
                                end_to_end="meta")
    with pytest.raises(ValueError, match="model is on meta"):
        bench.benchmark_latency(call, torch.zeros(1, 4), 1, 1, sync=lambda: None, events=False, end_to_end="cpu")
    with pytest.raises(ValueError, match="moves data between devices"):  # a result left on the device
        bench.benchmark_latency(lambda x: x.to("meta"), torch.zeros(1, 4), 1, 1, sync=lambda: None, events=False,
                                end_to_end="meta")
