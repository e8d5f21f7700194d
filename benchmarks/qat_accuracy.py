"""fp32 vs post-training int8 (PTQ) vs quantization-aware fine-tuned int8 (QAT) top-1 of a CIFAR-10
checkpoint on its held-out split, for ONNX Runtime and OpenVINO.

The held-out split is the one the checkpoint did not train on (its metadata records the data,
``val_size`` and ``split_seed``; ``--val-size``/``--seed`` override), the same 5,000 images
``int8_accuracy.py`` evaluates. PTQ is ``export(..., int8=True)`` calibrated on ``--calib-size``
training images (ORT: QDQ U8S8 MinMax; OpenVINO: NNCF). QAT (``mobilenets.deploy.qat``) is
calibrated on the same images, fine-tuned ``--qat-epochs`` over at most ``--qat-images``
training images (seeded sample of the training split, never the held-out one), converted once
and written for both runtimes; every int8 file is verified against PyTorch as ``export`` does.
Also times PTQ vs QAT int8 (batch 1, 1 thread): their QDQ placements differ. Writes
``benchmarks/results/qat_accuracy.json``.

    OMP_NUM_THREADS=1 python benchmarks/qat_accuracy.py RUN/best.safetensors --data folder:/work/cifar10
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from int8_accuracy import normalise, top1  # noqa: E402
from onnx_export_speed import RESULTS, machine  # noqa: E402


def main() -> None:
    import torch

    from mobilenets.data.datasets import load_data
    from mobilenets.deploy import qat
    from mobilenets.deploy.calibration import ImageSet
    from mobilenets.deploy.export import export, verify_export
    from mobilenets.deploy.runtimes import available_backends, interleaved_latency, open_session
    from mobilenets.weights.io import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", default="folder:/work/cifar10", help="the training data spec of the checkpoint")
    ap.add_argument("--val-size", type=float, default=None, help="as in `train` (default: the checkpoint's)")
    ap.add_argument("--seed", type=int, default=None, help="split seed as in `train` (default: the checkpoint's)")
    ap.add_argument("--calib-size", type=int, default=300)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--qat-images", type=int, default=10_000)
    ap.add_argument("--qat-lr", type=float, default=qat.DEFAULT_LR)
    ap.add_argument("--qat-batch", type=int, default=qat.DEFAULT_BATCH)
    ap.add_argument("--formats", default="onnx,openvino")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS / "qat_accuracy.json")
    args = ap.parse_args()

    t_start = time.perf_counter()
    model, meta = load_checkpoint(args.checkpoint)
    extra = meta.extra or {}
    val_size = args.val_size if args.val_size is not None else extra.get("val_size", 0.1)
    val_size = int(val_size) if val_size >= 1 else float(val_size)
    seed = args.seed if args.seed is not None else int(extra.get("split_seed", 0))
    pre = meta.preprocessing
    res = model.config.resolution
    t = time.perf_counter()
    splits = load_data(args.data, resolution=res, val_size=val_size, seed=seed, class_names=meta.class_names)
    load_s = time.perf_counter() - t
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(splits.train), size=min(args.calib_size, len(splits.train)), replace=False))
    idx = torch.from_numpy(pick)
    calib = ImageSet(normalise(splits.train.images[idx], pre), splits.train.labels[idx].numpy(), splits.class_names)
    xv, yv = normalise(splits.val.images, pre), splits.val.labels.numpy()
    print(f"{args.checkpoint}: {model.config.family} width {model.config.width}, {res}x{res}; calibration "
          f"{len(calib)} training images, QAT <= {args.qat_images} training images x {args.qat_epochs} epoch(s), "
          f"validation {len(yv)} held-out images ({splits.info.get('val')}; data loaded in {load_s:.0f}s)")
    out = {"machine": machine(), "checkpoint": str(args.checkpoint), "checkpoint_meta": extra, "data": args.data,
           "val_images": int(len(yv)), "calib_images": int(len(calib)), "split": splits.info,
           "torch_fp32_top1": top1(open_session(model), xv, yv), "runtimes": {}}
    print(f"  torch fp32 top-1 {out['torch_fp32_top1']:.2%}")

    # QAT once (calibrated on the PTQ calibration images), converted for every runtime below
    torch.manual_seed(seed)
    data = qat.load_training_data(splits.train, model, pre, max_images=args.qat_images, seed=seed)
    qm = qat.finetune(model, data, calib.images, epochs=args.qat_epochs, lr=args.qat_lr,
                      batch_size=args.qat_batch, pre=pre, seed=seed)
    with torch.no_grad():
        fq = torch.cat([qm.module(torch.from_numpy(xv[i:i + 500])) for i in range(0, len(xv), 500)])
    out["qat"] = {k: v for k, v in qm.info.items() if k != "data"} | {"train_images": len(data),
                                                                       "torch_fakequant_top1":
                                                                       float((fq.argmax(1).numpy() == yv).mean())}
    print(f"  QAT {qm.info['steps']} steps in {qm.info['time_s']:.0f}s; fake-quantized torch top-1 "
          f"{out['qat']['torch_fakequant_top1']:.2%}")

    installed = available_backends()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for fmt, backend in (("onnx", "onnxruntime"), ("openvino", "openvino")):
            if fmt not in args.formats.split(",") or not installed[backend]:
                continue
            f32 = export(model, fmt, tmp, batch="dynamic")
            ptq = export(model, fmt, tmp, batch="dynamic", int8=True, calib=calib)
            qat_path = tmp / f"qat{f32.path.suffix}"
            qat.save_int8(qm, fmt, qat_path, batch="dynamic")
            qat_path.with_suffix(".json").write_text(json.dumps({**json.loads(ptq.sidecar.read_text()),
                                                                 "qat": {"route": "pt2e"}}))
            check = verify_export(model, qat_path, backend, "int8", calib, res)
            s32, s_ptq, s_qat = open_session(f32.path), open_session(ptq.path), open_session(qat_path)
            a32, a_ptq, a_qat = top1(s32, xv, yv), top1(s_ptq, xv, yv), top1(s_qat, xv, yv)
            lat = interleaved_latency({"fp32": s32, "ptq": s_ptq, "qat": s_qat}, xv[:1], warmup=20,
                                      rounds=args.rounds, per_round=20)
            r = {"top1_fp32": a32, "top1_ptq_int8": a_ptq, "top1_qat_int8": a_qat,
                 "points_lost_ptq": 100 * (a32 - a_ptq), "points_lost_qat": 100 * (a32 - a_qat),
                 "qat_verification": check, "size_bytes": {"fp32": f32.size_bytes, "ptq": ptq.size_bytes,
                                                           "qat": sum(p.stat().st_size for p in (
                                                               qat_path, qat_path.with_suffix(".bin"))
                                                               if p.exists())},
                 "latency_ms": lat}
            out["runtimes"][backend] = r
            print(f"  {backend:12s} top-1 fp32 {a32:.2%}  PTQ int8 {a_ptq:.2%} ({r['points_lost_ptq']:+.2f} points "
                  f"lost)  QAT int8 {a_qat:.2%} ({r['points_lost_qat']:+.2f})  latency fp32 / PTQ / QAT "
                  f"{lat['fp32']['median_ms']:.3f} / {lat['ptq']['median_ms']:.3f} / {lat['qat']['median_ms']:.3f} ms")
    out["total_time_s"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
