"""Latency benchmark, measurement cache, zoo report and budget selection: small models, few
iterations, real runtimes where the figure matters, fake sessions where the bookkeeping does."""
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mobilenets import VARIANTS, create_model
from mobilenets.cli import app
from mobilenets.measure import bench as bench_mod
from mobilenets.measure import choose, latency
from mobilenets.measure.bench import Bench, bench, installed_backends
from mobilenets.measure.cache import MeasurementCache, default_path
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
    assert latency.Timing.from_dict(t.to_dict()) == t


def test_interleaved_runs_every_runner_equally():
    calls = {"a": 0, "b": 0}

    def bump(k):
        calls[k] += 1
    out = latency.interleaved({"a": lambda: bump("a"), "b": lambda: bump("b")}, warmup=2, iters=7, rounds=3)
    assert calls == {"a": 9, "b": 9} and out["a"].runs == out["b"].runs == 7


def _clock(durations_s):
    """A fake clock whose consecutive (start, stop) readings are ``durations_s`` apart."""
    state = {"t": 0.0, "i": 0, "start": True}

    def clock():
        if not state["start"]:
            state["t"] += durations_s[state["i"] % len(durations_s)]
            state["i"] += 1
        state["start"] = not state["start"]
        return state["t"]
    return clock


def test_adaptive_stops_early_when_steady_and_runs_on_when_noisy():
    steady = latency.adaptive_times(lambda: None, warmup=0, min_runs=10, max_runs=200, clock=_clock([0.001]))
    assert len(steady) == 10 and steady[0] == pytest.approx(1.0)
    noisy = latency.adaptive_times(lambda: None, warmup=0, min_runs=10, max_runs=60, max_seconds=100,
                                   clock=_clock([0.001, 0.003, 0.002, 0.0005, 0.004]))
    assert len(noisy) == 60
    capped = latency.adaptive_times(lambda: None, warmup=0, min_runs=10, max_runs=1000, max_seconds=0.05,
                                    clock=_clock([0.001, 0.003, 0.002, 0.0005, 0.004]))
    assert 10 <= len(capped) < 100


def test_gemm_floor_and_machine_info():
    assert latency.gemm_floor_ms(32_000_000, 64e9) == pytest.approx(1.0)   # 64 MFLOP at 64 GFLOP/s
    assert latency.gemm_floor_ms(32_000_000, 64e9, threads=2) == pytest.approx(0.5)
    assert latency.gemm_floor_ms(None, 64e9) is None and latency.gemm_floor_ms(1, None) is None
    assert latency.gemm_flops(sizes=(64,), repeats=2) > 1e8
    info = latency.machine_info()
    assert info["cores"] >= 1 and "torch" in info["versions"] and info["cpu"]


class FakeSession:
    """Stands in for a runtime session: counts the timed calls, takes ``ms`` (for a fake timer)."""

    def __init__(self, ms=1.0, path=None):
        self.calls, self.ms, self.path = 0, ms, path

    def runner(self, x):
        def run():
            self.calls += 1
        run.ms = self.ms
        return run


@pytest.fixture
def fake_sessions(monkeypatch):
    """Every session bench/zoo/select opens is a FakeSession (latency: 1 ms per 30M MACs x a factor
    of the backend and precision: LiteRT the fastest fp32, OpenVINO the fastest int8); the GEMM is
    'measured' at 1 TFLOP/s, so its floor prunes nothing."""
    opened = []
    factor = {"fp32": {"torch": 1.0, "onnxruntime": 0.8, "openvino": 0.7, "litert": 0.5},
              "int8": {"onnxruntime": 0.4, "openvino": 0.2, "litert": 0.45}}

    def session(self, cell):
        macs, _ = cell.target.complexity()
        s = FakeSession(ms=macs / 30e6 * factor[cell.precision][cell.backend])
        opened.append((cell.target.label, cell.backend, cell.precision, s))
        return s

    def adaptive(run, *, batch=1, **kw):
        for _ in range(kw.get("min_runs", 10)):
            run()
        return latency.summarize([run.ms] * kw.get("min_runs", 10), batch)

    def interleaved(runners, *, warmup, iters, rounds, batch=1, on_round=None):
        for run in runners.values():
            for _ in range(warmup + iters):
                run()
        return {k: latency.summarize([run.ms] * iters, batch) for k, run in runners.items()}

    monkeypatch.setattr(Bench, "session", session)
    monkeypatch.setattr(latency, "adaptive", adaptive)
    monkeypatch.setattr(latency, "interleaved", interleaved)
    monkeypatch.setattr(latency, "gemm_flops", lambda **kw: 1e12)
    return opened


