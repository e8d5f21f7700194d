"""Latency benchmark, zoo report and budget selection: small models, few iterations, real runtimes."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mobilenets.cli import app
from mobilenets.measure import latency
from mobilenets.measure.bench import bench, installed_backends
from mobilenets.measure.choose import Entry, frontier, parse_count, plot, select, zoo_report

runner = CliRunner()
FAST = dict(warmup=1, iters=4, rounds=2)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path / "home"))


def test_summarize_statistics():
    t = latency.summarize([1.0, 2.0, 3.0, 4.0, 100.0], batch=4)
    assert t.median_ms == 3.0 and t.min_ms == 1.0 and t.mean_ms == pytest.approx(22.0)
    assert t.p10_ms < t.median_ms < t.p90_ms and t.noisy and t.throughput == pytest.approx(4000 / 3)
    steady = latency.summarize([2.0] * 10)
    assert steady.spread == 0 and not steady.noisy


def test_interleaved_runs_every_runner_equally():
    calls = {"a": 0, "b": 0}

    def bump(k):
        calls[k] += 1
    out = latency.interleaved({"a": lambda: bump("a"), "b": lambda: bump("b")}, warmup=2, iters=7, rounds=3)
    assert calls == {"a": 9, "b": 9} and out["a"].runs == out["b"].runs == 7


def test_machine_info_and_floor():
    info = latency.machine_info()
    assert info["cores"] >= 1 and "torch" in info["versions"] and info["cpu"]
    assert latency.compute_floor_ms(32_000_000, ghz=1.0) == pytest.approx(2.0)  # 64 MFLOP / 32 GFLOP/s


def test_bench_ours_and_peers_on_installed_backends(tmp_path):
    use, _ = installed_backends(["torch", "onnxruntime"])
    report = bench(["mobilenet_v3_small"], backends=use, resolution=64, peers=True, **FAST)
    impls = {(r.impl, r.backend) for r in report.rows}
    assert {("mobilenets", b) for b in use} <= impls and ("torchvision", "torch") in impls
    row = report.best("mobilenet_v3_small", impl="mobilenets")
    assert row.timing.median_ms > 0 and row.macs > 0 and row.resolution == 64 and row.floor_ms > 0
    assert report.best("mobilenet_v3_small", impl="peer").impl == "torchvision"
    for r in report.rows:
        if r.impl == "mobilenets":
            assert (r.file is None) == (r.backend == "torch") and (r.file is None or Path(r.file).is_file())
    data = json.loads(report.write_json(tmp_path / "b.json").read_text())
    assert data["machine"]["cpu"] and data["settings"]["iters"] == 4 and len(data["rows"]) == len(report.rows)
    lines = report.write_csv(tmp_path / "b.csv").read_text().splitlines()
    assert lines[0].startswith("model,impl,backend") and len(lines) == len(report.rows) + 1


def test_bench_int8_and_cache_reuse():
    if not installed_backends(["onnxruntime"])[0]:
        pytest.skip("onnxruntime not installed")
    kw = dict(backends=["onnxruntime"], precisions=["fp32", "int8"], resolution=64, **FAST)
    first = bench(["mobilenet_v2_035"], **kw)
    assert {r.precision for r in first.rows} == {"fp32", "int8"}
    again = bench(["mobilenet_v2_035"], **kw)  # second time from the export cache
    assert len(again.rows) == 2


def _e(name, ms, top1, family="f"):
    return Entry(name, family, 1.0, 224, "fp32", "x", 1, 1, top1, ms, ms, 0.0, 1.0)


def test_frontier_keeps_only_unbeaten_entries():
    es = [_e("slow_good", 10, 75), _e("fast_bad", 1, 60), _e("mid", 5, 70), _e("dominated", 6, 65),
          _e("unknown", 0.5, None)]
    assert [e.name for e in frontier(es)] == ["fast_bad", "mid", "slow_good"]
    assert not es[3].frontier and es[2].frontier


def test_parse_count():
    assert parse_count("3M") == 3e6 and parse_count("500k") == 5e5 and parse_count(2e6) == 2e6
    with pytest.raises(Exception, match="not a count"):
        parse_count("lots")


def test_zoo_report_and_plot(tmp_path):
    rep = zoo_report(quick=True, backends=["torch"], models=["mobilenet_v3_small_075", "mobilenet_v1_025"])
    assert rep.backend == "torch" and {e.name for e in rep.entries} == {"mobilenet_v3_small_075", "mobilenet_v1_025"}
    assert any(e.frontier for e in rep.entries) and all(e.top1 for e in rep.entries)
    png = plot(rep.entries, tmp_path / "zoo.png", title="t")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_select_ranks_by_accuracy_within_budget():
    models = ["mobilenet_v3_small_075", "mobilenet_v1_025", "mobilenet_v2_035"]
    sel = select(1e6, backend="torch", precisions=["fp32"], models=models, max_params="3M")
    assert [e.top1 for e in sel.fits] == sorted((e.top1 for e in sel.fits), reverse=True)
    assert all(e.params <= 3e6 for e in sel.fits) and len(sel.fits) + len(sel.rejected) == 3
    tight = select(1e-6, backend="torch", precisions=["fp32"], models=models)
    assert not tight.fits and all("ms >" in why for _, why in tight.rejected)


@pytest.mark.parametrize("args, pattern", [
    (["bench", "mobilenet_v9"], "unknown model"),
    (["bench", "mobilenet_v2", "--backend", "tensorrt"], "unknown backend"),
    (["bench", "mobilenet_v2", "--iters", "0"], "iters must be >= 1"),
    (["bench", "mobilenet_v2", "--precision", "fp8"], "unknown precision"),
    (["select", "--budget-ms", "0"], "must be > 0"),
    (["select", "--budget-ms", "5", "--max-params", "many"], "not a count"),
])
def test_cli_bad_input_is_one_line_exit_2(args, pattern):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert pattern in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_bench_table_and_files(tmp_path):
    res = runner.invoke(app, ["bench", "mobilenet_v3_small_075", "--backend", "torch", "--resolution", "64",
                              "--warmup", "1", "--iters", "3", "--rounds", "1", "--peers", "--batch", "2",
                              "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")])
    assert res.exit_code == 0, res.output
    assert "mobilenet_v3_small_075" in res.stdout and "img/s" in res.stdout and "timm" in res.stdout
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["batch"] == 2


def test_session_runner_matches_run_in_every_layout(tmp_path):
    import numpy as np

    from mobilenets import create_model
    from mobilenets.deploy.export import export
    from mobilenets.deploy.runtimes import open_session
    model = create_model("mobilenet_v3_small", width=0.35, resolution=32, num_classes=5).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    sessions = [open_session(model)]
    if installed_backends(["onnxruntime"])[0]:
        sessions.append(open_session(export(model, "onnx", tmp_path / "nchw").path))
    if installed_backends(["litert"])[0]:
        sessions.append(open_session(export(model, "tflite", tmp_path / "nhwc", nhwc=True).path))
    for s in sessions:
        assert np.allclose(s.runner(x)(), s.run(x), atol=1e-5), s
