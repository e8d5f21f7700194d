"""fp32 against int8 top-1 of a CIFAR-10 checkpoint on a held-out validation split, per runtime.

The checkpoint (ours, e.g. from ``mobilenets train ... --data folder:CIFAR``) is exported fp32 and
int8 (calibrated on ``--calib-size`` images of the training split) for ONNX Runtime and OpenVINO;
every file is evaluated on the held-out split with the Session API, next to PyTorch. The split
must be the one the checkpoint did not train on: ``--val-size`` and ``--seed`` are those of
``train`` (``mobilenets.data.datasets.load_data``: a seeded share of ``train/`` when there is no
``val/``). Also measures fp32 vs int8 latency (batch 1, 1 thread). Writes
``benchmarks/results/int8_accuracy.json``.

    OMP_NUM_THREADS=1 python benchmarks/int8_accuracy.py RUN/best.safetensors --data folder:/work/cifar10
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from onnx_export_speed import RESULTS, machine  # noqa: E402


def normalise(images, pre) -> np.ndarray:
    """uint8 N x 3 x R x R -> the model's normalised float32 input."""
    x = images.float().div(255).numpy() if hasattr(images, "numpy") else images.astype(np.float32) / 255
    mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def top1(session, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    pred = np.concatenate([session.run(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).mean())


def main() -> None:
    from mobilenets.data.datasets import load_data
    from mobilenets.deploy.calibration import ImageSet
    from mobilenets.deploy.export import export
    from mobilenets.deploy.runtimes import available_backends, interleaved_latency, open_session
    from mobilenets.weights.io import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", default="folder:/work/cifar10", help="the training data spec of the checkpoint")
    ap.add_argument("--val-size", type=float, default=0.1, help="as in `train` (a share or a count)")
    ap.add_argument("--seed", type=int, default=0, help="as in `train`")
    ap.add_argument("--calib-size", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS / "int8_accuracy.json")
    args = ap.parse_args()

    model, meta = load_checkpoint(args.checkpoint)
    pre = meta.preprocessing
    res = model.config.resolution
    splits = load_data(args.data, resolution=res, val_size=int(args.val_size) if args.val_size >= 1 else args.val_size,
                       seed=args.seed, class_names=meta.class_names)
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(len(splits.train), size=min(args.calib_size, len(splits.train)), replace=False))
    import torch
    idx = torch.from_numpy(pick)
    calib = ImageSet(normalise(splits.train.images[idx], pre), splits.train.labels[idx].numpy(), splits.class_names)
    xv, yv = normalise(splits.val.images, pre), splits.val.labels.numpy()
    print(f"{args.checkpoint}: {model.config.family} width {model.config.width}, {res}x{res}; "
          f"calibration {len(calib)} training images, validation {len(yv)} held-out images")
    out = {"machine": machine(), "checkpoint": str(args.checkpoint), "data": args.data, "val_images": int(len(yv)),
           "calib_images": int(len(calib)), "split": splits.info, "torch_fp32_top1": top1(open_session(model), xv, yv),
           "runtimes": {}}
    print(f"  torch fp32 top-1 {out['torch_fp32_top1']:.2%}")
    installed = available_backends()
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, backend in (("onnx", "onnxruntime"), ("openvino", "openvino")):
            if not installed[backend]:
                continue
            f32 = export(model, fmt, Path(tmp), batch="dynamic")
            i8 = export(model, fmt, Path(tmp), batch="dynamic", int8=True, calib=calib, report=False)
            s32, s8 = open_session(f32.path), open_session(i8.path)
            a32, a8 = top1(s32, xv, yv), top1(s8, xv, yv)
            lat = interleaved_latency({"fp32": s32, "int8": s8}, xv[:1], warmup=20, rounds=args.rounds, per_round=20)
            r = {"top1_fp32": a32, "top1_int8": a8, "points_lost": 100 * (a32 - a8),
                 "size_bytes": {"fp32": f32.size_bytes, "int8": i8.size_bytes}, "latency_ms": lat,
                 "speedup": lat["fp32"]["median_ms"] / lat["int8"]["median_ms"]}
            out["runtimes"][backend] = r
            print(f"  {backend:12s} top-1 fp32 {a32:.2%}  int8 {a8:.2%}  ({r['points_lost']:+.2f} points lost)  "
                  f"size {f32.size_bytes / 2**20:.2f} -> {i8.size_bytes / 2**20:.2f} MiB  "
                  f"latency {lat['fp32']['median_ms']:.3f} -> {lat['int8']['median_ms']:.3f} ms ({r['speedup']:.2f}x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