def test_second_bench_reads_the_cache_and_fresh_measures_again(fake_sessions):
    kw = dict(backends=["torch"], resolution=32, **FAST)
    first = bench(["mobilenet_v3_small_075"], **kw)
    assert len(fake_sessions) == 1 and fake_sessions[0][3].calls == 1 + 4
    assert not first.rows[0].cached and first.rows[0].measured_at
    again = bench(["mobilenet_v3_small_075"], **kw)
    assert len(fake_sessions) == 1                                  # nothing opened, nothing timed
    row = again.rows[0]
    assert row.cached and row.measured_at == first.rows[0].measured_at
    assert row.timing == first.rows[0].timing and row.macs == first.rows[0].macs
    assert json.loads(json.dumps(again.to_dict()))["rows"][0]["cached"] is True
    fresh = bench(["mobilenet_v3_small_075"], fresh=True, **kw)
    assert len(fake_sessions) == 2 and not fresh.rows[0].cached
    data = json.loads(default_path().read_text())
    assert data["format"] == 1 and len([r for r in data["records"].values() if r["timing"]]) == 1


@pytest.mark.parametrize("change", [dict(threads=2), dict(batch=2), dict(resolution=64),
                                    dict(models=["mobilenet_v3_small_100"])])
def test_cache_key_covers_what_the_figure_depends_on(fake_sessions, change):
    kw = dict(models=["mobilenet_v3_small_075"], backends=["torch"], resolution=32, threads=1, batch=1, **FAST)
    bench(**kw)
    bench(**{**kw, **change})
    assert len(fake_sessions) == 2


def test_cache_wants_at_least_the_runs_asked_for(fake_sessions):
    bench(["mobilenet_v1_025"], backends=["torch"], resolution=32, warmup=0, iters=3, rounds=1)
    bench(["mobilenet_v1_025"], backends=["torch"], resolution=32, warmup=0, iters=3, rounds=1)
    assert len(fake_sessions) == 1
    bench(["mobilenet_v1_025"], backends=["torch"], resolution=32, warmup=0, iters=20, rounds=1)
    assert len(fake_sessions) == 2


def test_damaged_cache_is_ignored_and_replaced(fake_sessions):
    default_path().parent.mkdir(parents=True)
    default_path().write_text("{not json")
    bench(["mobilenet_v1_025"], backends=["torch"], resolution=32, **FAST)
    assert json.loads(default_path().read_text())["format"] == 1
    whats = sorted(r.key["what"] for r in MeasurementCache().records.values())
    assert whats == ["gemm_fp32", "latency", "profile"]


def test_cache_merges_records_of_another_writer(tmp_path):
    t = latency.summarize([1.0, 2.0])
    a, b = MeasurementCache(tmp_path / "m.json"), MeasurementCache(tmp_path / "m.json")
    a.store({"k": 1}, t)
    a.save()
    b.store({"k": 2}, t)
    b.save()
    both = MeasurementCache(tmp_path / "m.json")
    assert both.lookup({"k": 1}) and both.lookup({"k": 2}) and not MeasurementCache(tmp_path / "m.json",
                                                                                 fresh=True).lookup({"k": 1})


def test_floor_is_the_measured_gemm_rate(monkeypatch):
    monkeypatch.setattr(latency, "gemm_flops", lambda **kw: 1e11)
    report = bench(["mobilenet_v3_small_075"], backends=["torch"], resolution=32, **FAST)
    row = report.rows[0]
    assert row.floor_ms == pytest.approx(row.macs * 2 / 1e11 * 1e3) and report.settings["gemm_gflops"] == 100


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
    data = json.loads(report.write(tmp_path / "b.json").read_text())
    assert data["machine"]["cpu"] and data["settings"]["iters"] == 4 and len(data["rows"]) == len(report.rows)
    lines = report.write(tmp_path / "b.csv").read_text().splitlines()
    assert lines[0].startswith("model,impl,backend") and len(lines) == len(report.rows) + 1


def test_bench_int8_and_export_reuse():
    if not installed_backends(["onnxruntime"])[0]:
        pytest.skip("onnxruntime not installed")
    kw = dict(backends=["onnxruntime"], precisions=["fp32", "int8"], resolution=64, **FAST)
    first = bench(["mobilenet_v2_035"], **kw)
    assert {r.precision for r in first.rows} == {"fp32", "int8"}
    again = bench(["mobilenet_v2_035"], fresh=True, **kw)  # measured again, on the cached exports
    assert len(again.rows) == 2 and not any(r.cached for r in again.rows)
    assert {r.file for r in again.rows} == {r.file for r in first.rows}


