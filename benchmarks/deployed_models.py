"""Deployed models you can trust: CIFAR-10 models trained here, every export scored on held-out images.

Three stages, each a thin driver over the CLI a user would run (``mobilenets train``, ``export``,
``eval``), so the figures are what those commands print:

1. ``train``: MobileNetV3-Small 1.0, MobileNetV3-Large 0.75 and MobileNetV2 1.0 on the real
   CIFAR-10 training split with 5,000 images held out (``--val-size 5000``, seed 0), run side by side
   (a GPU takes all three at once). ``scratch``: the QAT-from-scratch pair, V3-Small trained float
   and with ``--qat`` by the same short recipe, side by side.
2. ``qat``: quantization-aware fine-tuning of each float checkpoint (``train --qat --weights``).
3. ``deploy`` (on the CPU; ``--models`` splits it over processes, ``merge`` then times all files
   together): per checkpoint, its own top-1 on the held-out images (``eval``), then
   fp32 exports (ONNX, OpenVINO, TFLite), int8 post-training (ORT QDQ, ORT QOperator, OpenVINO,
   LiteRT) calibrated on 300 training images, accuracy-controlled int8 (``--max-drop 0.2``), QAT
   int8 by ``export --qat-epochs 1`` (ONNX, OpenVINO, TFLite) and the QAT checkpoints' exports;
   each file scored by ``mobilenets eval FILE`` on the same held-out images (the sidecar carries
   the split), its size, and its latency at batch 1, 1 thread, at the model's own
   resolution (interleaved with the fp32 file of the same runtime). Writes
   ``benchmarks/results/deployed_models.json`` and prints the README's table.

    python benchmarks/deployed_models.py train --data folder:/work/cifar10 --device cuda --out runs/cifar
    python benchmarks/deployed_models.py qat --data folder:/work/cifar10 --device cuda --out runs/cifar
    OMP_NUM_THREADS=2 python benchmarks/deployed_models.py deploy --data folder:/work/cifar10 --out runs/cifar
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from onnx_export_speed import RESULTS, machine  # noqa: E402

CLI = [sys.executable, "-c", "from mobilenets.cli import main; main()"]
# name: (model, options); widths that train well in minutes on one GPU, stems for 32x32 inputs
MODELS = {
    "v3s": ("mobilenet_v3_small", ["--stem-layers", "3"]),
    "v3l": ("mobilenet_v3_large", ["--width", "0.75", "--stem-layers", "2"]),
    "v2": ("mobilenet_v2", ["--stem-layers", "2"]),
}
RECIPE = ["--recipe", "default", "--batch-size", "256", "--lr", "0.2", "--warmup-epochs", "2", "--val-size", "5000"]
SCRATCH_EPOCHS = 12  # the QAT-from-scratch pair: short enough for both to run in a session
QAT_FT = ["--epochs", "3", "--lr", "0.01", "--warmup-epochs", "0", "--ema-decay", "0", "--label-smoothing", "0.1"]
MAX_DROP = 0.2
QAT_EXPORT = ["--qat-epochs", "1", "--qat-images", "5000"]  # export's QAT (train --qat): 1 epoch of 5,000 images


def run(cmd: list[str], log: Path, timeout: float | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(cmd[3:] if cmd[:3] == CLI else cmd), f"> {log}", flush=True)
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_all(procs: dict[str, subprocess.Popen], timeout: float) -> dict[str, int]:
    end, codes = time.monotonic() + timeout, {}
    for name, p in procs.items():
        try:
            codes[name] = p.wait(timeout=max(end - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            p.kill()
            codes[name] = -9
    print("exit codes:", codes, flush=True)
    return codes


def train(args) -> None:
    """Stage 1: the three float models, side by side."""
    out, sys_opts = Path(args.out), ["--device", args.device, "--threads", str(args.threads)]
    procs = {}
    for name, (model, opts) in MODELS.items():
        procs[name] = run([*CLI, "train", model, *opts, *RECIPE, "--epochs", str(args.epochs), "--data", args.data,
                           *sys_opts, "-o", str(out / name)], out / f"{name}.log")
    wait_all(procs, args.timeout)


def scratch(args) -> None:
    """Stage 1b: V3-Small float and QAT from scratch by the same short recipe, side by side."""
    out, sys_opts = Path(args.out), ["--device", args.device, "--threads", str(args.threads)]
    procs = {}
    model, opts = MODELS["v3s"]
    if args.scratch_opts is not None:  # e.g. a recipe that fits a CPU: "--stem-layers 0 --batch-size 128 --lr 0.1"
        opts = [*RECIPE, *args.scratch_opts.split()]
    else:
        opts = [*opts, *RECIPE]
    delay = ["--qat-delay", str(args.scratch_qat_delay)] if args.scratch_qat_delay else []
    for name, extra in (("scratch_float", []), ("scratch_qat", ["--qat", "--qat-backend", "onnxruntime", *delay])):
        procs[name] = run([*CLI, "train", model, *opts, "--epochs", str(args.scratch_epochs), "--data",
                           args.data, *sys_opts, *extra, "-o", str(out / name)], out / f"{name}.log")
    wait_all(procs, args.timeout)


def qat(args) -> None:
    """Stage 2: QAT fine-tuning of each float checkpoint for ``--qat-backend``."""
    out, sys_opts = Path(args.out), ["--device", args.device, "--threads", str(args.threads)]
    procs = {}
    for name, (model, opts) in MODELS.items():
        ckpt = out / name / "best.safetensors"
        if not ckpt.exists():
            print(f"skip {name}: no {ckpt}")
            continue
        tag = f"{name}_qat_{args.qat_backend}"
        procs[tag] = run([*CLI, "train", model, *opts, *RECIPE, *QAT_FT, "--data", args.data, *sys_opts, "--qat",
                          "--qat-backend", args.qat_backend, "--weights", str(ckpt), "-o", str(out / tag)],
                         out / f"{tag}.log")
    wait_all(procs, args.timeout)


def cli_json(*argv: str) -> dict | None:
    """``mobilenets ARGV --json`` -> its JSON (``None``, with the error printed, when it fails)."""
    p = subprocess.run([*CLI, *argv, "--json"], capture_output=True, text=True)
    if p.returncode:
        print(f"  failed ({p.returncode}): mobilenets {' '.join(argv)}\n  {p.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(p.stdout)


def deploy_one(name: str, ckpt: Path, qat_ckpts: dict, args, work: Path) -> list[dict]:
    """Every export of one checkpoint, each scored by ``mobilenets eval`` on the held-out images."""
    rows = []
    own = cli_json("eval", str(ckpt), "--data", args.data)
    if own is None:
        return rows
    base = {"model": name, "checkpoint": str(ckpt)}
    rows.append({**base, "format": "checkpoint", "precision": "fp32", "runtime": "pytorch", "top1": own["top1"],
                 "top5": own["top5"], "images": own["images"], "size_bytes": ckpt.stat().st_size})
    calib = ["--calib", args.data, "--calib-size", "300"]
    variants = [("onnx", "fp32", []), ("openvino", "fp32", []), ("tflite", "fp32", []),
                ("onnx", "int8 QDQ", ["--int8", *calib]),
                ("onnx", "int8 QOperator", ["--int8", *calib, "--int8-format", "qoperator"]),
                ("openvino", "int8", ["--int8", *calib]), ("tflite", "int8", ["--int8", *calib]),
                ("onnx", f"int8 QDQ, max-drop {MAX_DROP}", ["--int8", *calib, "--max-drop", str(MAX_DROP)]),
                ("openvino", f"int8, max-drop {MAX_DROP}", ["--int8", *calib, "--max-drop", str(MAX_DROP)]),
                ("tflite", f"int8, max-drop {MAX_DROP}", ["--int8", *calib, "--max-drop", str(MAX_DROP)]),
                ("onnx", "int8 QDQ, QAT 1 epoch", ["--int8", *calib, *QAT_EXPORT]),
                ("openvino", "int8, QAT 1 epoch", ["--int8", *calib, *QAT_EXPORT]),
                ("tflite", "int8, QAT 1 epoch", ["--int8", *calib, *QAT_EXPORT])]
    if not args.tflite_control and name != "v3s":  # LiteRT's search converts once per trial: minutes each
        variants = [v for v in variants if not (v[0] == "tflite" and "max-drop" in v[1])]
    variants = [(fmt, precision, opts, ckpt) for fmt, precision, opts in variants]
    for backend, q in qat_ckpts.items():  # a QAT checkpoint exports with its learned ranges: no calibration
        fmts = ["onnx", "openvino"] if backend in ("onnxruntime", "openvino") else ["tflite"]
        variants += [(f, f"int8 QAT ({backend})", ["--int8"], q) for f in fmts]
    for fmt, precision, opts, target in variants:
        slug = "".join(c for c in f"{name}-{fmt}-{precision}".replace(" ", "_") if c.isalnum() or c in "_-")
        suffix = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}[fmt]
        t = time.perf_counter()
        out = work / f"{slug}{suffix}"
        if args.reuse and out.exists() and out.with_suffix(".json").exists():  # exported by an earlier run
            exp = reused(out)
        else:
            exp = cli_json("export", str(target), "--format", fmt, *opts, "-o", str(out))
        took = time.perf_counter() - t
        if exp is None:
            rows.append({**base, "format": fmt, "precision": precision, "error": "export failed"})
            continue
        ev = cli_json("eval", exp["path"], "--data", args.data)
        row = {**base, "format": fmt, "precision": precision, "runtime": exp["backend"], "file": exp["path"],
               "size_bytes": exp["size_bytes"], "export_s": round(took, 1)}
        if ev is not None:
            row.update(top1=ev["top1"], top5=ev["top5"], images=ev["images"])
        if exp.get("control"):
            c = exp["control"]
            row["control"] = {"met": c["met"], "chosen": c["chosen"],
                              "trials": [{k: t[k] for k in ("n_float", "top1", "drop", "latency_ms")}
                                         for t in c["trials"]]}
        rows.append(row)
        print(f"  {name:4s} {fmt:8s} {precision:26s} top-1 {row.get('top1', float('nan')):6.2f}  "
              f"{row['size_bytes'] / 2**20:6.2f} MiB  ({took:.0f} s)", flush=True)
    return rows


def reused(path: Path) -> dict:
    """What ``export --json`` said of a file, read back from its sidecar."""
    side = json.loads(path.with_suffix(".json").read_text())
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])
    return {"path": str(path), "backend": side["backend"], "size_bytes": sum(f.stat().st_size for f in files),
            "control": side.get("accuracy_control"), "reused": True}


def latencies(rows: list[dict], threads: int = 1) -> None:
    """Median batch-1 latency of every exported file, interleaved with the other files of its runtime."""
    import numpy as np

    from mobilenets.deploy.runtimes import interleaved_latency, open_session

    for model in sorted({r["model"] for r in rows}):
        for runtime in sorted({r.get("runtime") for r in rows if r["model"] == model and r.get("file")}):
            group = [r for r in rows if r["model"] == model and r.get("runtime") == runtime and r.get("file")]
            sessions = {r["file"]: open_session(r["file"], threads=threads) for r in group}
            side = next(iter(sessions.values())).resolution or 32
            x = np.random.default_rng(0).standard_normal((1, 3, side, side), dtype=np.float32)
            lat = interleaved_latency(sessions, x, warmup=20, rounds=15, per_round=20)
            fp32 = next((lat[r["file"]]["median_ms"] for r in group if r["precision"] == "fp32"), None)
            for r in group:
                r["latency_ms"] = lat[r["file"]]["median_ms"]
                r["speedup"] = fp32 / r["latency_ms"] if fp32 else None


def deploy(args) -> None:
    """Stage 3: the export matrix of every trained checkpoint, then the table."""
    out = Path(args.out)
    work = out / "exports"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        ckpt = out / name / "best.safetensors"
        if not ckpt.exists():
            print(f"skip {name}: no {ckpt}")
            continue
        qat_ckpts = {b: out / f"{name}_qat_{b}" / "best.safetensors" for b in ("onnxruntime", "litert")}
        rows += deploy_one(name, ckpt, {b: p for b, p in qat_ckpts.items() if p.exists()}, args, work)
        (out / f"rows-{name}.json").write_text(json.dumps(rows, indent=1))  # kept if a later model fails
    latencies(rows)
    scratch = {}
    for tag in ("scratch_float", "scratch_qat"):
        ckpt = out / tag / "best.safetensors"
        if ckpt.exists():
            ev = cli_json("eval", str(ckpt), "--data", args.data)
            scratch[tag] = {"checkpoint_top1": None if ev is None else ev["top1"]}
    if "scratch_qat" in scratch:
        exp = cli_json("export", str(out / "scratch_qat" / "best.safetensors"), "--format", "onnx", "--int8", "-o",
                       str(work / "scratch_qat-onnx-int8.onnx"))
        ev = None if exp is None else cli_json("eval", exp["path"], "--data", args.data)
        scratch["scratch_qat"]["int8_onnx_top1"] = None if ev is None else ev["top1"]
    result = {"machine": machine(), "data": args.data, "rows": rows, "qat_from_scratch": scratch,
              "max_drop": MAX_DROP, "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"deployed_models{args.tag}.json").write_text(json.dumps(result, indent=1))
    print(table(rows))
    print(json.dumps(scratch, indent=1))


def merge(args) -> None:
    """Stage 4: the rows of deploy runs made side by side (``rows-MODEL.json``), timed together."""
    out = Path(args.out)
    rows = []
    for name in args.models.split(","):
        part = [r for r in json.loads((out / f"rows-{name}.json").read_text()) if r["model"] == name]
        rows += part
    latencies(rows)
    scratch = json.loads(Path(args.scratch).read_text()) if args.scratch else {}
    result = {"machine": machine(), "data": args.data, "rows": rows, "qat_from_scratch": scratch,
              "max_drop": MAX_DROP, "date": time.strftime("%Y-%m-%d")}
    (RESULTS / f"deployed_models{args.tag}.json").write_text(json.dumps(result, indent=1))
    print(table(rows))


def table(rows: list[dict]) -> str:
    """The ONNX model zoo's shape: model | format/precision | runtime | top-1 | top-5 | size | latency | speed-up."""
    lines = ["| model | format / precision | runtime | top-1 | top-5 | size MB | latency ms | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "top1" not in r:
            lines.append(f"| {r['model']} | {r['format']} {r['precision']} | - | {r.get('error', '-')} | | | | |")
            continue
        lat = f"{r['latency_ms']:.3f}" if r.get("latency_ms") else "-"
        sp = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        lines.append(f"| {r['model']} | {r['format']} {r['precision']} | {r['runtime']} | {r['top1']:.2f} | "
                     f"{r['top5']:.2f} | {r['size_bytes'] / 1e6:.2f} | {lat} | {sp} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=("train", "scratch", "qat", "deploy", "merge"))
    ap.add_argument("--data", required=True, help="folder:PATH of CIFAR-10's train/ class folders")
    ap.add_argument("--out", default="runs/cifar")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=max((os.cpu_count() or 2) // 5, 1))
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--qat-backend", default="onnxruntime")
    ap.add_argument("--scratch-epochs", type=int, default=SCRATCH_EPOCHS, help="scratch: epochs of both runs")
    ap.add_argument("--scratch-qat-delay", type=int, default=0, help="scratch: float epochs of the QAT run before "
                    "its fake quantization (train --qat-delay)")
    ap.add_argument("--scratch-opts", default=None, help="scratch: train options after the recipe, replacing "
                    "V3-Small's CIFAR stem (a recipe that fits a CPU)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--models", default=",".join(MODELS), help="deploy: which trained models")
    ap.add_argument("--tflite-control", action="store_true", help="deploy: LiteRT's accuracy control for every "
                    "model (default: V3-Small only)")
    ap.add_argument("--reuse", action="store_true", help="deploy: score files an earlier run exported")
    ap.add_argument("--tag", default="", help="deploy, merge: suffix of the results file")
    ap.add_argument("--scratch", default=None, help="merge: JSON of the QAT-from-scratch pair's figures")
    args = ap.parse_args()
    {"train": train, "scratch": scratch, "qat": qat, "deploy": deploy, "merge": merge}[args.stage](args)


if __name__ == "__main__":
    main()
