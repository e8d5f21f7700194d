"""Our ONNX export against torchvision's own ``torch.onnx`` export of the same architecture, on ONNX Runtime.

MobileNetV2 1.0 and V3-Large 1.0 at 224, batch 1, 1 thread. The two files hold the same weights
(torchvision's, converted into ours) and are checked to give the same logits; then they are timed
in alternating rounds of ``--per-round`` runs each (the machine is shared and noisy: the result is
the median over rounds of the per-round ratio, with medians, p90 and minima of both).
Writes ``benchmarks/results/onnx_export_speed.json``.

    OMP_NUM_THREADS=1 python benchmarks/onnx_export_speed.py [--rounds 300] [--per-round 2]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

MODELS = {"mobilenet_v2": "mobilenet_v2", "mobilenet_v3_large": "mobilenet_v3_large"}
RESULTS = Path(__file__).parent / "results"


def pair(name: str, seed: int = 0):
    """(torchvision model, our model with the same weights), both in eval mode."""
    import torchvision

    from mobilenets import convert
    torch.manual_seed(seed)
    tv = getattr(torchvision.models, MODELS[name])().eval()
    with torch.no_grad():  # non-trivial BN statistics so that the comparison means something
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours = convert(tv.state_dict(), "torchvision", name).eval()
    return tv, ours


def torchvision_onnx(tv: torch.nn.Module, path: Path, res: int = 224) -> Path:
    """torchvision's model exported the way its users do: ``torch.onnx.export`` with its defaults."""
    from mobilenets.deploy.common import quiet
    with quiet():
        torch.onnx.export(tv, (torch.zeros(1, 3, res, res),), str(path), dynamo=True, input_names=["input"],
                          output_names=["logits"])
    return path


def ops(path: Path) -> dict[str, int]:
    import onnx
    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def machine() -> dict:
    import onnxruntime
    info = {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "cpu": platform.processor() or platform.machine()}
    try:
        import openvino
        info["openvino"] = openvino.get_version()
    except ImportError:
        pass
    return info


def main() -> None:
    from mobilenets.deploy.export import export
    from mobilenets.deploy.runtimes import interleaved_times, open_session, paired_ratio, summarize

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--per-round", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--out", type=Path, default=RESULTS / "onnx_export_speed.json")
    args = ap.parse_args()
    results = {"machine": machine(), "threads": 1, "batch": 1, "resolution": 224, "rounds": args.rounds,
               "per_round": args.per_round, "models": {}}
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            tv, ours = pair(name)
            f_ours = export(ours, "onnx", Path(tmp) / f"{name}-ours.onnx").path
            f_tv = torchvision_onnx(tv, Path(tmp) / f"{name}-tv.onnx")
            s = {"ours": open_session(f_ours), "torchvision": open_session(f_tv)}
            diff = float(np.abs(s["ours"].run(x) - s["torchvision"].run(x)).max())
            times = interleaved_times(s, x, warmup=args.warmup, rounds=args.rounds, per_round=args.per_round)
            lat = {k: summarize(v) for k, v in times.items()}
            ratio = paired_ratio(times, "torchvision", "ours", args.per_round)
            results["models"][name] = {"latency_ms": lat, "speedup_vs_torchvision": ratio,
                                       "speedup_of_medians": lat["torchvision"]["median_ms"] / lat["ours"]["median_ms"],
                                       "speedup_of_minima": lat["torchvision"]["min_ms"] / lat["ours"]["min_ms"],
                                       "max_abs_diff": diff, "ops": {"ours": ops(f_ours), "torchvision": ops(f_tv)}}
            print(f"{name:20s} ours {lat['ours']['median_ms']:6.2f} ms (p90 {lat['ours']['p90_ms']:.2f}, "
                  f"min {lat['ours']['min_ms']:.2f})  torchvision {lat['torchvision']['median_ms']:6.2f} ms "
                  f"(p90 {lat['torchvision']['p90_ms']:.2f}, min {lat['torchvision']['min_ms']:.2f})  "
                  f"ours is {ratio:.2f}x as fast (paired rounds)  (logits max diff {diff:.1e})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