def test_int8_timing_exports_quantize_the_cached_fp32_file(monkeypatch):
    """An int8 ONNX/OpenVINO timing export is the fp32 file quantized (``deploy.quantize.quantize_file``):
    the torch exporter runs once per format, never for int8; OpenVINO int8 reuses a cached fp32 ONNX file."""
    exported, quantized = [], []

    def fake_export(model, fmt, out_dir, **kw):
        path = Path(out_dir) / f"m-{fmt}-fp32{bench_mod.EXPORT_SUFFIX[fmt]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("fp32")
        path.with_suffix(".json").write_text(json.dumps({"precision": "fp32", "export_format": fmt}))
        exported.append((fmt, kw.get("int8", False)))
        return type("Result", (), {"path": path})()

    def fake_quantize(fmt, src, dst, calib, **kw):
        assert Path(src).read_text() == "fp32" and calib.dtype == np.float32
        Path(dst).write_text("int8")
        if fmt == "openvino":
            Path(dst).with_suffix(".bin").write_text("w")
        quantized.append((fmt, Path(src).suffix))
        return Path(dst)

    monkeypatch.setattr(bench_mod, "export", fake_export)
    monkeypatch.setattr(bench_mod, "quantize_file", fake_quantize)
    b = Bench()
    target = bench_mod.resolve_target("mobilenet_v2_035", 32)
    ort8 = b.export_file(b.cell(target, "onnxruntime", "int8"))
    assert exported == [("onnx", False)] and quantized == [("onnx", ".onnx")]
    assert ort8.read_text() == "int8" and json.loads(ort8.with_suffix(".json").read_text())["precision"] == "int8"
    ov8 = b.export_file(b.cell(target, "openvino", "int8"))   # from the cached fp32 ONNX: no export
    assert exported == [("onnx", False)] and quantized[-1] == ("openvino", ".onnx")
    assert ov8.suffix == ".xml" and ov8.with_suffix(".bin").is_file()
    assert b.export_file(b.cell(target, "onnxruntime", "int8")) == ort8 and len(quantized) == 2  # cached
    assert b.export_file(b.cell(target, "onnxruntime", "fp32")).read_text() == "fp32" and len(exported) == 1


def test_bench_takes_checkpoints_run_dirs_and_exported_files(tmp_path):
    from mobilenets.weights import save_checkpoint
    model = create_model("mobilenet_v3_small", width=0.35, resolution=32, num_classes=5)
    ckpt = save_checkpoint(tmp_path / "run" / "best.safetensors", model)
    targets = [str(ckpt), str(tmp_path / "run")]
    if installed_backends(["onnxruntime"])[0]:
        from mobilenets.deploy.export import export
        targets.append(str(export(model, "onnx", tmp_path / "exp", verify=False).path))
    report = bench(targets, backends=["torch", "onnxruntime"] if len(targets) == 3 else ["torch"], **FAST)
    by_model = {}
    for r in report.rows:
        by_model.setdefault(r.model, set()).add(r.backend)
        assert r.resolution == 32 and r.macs > 0
    assert by_model[str(ckpt)] >= {"torch"} and by_model[str(tmp_path / "run")] >= {"torch"}
    if len(targets) == 3:
        assert by_model[targets[2]] == {"onnxruntime"}  # a file runs as it is, on its runtime
        row = next(r for r in report.rows if r.model == targets[2])
        assert row.file == targets[2]


def test_bench_file_without_sidecar_runs_at_its_declared_shape(tmp_path):
    if not installed_backends(["onnxruntime"])[0]:
        pytest.skip("onnxruntime not installed")
    from mobilenets.deploy.export import export
    model = create_model("mobilenet_v3_small", width=0.35, resolution=48, num_classes=5)
    path = export(model, "onnx", tmp_path / "bare", verify=False).path
    path.with_suffix(".json").unlink()
    report = bench([str(path)], **FAST)
    assert [(r.backend, r.resolution, r.macs) for r in report.rows] == [("onnxruntime", 48, None)]


def _e(name, ms, top1, family="f"):
    return Entry(name, family, 1.0, 224, "fp32", "x", 1, 1, top1, ms, ms, 0.0, 1.0)


def test_frontier_keeps_only_unbeaten_entries():
    es = [_e("slow_good", 10, 75), _e("fast_bad", 1, 60), _e("mid", 5, 70), _e("dominated", 6, 65),
          _e("unknown", 0.5, None), _e("unmeasured", None, 80)]
    assert [e.name for e in frontier(es)] == ["fast_bad", "mid", "slow_good"]
    assert not es[3].frontier and es[2].frontier and not es[5].frontier


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


