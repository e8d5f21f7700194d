"""Issue 6's figure: our fastest fp32 path against the best peer fp32 path, same run, same machine.

MobileNetV1 1.0, V2 1.0, V3-Large 1.0 and V3-Small 1.0 at 224, batch 1, 1 thread, on every
installed runtime (ours: our exports; peers: timm's V1, torchvision's V2/V3 exported the way their
users export them). With ``--int8`` our int8 exports join the grid. Every cell is measured afresh
(the measurement cache is bypassed): the figures of one run are compared with each other. Prints
one line per model and writes everything to ``benchmarks/results/latency_vs_peers.json``.

    OMP_NUM_THREADS=1 python benchmarks/latency_vs_peers.py [--iters 1000] [--int8]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mobilenets.core.files import atomic_write_text
from mobilenets.measure.bench import bench

MODELS = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]


def _progress():
    """Print each new step of the bench (what is exported or timed) once."""
    last = [None]

    def show(label: str, done: float, total: float) -> None:
        if label != last[0]:
            print(label, flush=True)
            last[0] = label
    return show


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--backends", default=None, help="comma list (default: every installed one)")
    ap.add_argument("--int8", action="store_true", help="add our int8 exports")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latency_vs_peers.json")
    args = ap.parse_args()
    report = bench(MODELS, backends=args.backends.split(",") if args.backends else None,
                   precisions=["fp32", "int8"] if args.int8 else ["fp32"], peers=True, warmup=args.warmup,
                   iters=args.iters, rounds=args.rounds, fresh=True, progress=_progress())
    summary = []
    for name in MODELS:
        ours, peer = report.best(name, impl="mobilenets"), report.best(name, impl="peer")
        line = dict(model=name, ours_backend=ours.backend, ours_ms=ours.timing.median_ms,
                    ours_p90_ms=ours.timing.p90_ms, gemm_floor_ms=ours.floor_ms,
                    gemm_floor_fraction=ours.floor_ms / ours.timing.median_ms)
        if peer:
            line.update(peer=f"{peer.impl} {peer.peer_model}", peer_backend=peer.backend,
                        peer_ms=peer.timing.median_ms, speedup=peer.timing.median_ms / ours.timing.median_ms)
        q = report.best(name, impl="mobilenets", precision="int8")
        if q:
            line.update(int8_backend=q.backend, int8_ms=q.timing.median_ms)
        summary.append(line)
        print(f"{name:20s} ours {ours.timing.median_ms:6.2f} ms ({ours.backend})"
              + (f"  best peer {peer.timing.median_ms:6.2f} ms ({peer.impl} on {peer.backend})"
                 f"  speedup {line['speedup']:.2f}x" if peer else "")
              + f"  GEMM floor {ours.floor_ms:.2f} ms ({line['gemm_floor_fraction']:.0%} of it reached)"
              + (f"  int8 {q.timing.median_ms:.2f} ms ({q.backend})" if q else ""))
    for row in sorted(report.rows, key=lambda r: (r.model, r.impl, r.backend, r.precision)):
        print(f"  {row.model:20s} {row.impl:12s} {row.backend:12s} {row.precision:5s} "
              f"median {row.timing.median_ms:6.2f}  p90 {row.timing.p90_ms:6.2f}  spread {row.timing.spread:4.0%}")
    for w in report.warnings:
        print("warning:", w)
    atomic_write_text(args.out, json.dumps({"summary": summary, **report.to_dict()}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
