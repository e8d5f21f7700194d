"""The 60-minute CIFAR-10 recipe: train on the real training split, 5,000 images held out.

Runs ``mobilenets train --recipe cifar10_60min`` (two single-thread processes under torchrun by
default: on 2 shared cores they held up better than one process with two threads), then
summarises the run directory: model, recipe, epochs, wall time, best and last validation top-1
and the per-epoch curve. ``--collect RUN_DIR`` only summarises a finished (or running) run;
``--table`` writes ``results/cifar10_runs.md``, one line per results file of this script (every
60-minute run we kept), from the JSON files alone.

Usage:
  python benchmarks/cifar10_recipe.py --data /work/cifar10 --output /work/runs/cifar10_60min
  python benchmarks/cifar10_recipe.py --collect /work/runs/cifar10_60min
  python benchmarks/cifar10_recipe.py --table
Prints a summary and writes benchmarks/results/cifar10_recipe.json and its _curves.png
(``--name`` to keep the figures of a variant beside them).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mobilenets.train.config import TrainConfig
from mobilenets.train.recipes import RECIPES

RESULTS = Path(__file__).parent / "results"


def launch(args) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    train = ["-m", "mobilenets", "train", "--recipe", args.recipe, "--data", f"folder:{args.data}",
             "--threads", str(args.threads), "--output", str(args.output)]
    if args.nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", *train]
    else:
        cmd = [sys.executable, *train]
    print(" ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    print(f"wall time {(time.perf_counter() - t) / 60:.1f} min (process start to end)")


def collect(run: Path, name: str = "cifar10_recipe") -> dict:
    config = json.loads((run / "config.json").read_text())
    history = json.loads((run / "metrics.json").read_text())
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else None
    validated = [r for r in history if r["val_top1"] is not None]  # --val-every skips some epochs
    best = max(validated, key=lambda r: r["val_top1"])
    out = {"run_dir": str(run), "finished": summary is not None, "model": config["model"],
           "width": config["width"], "cifar_stem": config["cifar_stem"], "recipe": config["recipe"],
           "recipe_config": {k: config[k] for k in ("epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov",
                                                    "weight_decay", "schedule", "warmup_epochs", "label_smoothing",
                                                    "ema_decay", "pad_crop", "flip", "cutout", "bf16", "channels_last",
                                                    "time_budget_min", "val_every", "seed") if k in config}
           | {k: config.get(k, False) for k in ("fast_depthwise", "keep_memory", "tta", "dropout",
                                                "no_decay_depthwise", "zero_init_residual", "bf16_pointwise",
                                                "compile", "resize_from")},
           "world_size": config["resolved"]["world_size"], "threads": config["resolved"]["threads"],
           "data": config["resolved"]["data"], "epochs_done": len(history),
           "best_val_top1": best["val_top1"], "best_epoch": best["epoch"], "last_val_top1": history[-1]["val_top1"],
           "wall_time_min": (summary["wall_time_s"] if summary else history[-1]["elapsed_s"]) / 60,
           "mean_images_per_s": sum(r["images_per_s"] for r in history) / len(history),
           "curve": [{k: round(r[k], 4) for k in ("epoch", "lr", "train_loss", "val_loss", "val_top1",
                                                  "val_top1_single", "elapsed_s") if r.get(k) is not None}
                     for r in history]}
    if "val_top1_single" in best:  # validated with TTA: the single-view figures too
        out["best_val_top1_single_view"] = max(r["val_top1_single"] for r in validated)
        out["last_val_top1_single_view"] = history[-1]["val_top1_single"]
    if (run / "curves.png").is_file():
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{name}_curves.png").write_bytes((run / "curves.png").read_bytes())
    return out


# The options the runs varied; a flag is shown where a run's value differs from the preset's. A
# --seed changes the initialisation, the batches and which 5,000 images are held out.
VARIED = ("cutout", "bf16_pointwise", "compile", "no_decay_depthwise", "zero_init_residual", "resize_from", "dropout",
          "flip", "weight_decay", "label_smoothing", "lr", "ema_decay", "warmup_epochs", "seed",
          "schedule")
NEGATED = {"bf16_pointwise": "--fp32-pointwise"}  # where the CLI's off switch is not --no-KEY
PRESET = TrainConfig.from_dict({**TrainConfig().to_dict(), **RECIPES["cifar10_60min"]})


def _differs(key: str, value) -> bool:
    if key == "flip" and value is True:  # "random", in runs of earlier versions
        value = "random"
    return value != getattr(PRESET, key)


def _flag(key: str, value) -> str:
    """The command-line flag that sets ``key`` to ``value`` (``--compile``, ``--no-compile``, ``--cutout 8``)."""
    if value is False:
        return NEGATED.get(key, f"--no-{key.replace('_', '-')}")
    return f"--{key.replace('_', '-')}" + ("" if value is True else f" {value}")


def table() -> str:
    """A markdown table of every ``cifar10_recipe*.json`` in ``results/``, best first."""
    runs = []
    for path in RESULTS.glob("cifar10_recipe*.json"):
        r = json.loads(path.read_text())
        flags = [_flag(k, v) for k, v in r["recipe_config"].items() if k in VARIED and _differs(k, v)]
        runs.append((r["best_val_top1"], path.stem, r, " ".join(flags)))
    lines = ["| results file | run | model | width | flags beyond the preset | epochs | minutes | img/s | best top-1 "
             "(6 views) | single view |", "|---|---|---|---|---|---|---|---|---|---|"]
    for best, stem, r, flags in sorted(runs, key=lambda t: -t[0]):
        lines.append(f"| {stem} | {Path(r['run_dir']).name} | {r['model']} | {r['width']} | {flags or '-'} | "
                     f"{r['epochs_done']} | "
                     f"{r['wall_time_min']:.1f} | {r['mean_images_per_s']:.0f} | {best:.2f} | "
                     f"{r.get('best_val_top1_single_view', float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/cifar10", help="folder with train/<class>/*.jpg (no val/)")
    ap.add_argument("--output", type=Path, default=Path("/work/runs/cifar10_60min"))
    ap.add_argument("--recipe", default="cifar10_60min")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--collect", type=Path, help="only summarise this run directory")
    ap.add_argument("--name", default="cifar10_recipe", help="results file name (without .json)")
    ap.add_argument("--table", action="store_true", help="only write results/cifar10_runs.md from the results")
    args = ap.parse_args()
    if args.table:
        text = table()
        (RESULTS / "cifar10_runs.md").write_text("# 60-minute CIFAR-10 runs (45k/5k split, 2 CPU cores)\n\n"
                                                 "Written by `python benchmarks/cifar10_recipe.py --table`.\n\n"
                                                 + text)
        print(text)
        return
    if args.collect is None:
        launch(args)
    out = collect(args.collect or args.output, args.name)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=1))
    print(f"{out['model']} stem {out['cifar_stem']} recipe {out['recipe']}: {out['epochs_done']} epochs in "
          f"{out['wall_time_min']:.1f} min, best val top-1 {out['best_val_top1']:.2f}% (epoch {out['best_epoch']}), "
          f"last {out['last_val_top1']:.2f}%, {out['mean_images_per_s']:.0f} img/s"
          + (f" (TTA {out['recipe_config']['tta']}; single view: best {out['best_val_top1_single_view']:.2f}%, "
             f"last {out['last_val_top1_single_view']:.2f}%)" if "best_val_top1_single_view" in out else ""))
    for r in out["curve"]:
        single = f" (single {r['val_top1_single']:.2f}%)" if "val_top1_single" in r else ""
        val = f"val top-1 {r['val_top1']:.2f}%{single}" if "val_top1" in r else "(not validated)"
        print(f"  epoch {r['epoch']:3d}  lr {r['lr']:.4f}  train loss {r['train_loss']:.3f}  "
              f"{val}  {r['elapsed_s'] / 60:5.1f} min")


if __name__ == "__main__":
    main()