def test_the_zoo_has_every_family_and_charts_them_all(tmp_path):
    """Every family has a headline variant; the chart gives each series a colour (MobileNetV4's five
    models are one series: thirteen families would overrun a ten-colour palette)."""
    from mobilenets.measure.choose import HEADLINE
    from mobilenets.models import FAMILIES, VARIANTS

    assert {VARIANTS[n].family for n in HEADLINE} == set(FAMILIES)
    entries = [Entry(n, VARIANTS[n].family, VARIANTS[n].width, 224, "fp32", "torch", 10**6, 10**8 * (i + 1),
                     VARIANTS[n].top1, 1.0 + i, None, None, None) for i, n in enumerate(HEADLINE)]
    assert plot(entries, tmp_path / "zoo.png", title="t").read_bytes()[:4] == b"\x89PNG"


def test_zoo_quick_considers_every_installed_runtime(fake_sessions, monkeypatch):
    monkeypatch.setattr(bench_mod, "runtime_versions",
                        lambda: {"torch": "1", "compile": "1", "onnxruntime": "1", "openvino": "1", "litert": "1"})
    rep = zoo_report(quick=True, models=["mobilenet_v1_025"])
    assert rep.backend == "litert"  # the fastest of the fake runtimes
    probed = {(m, b) for m, b, _, _ in fake_sessions if m == choose.PROBE}
    assert probed == {(choose.PROBE, b) for b in ("torch", "onnxruntime", "openvino", "litert")}
    again = zoo_report(quick=True, models=["mobilenet_v1_025"])
    assert again.backend == "litert" and all(e.cached and e.measured_at for e in again.entries)
    assert len(fake_sessions) == 5


def test_select_ranks_by_accuracy_within_budget():
    models = ["mobilenet_v3_small_075", "mobilenet_v1_025", "mobilenet_v2_035"]
    sel = select(1e6, backend="torch", precisions=["fp32"], models=models, max_params="3M")
    assert [e.top1 for e in sel.fits] == sorted((e.top1 for e in sel.fits), reverse=True)
    assert all(e.params <= 3e6 for e in sel.fits) and len(sel.fits) + len(sel.rejected) == 3
    tight = select(1e-6, backend="torch", precisions=["fp32"], models=models)
    assert not tight.fits and not tight.rejected and len(tight.unmeasured) == 3
    assert all("GEMM floor" in why for _, why in tight.unmeasured)


def _reasons(sel):
    return {(e.name, e.precision): why for e, why in sel.unmeasured}


def test_select_measures_only_what_can_still_fit(fake_sessions):
    if not installed_backends(["onnxruntime"])[0]:
        pytest.skip("onnxruntime not installed")
    # fake fp32 on onnxruntime: v2_100 8.0 ms, v2_075 5.6 ms, v2_050 2.6 ms, v2_035 1.6 ms; int8 half
    models = ["mobilenet_v2_100", "mobilenet_v2_075", "mobilenet_v2_050", "mobilenet_v2_035"]
    sel = select(4.2, backend="onnxruntime", models=models)
    measured = [(m, p) for m, _, p, _ in fake_sessions]
    assert measured == [("mobilenet_v2_100", "fp32"), ("mobilenet_v2_100", "int8"), ("mobilenet_v2_075", "int8"),
                        ("mobilenet_v2_050", "fp32"), ("mobilenet_v2_035", "fp32")]
    why = _reasons(sel)
    # v2_075 fp32: at least 8.0 ms x 209/300 = 5.6 ms > 1.25 x 4.2 ms, from the larger v2_100
    assert "mobilenet_v2_100 fp32 runs 8.0" in why[("mobilenet_v2_075", "fp32")]
    assert "fp32 version fits" in why[("mobilenet_v2_050", "int8")]
    assert [(e.name, e.precision) for e in sel.fits] == [("mobilenet_v2_100", "int8"), ("mobilenet_v2_075", "int8"),
                                                         ("mobilenet_v2_050", "fp32"), ("mobilenet_v2_035", "fp32")]
    assert [(e.name, e.precision) for e, _ in sel.rejected] == [("mobilenet_v2_100", "fp32")]
    # with a top, the search stops once that many entries fit
    top = select(4.2, backend="onnxruntime", models=models, top=1, fresh=True)
    assert [(e.name, e.precision) for e in top.fits] == [("mobilenet_v2_100", "int8")]
    assert "higher published top-1 fit already" in _reasons(top)[("mobilenet_v2_035", "fp32")]
    # the same search again reads every figure from the cache
    n = len(fake_sessions)
    again = select(4.2, backend="onnxruntime", models=models)
    assert len(fake_sessions) == n and all(e.cached for e in again.fits)
    assert [(e.name, e.precision) for e in again.fits] == [(e.name, e.precision) for e in sel.fits]


def test_select_int8_only_within_reach(fake_sessions):
    if not installed_backends(["onnxruntime"])[0]:
        pytest.skip("onnxruntime not installed")
    sel = select(1.0, backend="onnxruntime", models=["mobilenet_v2_100"])   # fp32 8 ms > 4 x 1 ms
    assert [(m, p) for m, _, p, _ in fake_sessions] == [("mobilenet_v2_100", "fp32")]
    assert "int8 cannot reach" in _reasons(sel)[("mobilenet_v2_100", "int8")]


