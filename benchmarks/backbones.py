"""Every family's backbone in SSDLite320 and LR-ASPP: params, MACs and latency, in one run.

For MobileNetV1, V2, V3-Large, V3-Small and MobileNeXt (width 1.0, random weights: speed does not
depend on them), ``mobilenets.detection.ssdlite320`` (91 classes, 320x320, post-processing inside
the file: box decoding and NMS, torchvision's defaults but ``score_thresh=0.5``: random weights score
every class of every anchor near 1/91, above torchvision's 0.001, so all 91 x 300 candidates would go
through NMS, which a trained model's few confident boxes do not; at 0.5 the figure is the network's,
plus decoding) and ``mobilenets.segmentation.lraspp`` (21
classes, 520x520, backbone at output stride 16) are profiled (``measure.profile``) and exported with
``mobilenets.deploy.export`` (verified against PyTorch) to every format that takes them here:
detectors to ONNX (run by ONNX Runtime and OpenVINO), segmenters to ONNX, OpenVINO IR, LiteRT and
ExecuTorch. All sessions of one task are timed in one interleaved run (``interleaved_times``:
alternating rounds, 1 thread, batch 1) and each model's fastest runtime is reported, with every
runtime's median. MobileNeXt against MobileNetV2 in SSDLite320 is printed beside the seed's claim
(22.3 -> 23.3 COCO mAP); the COCO training that produced it cannot run here.

    OMP_NUM_THREADS=1 python benchmarks/backbones.py [--rounds 10] [--per-round 3]

Writes ``benchmarks/results/backbones.json`` and prints the README's table.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "backbones.json"
FAMILIES = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "mobilenext")
TASKS = {  # task: (builder, classes, options, formats -> backends that time each file)
    "ssdlite320": ("detection", 91, {"score_thresh": 0.5}, {"onnx": ("onnxruntime", "openvino")}),
    "lraspp": ("segmentation", 21, {}, {"onnx": ("onnxruntime",), "openvino": ("openvino",),
                                        "tflite": ("litert",), "executorch": ("executorch",)}),
}
SEED_CLAIM = {"mobilenet_v2": 22.3, "mobilenext": 23.3}  # SSDLite COCO mAP, seed 003


def build(task: str, family: str):
    import mobilenets
    module, classes, options, _ = TASKS[task]
    return getattr(getattr(mobilenets, module), task)(family, num_classes=classes, **options).eval()


def main() -> None:
    from mobilenets.deploy.export import export
    from mobilenets.deploy.runtimes import available_backends, interleaved_times, open_session, summarize
    from mobilenets.measure.profile import profile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    installed = set(available_backends())
    results: dict = {"machine": platform.processor() or platform.machine(), "threads": 1, "batch": 1,
                     "date": time.strftime("%Y-%m-%d"), "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="mobilenets-backbones-") as tmp:
        for task in args.tasks.split(","):
            _, _, options, formats = TASKS[task]
            rows, sessions = {}, {}
            for family in args.families.split(","):
                model = build(task, family)
                prof = profile(model)
                backbone = next(p for p in prof.parts if p.name == "backbone")
                rows[family] = {"params_m": prof.params / 1e6, "macs_m": prof.macs / 1e6,
                                "backbone_params_m": backbone.params / 1e6, "backbone_macs_m": backbone.macs / 1e6,
                                "resolution": prof.resolution, "exports": {}}
                for fmt, backends in formats.items():
                    t0 = time.perf_counter()
                    try:
                        result = export(model, fmt, Path(tmp) / f"{task}-{family}/")
                    except Exception as exc:  # noqa: BLE001 - a runtime that cannot take it is reported, not fatal
                        rows[family]["exports"][fmt] = {"error": " ".join(str(exc).split())[:200]}
                        print(f"  {task} {family} {fmt}: export failed: {exc}", flush=True)
                        continue
                    rows[family]["exports"][fmt] = {"seconds": round(time.perf_counter() - t0, 1),
                                                    "max_abs_diff": result.verification.get("max_abs_diff")}
                    for backend in backends:
                        if backend in installed:
                            sessions[f"{family}|{backend}"] = open_session(result.path, backend, threads=1)
                print(f"  {task} {family}: {prof.params / 1e6:.2f} M params, {prof.macs / 1e6:.0f} M MACs, "
                      f"exported {', '.join(rows[family]['exports'])}", flush=True)
            res = rows[args.families.split(",")[0]]["resolution"]
            x = _input(task, res)
            times = interleaved_times(sessions, x, warmup=args.warmup, rounds=args.rounds, per_round=args.per_round)
            for key, t in times.items():
                family, backend = key.split("|")
                rows[family].setdefault("latency", {})[backend] = summarize(t)
            for row in rows.values():
                lat = row.get("latency", {})
                if lat:
                    best = min(lat, key=lambda b: lat[b]["median_ms"])
                    row["fastest"] = {"backend": best, "median_ms": lat[best]["median_ms"]}
            results["tasks"][task] = {"options": options, "models": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print_table(results)


def _input(task: str, res: int) -> np.ndarray:
    """One image as the exported file takes it: a batch of one for a segmenter, one C x H x W image in
    [0, 1] for a detector (with some structure, as every runtime sees the same)."""
    rng = np.random.default_rng(0)
    if task == "ssdlite320":
        img = rng.random((3, res, res), dtype=np.float32) * 0.2
        img[:, res // 5:res // 2, res // 4:res // 2] += np.array([0.7, 0.2, 0.1], np.float32)[:, None, None]
        return img
    return rng.standard_normal((1, 3, res, res), dtype=np.float32)


def print_table(results: dict) -> None:
    print("\n| backbone | task | params M | MACs M | latency ms (fastest runtime) | every runtime (median ms) |")
    print("|---|---|---|---|---|---|")
    for task, entry in results["tasks"].items():
        for family, row in entry["models"].items():
            fast = row.get("fastest")
            every = ", ".join(f"{b} {v['median_ms']:.1f}" for b, v in sorted(row.get("latency", {}).items()))
            cell = f"{fast['median_ms']:.1f} ({fast['backend']})" if fast else "-"
            print(f"| {family} | {task} {row['resolution']} | {row['params_m']:.2f} | {row['macs_m']:.0f} | {cell} "
                  f"| {every} |")
    det = results["tasks"].get("ssdlite320", {}).get("models", {})
    if "mobilenext" in det and "mobilenet_v2" in det:
        a, b = det["mobilenet_v2"], det["mobilenext"]
        ratio = (b["fastest"]["median_ms"] / a["fastest"]["median_ms"]) if a.get("fastest") and b.get("fastest") \
            else float("nan")
        print(f"\nSSDLite320, MobileNeXt vs MobileNetV2: params {b['params_m']:.2f} vs {a['params_m']:.2f} M, "
              f"MACs {b['macs_m']:.0f} vs {a['macs_m']:.0f} M, latency x{ratio:.2f}; the seed's COCO mAP "
              f"{SEED_CLAIM['mobilenext']} vs {SEED_CLAIM['mobilenet_v2']} (not reproducible here: no COCO)")


if __name__ == "__main__":
    main()
