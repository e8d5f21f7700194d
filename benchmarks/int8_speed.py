"""int8 against fp32 on the same runtime, ours against the stock tools on torchvision's exports.

MobileNetV2 1.0 and V3-Large 1.0 at 224, batch 1, 1 thread, on ONNX Runtime (static QDQ and
QOperator, per-channel) and OpenVINO (NNCF), plus OpenVINO bf16 where the CPU has it. Ours: ``export(...,
int8=True)``. Stock: torchvision's model through ``torch.onnx.export`` -> ``quantize_static`` with
the same settings, and ``openvino.convert_model`` -> ``nncf.quantize`` with NNCF's defaults. All
variants of one model on one runtime are timed in alternating rounds of ``--per-round`` runs; a
speed-up is the median over rounds of the per-round ratio (robust to load that comes and goes on a
shared machine), with medians, p90 and minima of every variant. Calibration: ``--calib DIR``
(default: random normal images; their accuracy means nothing, their speed is the same).
Writes ``benchmarks/results/int8_speed.json``.

    OMP_NUM_THREADS=1 python benchmarks/int8_speed.py [--rounds 200] [--per-round 2] [--calib DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from onnx_export_speed import MODELS, RESULTS, machine, pair, torchvision_onnx  # noqa: E402


def stock_ort_int8(fp32: Path, out: Path, calib: np.ndarray) -> Path:
    from mobilenets.deploy.runtimes.onnxruntime import quantize_onnx
    return quantize_onnx(fp32, out, calib)  # the same quantize_static settings on torchvision's graph


def stock_openvino(tv: torch.nn.Module, out_fp32: Path, out_int8: Path, calib: np.ndarray) -> tuple[Path, Path]:
    import nncf
    import openvino as ov
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(tv, example_input=torch.zeros(1, 3, 224, 224))
        ov.save_model(model, str(out_fp32), compress_to_fp16=False)
        q = nncf.quantize(model, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]), subset_size=len(calib))
        ov.save_model(q, str(out_int8), compress_to_fp16=False)
    return out_fp32, out_int8


def main() -> None:
    from mobilenets.core.preprocessing import imagenet
    from mobilenets.deploy.calibration import load_images
    from mobilenets.deploy.export import export
    from mobilenets.deploy.runtimes import available_backends, interleaved_times, open_session

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--per-round", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--calib", default=None, help="folder of images (default: 64 random normal images)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", type=Path, default=RESULTS / "int8_speed.json")
    args = ap.parse_args()
    installed = available_backends()
    if args.calib:
        calib = load_images(args.calib, imagenet(224), limit=300).images
    else:
        calib = np.random.default_rng(0).standard_normal((64, 3, 224, 224), dtype=np.float32)
    x = calib[:1]
    results = {"machine": machine(), "threads": 1, "batch": 1, "resolution": 224, "rounds": args.rounds,
               "per_round": args.per_round, "calibration": args.calib or "64 random normal images", "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for name in args.models.split(","):
            tv, ours = pair(name)
            res: dict = {}
            if installed["onnxruntime"]:
                files = {"ours fp32": export(ours, "onnx", t / f"{name}-fp32.onnx").path,
                         "ours int8": export(ours, "onnx", t / f"{name}-int8.onnx", int8=True, calib=calib,
                                             min_agreement=0.0).path,
                         "ours int8 qoperator": export(ours, "onnx", t / f"{name}-int8-qop.onnx", int8=True,
                                                       calib=calib, int8_format="qoperator", min_agreement=0.0).path}
                files["stock fp32"] = torchvision_onnx(tv, t / f"{name}-tv.onnx")
                files["stock int8"] = stock_ort_int8(files["stock fp32"], t / f"{name}-tv-int8.onnx", calib)
                sessions = {k: open_session(f, "onnxruntime") for k, f in files.items()}
                times = interleaved_times(sessions, x, warmup=args.warmup, rounds=args.rounds,
                                          per_round=args.per_round)
                res["onnxruntime"] = _summary(times, files, args.per_round)
            if installed["openvino"]:
                files = {"ours fp32": export(ours, "openvino", t / f"{name}-fp32.xml").path,
                         "ours int8": export(ours, "openvino", t / f"{name}-int8.xml", int8=True, calib=calib,
                                             min_agreement=0.0).path}
                files["stock fp32"], files["stock int8"] = stock_openvino(
                    tv, t / f"{name}-tv-fp32.xml", t / f"{name}-tv-int8.xml", calib)
                sessions = {k: open_session(f, "openvino", precision="fp32") for k, f in files.items()}
                try:
                    sessions["ours bf16"] = open_session(files["ours fp32"], "openvino", precision="bf16")
                except Exception as exc:  # noqa: BLE001 - no bf16 on this CPU
                    print(f"  (no bf16: {exc})")
                times = interleaved_times(sessions, x, warmup=args.warmup, rounds=args.rounds,
                                          per_round=args.per_round)
                res["openvino"] = _summary(times, files, args.per_round)
            results["models"][name] = res
            for backend, r in res.items():
                ms = {k: v["median_ms"] for k, v in r["latency_ms"].items()}
                print(f"{name:20s} {backend:12s} " + "  ".join(f"{k} {v:5.2f}" for k, v in ms.items())
                      + f"  | int8 speedup (paired rounds): ours {r['int8_speedup']['ours']:.2f}x"
                      + (f" (qoperator {r['int8_speedup']['ours qoperator']:.2f}x)"
                         if "ours qoperator" in r["int8_speedup"] else "") + ", stock "
                      f"{r['int8_speedup']['stock']:.2f}x; of minima: ours {r['int8_speedup_of_minima']['ours']:.2f}x"
                      + (f"; ours int8 vs bf16 {r['int8_vs_bf16']:.2f}x" if "int8_vs_bf16" in r else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


def _summary(times: dict, files: dict, per_round: int) -> dict:
    from mobilenets.deploy.runtimes import paired_ratio, summarize
    lat = {k: summarize(v) for k, v in times.items()}
    out = {"latency_ms": lat,
           "int8_speedup": {"ours": paired_ratio(times, "ours fp32", "ours int8", per_round),
                            "stock": paired_ratio(times, "stock fp32", "stock int8", per_round)},
           "int8_speedup_of_minima": {"ours": lat["ours fp32"]["min_ms"] / lat["ours int8"]["min_ms"],
                                      "stock": lat["stock fp32"]["min_ms"] / lat["stock int8"]["min_ms"]},
           "ours_int8_vs_stock_int8": paired_ratio(times, "stock int8", "ours int8", per_round),
           "size_bytes": {k: _size(Path(f)) for k, f in files.items()}}
    if "ours int8 qoperator" in times:
        out["int8_speedup"]["ours qoperator"] = paired_ratio(times, "ours fp32", "ours int8 qoperator", per_round)
    if "ours bf16" in times:
        out["bf16_speedup"] = paired_ratio(times, "ours fp32", "ours bf16", per_round)
        out["int8_vs_bf16"] = paired_ratio(times, "ours bf16", "ours int8", per_round)
    return out


def _size(f: Path) -> int:
    """A model's bytes: .xml + .bin (OpenVINO), .onnx + .onnx.data (torch.onnx's external weights)."""
    extra = [f.with_suffix(".bin")] if f.suffix == ".xml" else [Path(str(f) + ".data")]
    return f.stat().st_size + sum(e.stat().st_size for e in extra if e.exists())


if __name__ == "__main__":
    main()