def test_select_measures_each_precision_on_its_fastest_runtime(fake_sessions, monkeypatch):
    monkeypatch.setattr(bench_mod, "runtime_versions",
                        lambda: {"torch": "1", "compile": "1", "onnxruntime": "1", "openvino": "1", "litert": "1"})
    sel = select(2.5, models=["mobilenet_v2_100"])   # fp32: 5 ms on LiteRT; int8: 2 ms on OpenVINO
    assert sel.backends == {"fp32": "litert", "int8": "openvino"} and sel.backend == "litert (fp32), openvino (int8)"
    probes = sorted((b, p) for m, b, p, _ in fake_sessions if m == choose.PROBE)
    # LiteRT int8 (a slow PT2E conversion) is left out of the default search, and the output says so
    assert probes == [("litert", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                      ("openvino", "fp32"), ("openvino", "int8"), ("torch", "fp32")]
    assert len(sel.notes) == 1 and "int8 on litert not searched" in sel.notes[0] and "--backend litert" in sel.notes[0]
    assert sel.to_dict()["notes"] == sel.notes
    assert [(e.backend, e.precision) for e, _ in sel.rejected] == [("litert", "fp32")]
    assert [(e.backend, e.precision) for e in sel.fits] == [("openvino", "int8")]
    assert all(e.cached for e in sel.fits + [e for e, _ in sel.rejected])  # the probes measured them already
    # once LiteRT int8 has a figure for the probe in the cache (--backend litert), it competes at no cost
    select(2.5, backend="litert", models=[choose.PROBE])
    n = len(fake_sessions)
    again = select(2.5, models=["mobilenet_v2_100"])
    assert not again.notes and again.backends == sel.backends
    assert [(b, p) for _, b, p, _ in fake_sessions[n:]] == [("litert", "int8")]   # timed longer, not converted


def test_int8_reach_is_learned_per_family(monkeypatch):
    monkeypatch.setattr(latency, "gemm_flops", lambda **kw: 1e12)
    search = choose._Search(Bench(), {"fp32": "onnxruntime", "int8": "onnxruntime"}, 1.0, None, None, None)
    v = VARIANTS["mobilenet_v2_100"]
    cand = choose._Candidate(bench_mod.resolve_target(v.name), v, "int8", 300_000_000, 3_470_000)

    def measured(name, precision, ms, macs, family="mobilenet_v2"):
        search.measured[(name, precision)] = Entry(name, family, 1.0, 224, precision, "onnxruntime", 1, macs, 70.0,
                                                   ms, ms, 0.0, 1.0)
    measured("mobilenet_v2_100", "fp32", 3.0, 300_000_000)
    assert search.int8_reach("mobilenet_v2") == 4.0 and search.prune(cand) is None   # 3 ms <= 4 x 1 ms
    measured("mobilenet_v3_large_100", "fp32", 4.0, 217_000_000, "mobilenet_v3_large")
    measured("mobilenet_v3_large_100", "int8", 1.0, 217_000_000, "mobilenet_v3_large")
    assert search.int8_reach("mobilenet_v2") == 4.0 and search.prune(cand) is None   # another family's 4x
    measured("mobilenet_v2_075", "fp32", 2.0, 209_000_000)
    measured("mobilenet_v2_075", "int8", 1.0, 209_000_000)                            # 2x measured in V2
    assert search.int8_reach("mobilenet_v2") == pytest.approx(2.5)
    assert "int8 cannot reach" in search.prune(cand)


# A fake grid: every variant with a published top-1, a known latency per (variant, runtime, precision):
# a fixed overhead plus a cost per MAC (so a smaller variant of a family is never relatively faster, as
# the family bound assumes), times a factor of the runtime and precision; int8 is slower in V3 (hard-swish).
GRID = [n for n, v in VARIANTS.items() if v.top1 is not None]


def _grid_complexity(name):
    v = VARIANTS[name]
    return int((v.macs_m or 60) * 1e6), int(v.params_m * 1e6)


def _grid_ms(name, backend, precision, factors):
    macs, _ = _grid_complexity(name)
    family = VARIANTS[name].family
    ms = (0.3 + macs / 100e6) * factors[precision][backend] * factors["family"].get((family, precision), 1.0)
    return ms


@pytest.fixture
def fake_grid(monkeypatch):
    """Sessions, profiles and the GEMM rate faked: ``grid["opened"]`` lists every (model, backend,
    precision) opened (one export each); ``grid["factors"]`` may be changed before ``select``."""
    factors = {"fp32": {"torch": 1.5, "onnxruntime": 1.0, "openvino": 1.1, "litert": 0.98},
               "int8": {"onnxruntime": 0.6, "openvino": 0.5, "litert": 0.45},
               "family": {("mobilenet_v3_large", "int8"): 1.6, ("mobilenet_v3_small", "int8"): 1.6}}
    grid = {"opened": [], "factors": factors}

    def session(self, cell):
        grid["opened"].append((cell.target.label, cell.backend, cell.precision))
        return FakeSession(ms=_grid_ms(cell.target.label, cell.backend, cell.precision, factors))

    def adaptive(run, *, batch=1, **kw):
        return latency.summarize([run.ms] * kw.get("min_runs", 10), batch)

    def interleaved(runners, *, warmup, iters, rounds, batch=1, on_round=None):
        return {k: latency.summarize([run.ms] * iters, batch) for k, run in runners.items()}

    monkeypatch.setattr(Bench, "session", session)
    monkeypatch.setattr(Bench, "complexity", lambda self, target: _grid_complexity(target.label))
    monkeypatch.setattr(latency, "adaptive", adaptive)
    monkeypatch.setattr(latency, "interleaved", interleaved)
    monkeypatch.setattr(latency, "gemm_flops", lambda **kw: 1e12)
    monkeypatch.setattr(bench_mod, "runtime_versions",
                        lambda: {"torch": "1", "compile": "1", "onnxruntime": "1", "openvino": "1", "litert": "1"})
    return grid


def _exhaustive(budget, top, backends, factors, models=GRID, precisions=("fp32", "int8")):
    """The answer from every latency of the grid: per variant its fp32 entry if it fits, else its int8
    entry if that fits; by published top-1, then latency; the first ``top``."""
    rows = []
    for name in models:
        for p in sorted(precisions, key=lambda p: p != "fp32"):
            ms = _grid_ms(name, backends[p], p, factors)
            if ms <= budget:
                rows.append((-VARIANTS[name].top1, ms, name, p))
                break
    return [(n, p) for _, _, n, p in sorted(rows)[:top]]


@pytest.mark.parametrize("budget, top", [(5.0, 15), (2.0, 15), (1.2, 5), (3.0, 3), (0.5, 15), (8.0, 40)])
def test_select_answer_is_the_exhaustive_answer_with_fewer_exports(fake_grid, budget, top):
    sel = select(budget, top=top)
    assert sel.backends == {"fp32": "onnxruntime", "int8": "openvino"}
    answer = [(e.name, e.precision) for e in sel.fits[:top]]
    assert answer == _exhaustive(budget, top, sel.backends, fake_grid["factors"])
    opened = fake_grid["opened"]
    assert len(opened) == len(set(opened))                                  # nothing exported twice
    search = [o for o in opened if o[0] != choose.PROBE]
    assert len(search) < len(GRID) * 2
    assert not any(b == "litert" for m, b, p in search)                      # only the probe converted
    measured = sel.fits + [e for e, _ in sel.rejected]
    if len(sel.fits) >= top:   # the answer is full: nothing less accurate than its last entry was measured
        nth = sel.fits[top - 1].top1
        assert all(e.top1 >= nth for e in measured)
        below = [e for e, why in sel.unmeasured if why.startswith(f"below the top {top}")]
        assert below and all(e.top1 < nth for e in below)
        assert {(e.name, e.precision) for e in below} == {(n, p) for n in GRID for p in ("fp32", "int8")
                                                          if VARIANTS[n].top1 < nth}
    fp32_fits = {e.name for e in sel.fits if e.precision == "fp32"}
    assert not [m for m, b, p in opened if p == "int8" and m in fp32_fits and m != choose.PROBE]
    assert all("fp32 version fits" in why for e, why in sel.unmeasured
               if e.precision == "int8" and e.name in fp32_fits)


def test_select_ranks_ties_on_published_top1_by_measuring_them(fake_grid):
    # mobilenet_v2_050 and mobilenet_v3_small_075 share a published 65.4; V3-S 0.75 (fewer MACs, searched
    # first) is made slower: with --top 1 the answer is the faster of the two, so both are measured
    fake_grid["factors"]["family"][("mobilenet_v3_small", "fp32")] = 3.0
    models = ["mobilenet_v3_small_075", "mobilenet_v2_050", "mobilenet_v2_035"]
    sel = select(5.0, backend="onnxruntime", precisions=["fp32"], models=models, top=1)
    assert [(e.name, e.precision) for e in sel.fits[:1]] == [("mobilenet_v2_050", "fp32")]
    assert [(e.name, e.precision) for e in sel.fits[:1]] == _exhaustive(5.0, 1, sel.backends, fake_grid["factors"],
                                                                        models, ["fp32"])
    assert [m for m, _, _ in fake_grid["opened"]] == ["mobilenet_v3_small_075", "mobilenet_v2_050"]
    assert _reasons(sel) == {("mobilenet_v2_035", "fp32"): "below the top 1: 1 entries with a higher published "
                                                           "top-1 fit already"}


def test_select_precision_order_does_not_change_the_answer(fake_grid):
    models = ["mobilenet_v2_100", "mobilenet_v2_075", "mobilenet_v2_050", "mobilenet_v3_small_100"]
    one = select(2.0, backend="onnxruntime", precisions=["int8", "fp32"], models=models)
    n = len(fake_grid["opened"])
    two = select(2.0, backend="onnxruntime", precisions=["fp32", "int8"], models=models, fresh=True)
    assert [(e.name, e.precision) for e in one.fits] == [(e.name, e.precision) for e in two.fits]
    assert fake_grid["opened"][:n] == fake_grid["opened"][n:]
    assert [(e.name, e.precision) for e in one.fits] == _exhaustive(2.0, 9, one.backends, fake_grid["factors"],
                                                                     models)


def test_select_searches_on_the_cheaper_runtime_when_the_fastest_is_within_tolerance(fake_grid):
    models = ["mobilenet_v2_100", "mobilenet_v2_050"]
    sel = select(5.0, models=models)       # fake fp32: LiteRT 2% faster than ONNX Runtime on the probe
    assert sel.backends == {"fp32": "onnxruntime", "int8": "openvino"}
    passed = [n for n in sel.notes if n.startswith("fp32 searched on onnxruntime")]
    assert passed == ["fp32 searched on onnxruntime: litert was 2.0% faster on the probe but its exports cost "
                      "~3x onnxruntime's; --backend litert to search on it"]
    assert sel.to_dict()["notes"] == sel.notes
    assert [o for o in fake_grid["opened"] if o[1] == "litert"] == [(choose.PROBE, "litert", "fp32")]
    res = runner.invoke(app, ["select", "--budget-ms", "5", "--models", ",".join(models)])
    assert res.exit_code == 0, res.output
    assert passed[0] in " ".join(res.stdout.split())
    as_json = json.loads(runner.invoke(app, ["select", "--budget-ms", "5", "--models", ",".join(models),
                                             "--json"]).stdout)
    assert passed[0] in as_json["notes"]


def test_select_keeps_the_fastest_runtime_when_it_is_clearly_faster(fake_grid):
    fake_grid["factors"]["fp32"]["litert"] = 0.9      # 10% faster: worth its conversion
    sel = select(5.0, models=["mobilenet_v2_100", "mobilenet_v2_050"])
    assert sel.backends == {"fp32": "litert", "int8": "openvino"}
    assert not any("searched on" in n for n in sel.notes)
    rows = [bench_mod.BenchRow("p", "mobilenets", b, "fp32", 1.0, 224, 1, 1, 1, 1, latency.summarize([ms]))
            for b, ms in (("litert", 1.0), ("openvino", 1.04), ("torch", 1.03))]
    pick, note = choose.cheapest_near_fastest(rows, "fp32")   # torch needs no export at all
    assert pick == "torch" and "litert was" in note and "torch needs no export" in note
    assert choose.cheapest_near_fastest(rows, "bf16") == ("litert", None)   # no export costs known: the fastest


@pytest.mark.parametrize("args, pattern", [
    (["bench", "mobilenet_v9"], "unknown model"),
    (["bench", "mobilenet_v2", "--backend", "caffe2"], "unknown backend"),
    (["bench", "mobilenet_v2", "--iters", "0"], "iters must be >= 1"),
    (["bench", "mobilenet_v2", "--precision", "fp8"], "unknown precision"),
    (["bench", "no/such/model.onnx"], "no such model file"),
    (["bench", "mobilenet_v2", "-o", "report.txt"], "use a .json or .csv suffix"),
    (["select", "--budget-ms", "0"], "must be > 0"),
    (["select", "--budget-ms", "5", "--max-params", "many"], "not a count"),
    (["select", "--budget-ms", "5", "--backend", "caffe2"], "unknown backend"),
    (["select", "--budget-ms", "5", "--plot", "frontier.jpg"], "use a .png suffix"),
])
def test_cli_bad_input_is_one_line_exit_2(args, pattern):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert pattern in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("verb", [["bench", "mobilenet_v1_025", "--backend", "torch", "-o"],
                                  ["bench", "mobilenet_v1_025", "--backend", "torch", "--csv"],
                                  ["select", "--budget-ms", "5", "--backend", "torch", "-o"],
                                  ["select", "--budget-ms", "5", "--backend", "torch", "--plot"]])
def test_cli_output_folder_fails_before_measuring(fake_sessions, tmp_path, verb):
    folder = tmp_path / ("out.json" if verb[-1] == "-o" else "out.csv" if verb[-1] == "--csv" else "out.png")
    folder.mkdir()
    res = runner.invoke(app, [*verb, str(folder)])
    assert res.exit_code == 2 and "it is a folder" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert fake_sessions == []


def test_cli_zoo_output_file_fails_before_measuring(fake_sessions, tmp_path):
    (tmp_path / "zoo").write_text("a file")
    res = runner.invoke(app, ["zoo", "--quick", "--backend", "torch", "-o", str(tmp_path / "zoo")])
    assert res.exit_code == 2 and "is a file, not a folder" in res.stderr and fake_sessions == []


def test_cli_bench_table_and_files(tmp_path):
    res = runner.invoke(app, ["bench", "mobilenet_v3_small_075", "--backend", "torch", "--resolution", "64",
                              "--warmup", "1", "--iters", "3", "--rounds", "1", "--peers", "--batch-size", "2",
                              "-o", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")])
    assert res.exit_code == 0, res.output
    assert "mobilenet_v3_small_075" in res.stdout and "img/s" in res.stdout and "timm" in res.stdout
    assert "GEMM floor" in res.stdout and "now" in res.stdout
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["batch"] == 2
    assert (tmp_path / "r.csv").read_text().startswith("model,impl")


def test_cli_json_flag_prints_json_and_fresh_measures_again(fake_sessions):
    args = ["bench", "mobilenet_v1_025", "--backend", "torch", "--resolution", "32", "--iters", "3", "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["rows"][0]["cached"] is False
    second = runner.invoke(app, args)
    row = json.loads(second.stdout)["rows"][0]
    assert row["cached"] is True and row["measured_at"] and len(fake_sessions) == 1
    table = runner.invoke(app, args[:-1])
    assert row["measured_at"][:10] in table.stdout and "read back from the measurement cache" in table.stdout
    third = runner.invoke(app, [*args, "--fresh"])
    assert json.loads(third.stdout)["rows"][0]["cached"] is False and len(fake_sessions) == 2


def test_cli_select_json_and_cache(fake_sessions, tmp_path):
    args = ["select", "--budget-ms", "5", "--backend", "torch", "--precision", "fp32", "--models", "v3_small*",
            "--json",
            "-o", str(tmp_path / "sel.json")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["fits"] and json.loads((tmp_path / "sel.json").read_text()) == data
    n = len(fake_sessions)
    again = json.loads(runner.invoke(app, args).stdout)
    assert len(fake_sessions) == n and all(e["cached"] for e in again["fits"])


def test_select_in_an_old_process_counts_only_its_own_time(fake_sessions, monkeypatch):
    """--max-seconds counts interpreter start-up only when main() started the process; a command invoked
    in a long-lived process (a test run, a notebook) gets its whole budget."""
    from mobilenets.core import hardware
    monkeypatch.setattr(hardware, "process_age_s", lambda: 10_000.0)
    res = runner.invoke(app, ["select", "--budget-ms", "5", "--backend", "torch", "--models", "v3_small*", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["fits"]
    from mobilenets.cli import common, main
    monkeypatch.setattr(common, "STARTUP_S", 0.0)
    monkeypatch.setattr("sys.argv", ["mobilenets", "--help"])
    with pytest.raises(SystemExit):
        main()
    assert common.STARTUP_S == 10_000.0                              # run as a program: start-up counts


def test_session_runner_matches_run_in_every_layout(tmp_path):
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


def test_select_stops_at_its_time_limit_and_the_next_call_continues(fake_grid):
    """Past ``max_seconds`` nothing new is exported; the answer above the first entry left out is
    final, the note says so, and the same call again (measurements cached) finishes the search."""
    ticks = iter(range(10_000))
    clock = lambda: float(next(ticks))  # noqa: E731  (one second per look at the clock)
    first = select(5.0, top=15, max_seconds=12, clock=clock)
    stopped = [e for e, why in first.unmeasured if why.startswith("time limit")]
    assert stopped and any("time limit" in n and "run the same command again" in n for n in first.notes)
    cut = max(e.top1 for e in stopped)
    exhaustive = _exhaustive(5.0, 15, first.backends, fake_grid["factors"])
    final = [(e.name, e.precision) for e in first.fits if e.top1 > cut]
    assert final == [a for a in exhaustive if VARIANTS[a[0]].top1 > cut]
    opened = len(fake_grid["opened"])
    second = select(5.0, top=15)
    assert [(e.name, e.precision) for e in second.fits[:15]] == exhaustive
    assert not any("time limit" in n for n in second.notes)
    assert len(fake_grid["opened"]) > opened and len(set(fake_grid["opened"])) == len(fake_grid["opened"])
