"""On-device runtimes: ExecuTorch, ncnn, MNN, Core ML beside LiteRT, on this machine's CPU.

Two stages, each a thin driver over what a user runs:

1. ``accuracy``: every checkpoint of ``benchmarks/deployed_models.py`` (CIFAR-10, 5,000 images held
   out) exported with ``mobilenets export`` to ExecuTorch, ncnn, MNN and LiteRT, fp32 and int8
   (calibrated on 300 images of the training split), and Core ML (fp32, fp16, int8 weights:
   checked, not run, on Linux); each runnable file scored by ``mobilenets eval FILE`` on the
   held-out images and its ``predict`` top-1 compared with the checkpoint's on a folder of real
   photos (``--photos`` held-out CIFAR-10 images). fp32 files: the export's own check, max |logit
   difference| against PyTorch on calibration images.
2. ``latency``: ``mobilenets.measure.bench`` (the ``bench`` verb's function) at 224x224, batch 1,
   1 thread, every cell in one interleaved run: MobileNetV2 1.0, V3-Large 1.0, V3-Small 1.0 and
   MobileNeXt 1.0 on ExecuTorch, ncnn, MNN and LiteRT, fp32 and int8, with ``peers=True``
   (torchvision's own models exported to ExecuTorch as its XNNPACK tutorial does, and to LiteRT
   with ``litert_torch.convert``). Ratios are of medians measured in the same run.

    python benchmarks/mobile_runtimes.py accuracy --data folder:/work/cifar10 --runs runs/cifar
    python benchmarks/mobile_runtimes.py latency
Writes ``benchmarks/results/mobile_runtimes.json`` (each stage its own key) and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "mobile_runtimes.json"
CLI = [sys.executable, "-c", "from mobilenets.cli import main; main()"]
CHECKPOINTS = ("v3s", "v3l", "v2")
FORMATS = {  # label: (format, export options)
    "ExecuTorch fp32": ("executorch", []), "ExecuTorch int8": ("executorch", ["--int8"]),
    "ncnn fp32": ("ncnn", []),
    "MNN fp32": ("mnn", []), "MNN int8": ("mnn", ["--int8"]),
    "LiteRT fp32": ("tflite", ["--nhwc"]), "LiteRT int8": ("tflite", ["--nhwc", "--int8"]),
    "Core ML fp32": ("coreml", []), "Core ML fp16": ("coreml", ["--precision", "fp16"]),
    "Core ML int8": ("coreml", ["--int8"]),
}
LATENCY_MODELS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "mobilenext")
LATENCY_BACKENDS = ("executorch", "ncnn", "mnn", "litert")


def cli(*argv: str, json_out: bool = True) -> dict | None:
    p = subprocess.run([*CLI, *argv, *(["--json"] if json_out else [])], capture_output=True, text=True)
    if p.returncode:
        print(f"  failed ({p.returncode}): mobilenets {' '.join(argv)}: {p.stderr.strip().splitlines()[-1:]}",
              flush=True)
        return None
    return json.loads(p.stdout) if json_out else {}


def top1_labels(result: dict) -> list[str]:
    return [p["top"][0]["label"] for p in result["predictions"]]


def photos(data: str, ckpt: Path, n: int, folder: Path) -> Path:
    """``n`` real photos of the checkpoint's held-out split, copied into ``folder`` (predict's input)."""
    from mobilenets.deploy.calibration import load_held_out, split_of
    from mobilenets.weights.resolve import resolve_model
    meta = resolve_model(ckpt).meta
    held = load_held_out(data, meta.preprocessing, limit=n, split=split_of(data, meta))
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(held.files):
        shutil.copy(f, folder / f"{i:04d}{Path(f).suffix}")
    return folder


def accuracy(args) -> dict:
    runs, work = Path(args.runs), Path(args.work)
    out: dict = {"data": args.data, "checkpoints": dict(args.previous.get("checkpoints", {}))}
    for name in args.models:
        ckpt = runs / name / "best.safetensors"
        if not ckpt.exists():
            print(f"skip {name}: no {ckpt}")
            continue
        own = cli("eval", str(ckpt), "--data", args.data)
        pics = photos(args.data, ckpt, args.photos, work / name / "photos")
        ref = top1_labels(cli("predict", str(ckpt), str(pics), "--top", "1", "--device", "cpu"))
        rows = [{"file": "checkpoint (PyTorch)", "top1": own["top1"], "images": own["images"]}]
        print(f"{name}: checkpoint top-1 {own['top1']:.2f}% on {own['images']} held-out images", flush=True)
        for label, (fmt, opts) in FORMATS.items():
            t = time.perf_counter()
            calib = ["--calib", args.data, "--calib-size", "300"] if "--int8" in opts else []
            dst = work / name / label.replace(" ", "_")
            res = cli("export", str(ckpt), "--format", fmt, *opts, *calib, "-o", str(dst))
            if res is None:
                rows.append({"file": label, "error": "export failed"})
                continue
            v, row = res["verification"], {"file": label, "path": res["path"], "size_bytes": res["size_bytes"],
                                           "export_s": round(time.perf_counter() - t, 1)}
            if v.get("ran") is False:  # Core ML on Linux
                row.update(checked={k: v[k] for k in ("ops", "precision", "int8", "input", "output")}, why=v["why"])
                rows.append(row)
                print(f"  {label}: checked, not run ({v['ops']} ops, {row['size_bytes'] / 2**20:.2f} MiB)", flush=True)
                continue
            if fmt != "tflite" or "--int8" not in opts:
                row["max_abs_diff_vs_pytorch"] = v.get("max_abs_diff")
            ev = cli("eval", res["path"], "--data", args.data)
            pred = cli("predict", res["path"], str(pics), "--top", "1")
            same = sum(a == b for a, b in zip(ref, top1_labels(pred), strict=True)) if pred else None
            row.update(top1=ev["top1"] if ev else None, drop=round(own["top1"] - ev["top1"], 2) if ev else None,
                       predict_same_top1=same, photos=len(ref))
            rows.append(row)
            print(f"  {label}: top-1 {row['top1']:.2f}% (drop {row['drop']:+.2f}), predict agrees on "
                  f"{row['predict_same_top1']}/{len(ref)} photos, max|diff| {row.get('max_abs_diff_vs_pytorch')}",
                  flush=True)
        out["checkpoints"][name] = rows
        RESULTS.write_text(json.dumps({**json.loads(RESULTS.read_text() if RESULTS.exists() else "{}"),
                                       "accuracy": out}, indent=1, default=str))  # each checkpoint kept as it ends
    return out


def latency(args) -> dict:
    from mobilenets.measure.bench import bench
    t = time.perf_counter()
    report = bench(list(args.models), backends=list(args.backends), precisions=["fp32", "int8"], threads=1,
                   batch=1, resolution=224, warmup=args.warmup, iters=args.iters, rounds=args.rounds, peers=True)
    rows = report.to_dict()["rows"]
    for r in rows:
        r["median_ms"] = r["timing"]["median_ms"]
    med = {(r["model"], r["impl"] != "mobilenets", r["backend"], r["precision"]): r["median_ms"] for r in rows}

    def ratio(m: str, a: tuple, b: tuple) -> float | None:
        x, y = med.get((m, *a)), med.get((m, *b))
        return round(x / y, 3) if x and y else None

    ours = lambda backend, prec: (False, backend, prec)  # noqa: E731
    ratios = {m: {"executorch_fp32 / litert_fp32": ratio(m, ours("executorch", "fp32"), ours("litert", "fp32")),
                  "executorch_int8 / litert_int8": ratio(m, ours("executorch", "int8"), ours("litert", "int8")),
                  "executorch fp32 / int8 (int8 speed-up)": ratio(m, ours("executorch", "fp32"),
                                                                  ours("executorch", "int8")),
                  "executorch_fp32 / torchvision tutorial export": ratio(m, ours("executorch", "fp32"),
                                                                         (True, "executorch", "fp32")),
                  "ncnn_fp32 / litert_fp32": ratio(m, ours("ncnn", "fp32"), ours("litert", "fp32")),
                  "mnn_fp32 / litert_fp32": ratio(m, ours("mnn", "fp32"), ours("litert", "fp32")),
                  "mnn_int8 / litert_int8": ratio(m, ours("mnn", "int8"), ours("litert", "int8"))}
              for m in args.models}
    return {"seconds": round(time.perf_counter() - t), "machine": report.machine, "settings": report.settings,
            "skipped": report.skipped, "warnings": report.warnings, "rows": rows, "ratios": ratios}


def print_latency(res: dict) -> None:
    print(f"{'model':28} {'impl':12} {'backend':11} {'prec':5} {'median ms':>9}")
    for r in res["rows"]:
        print(f"{(r.get('peer_model') or r['model']):28} {r['impl']:12} {r['backend']:11} {r['precision']:5} "
              f"{r['median_ms']:9.2f}")
    for m, rs in res["ratios"].items():
        print(m, rs)
    for s in res["skipped"]:
        print("skipped:", s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="stage", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--data", required=True)
    a.add_argument("--runs", default="runs/cifar")
    a.add_argument("--work", default="runs/mobile")
    a.add_argument("--photos", type=int, default=200)
    a.add_argument("--models", nargs="+", default=list(CHECKPOINTS), help="checkpoints to (re)do; others are kept")
    lat = sub.add_parser("latency")
    lat.add_argument("--models", nargs="+", default=list(LATENCY_MODELS))
    lat.add_argument("--backends", nargs="+", default=list(LATENCY_BACKENDS))
    lat.add_argument("--warmup", type=int, default=20)
    lat.add_argument("--iters", type=int, default=200)
    lat.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.stage == "accuracy":
        args.previous = results.get("accuracy", {})
        results["accuracy"] = accuracy(args)
    else:
        results["latency"] = latency(args)
        print_latency(results["latency"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
