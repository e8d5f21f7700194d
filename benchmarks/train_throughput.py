"""Training throughput, end to end (data included), images/s: our loop against the seed's.

mobilenet_v3_small 1.0 with the seed's CIFAR stem (stride 1 in the first three stride-2
layers, ~61M MACs per 32x32 image), batch 128, on a CIFAR-10 ImageFolder of JPEGs:

- ``seed``: the PyTorch MobileNetV3 seed's style: torchvision ImageFolder, per-image PIL
  decoding and augmentation (RandomCrop(32, 4), flip, ToTensor, Normalize) in a DataLoader,
  NCHW, fp32, default settings.
- ``ours fp32 NCHW`` / ``ours channels-last`` / ``ours channels-last + bf16``: images decoded
  once into a uint8 tensor, pad-crop + flip batched on tensors (``mobilenets.train.augment``),
  as ``mobilenets train`` does.
- ``+ fast depthwise``: depthwise weight gradients by the compiled loop of
  ``mobilenets.train.fastdw`` (on by default in ``mobilenets train``).
- ``2 processes x 1 thread``: the same loop under DistributedDataParallel (gloo), one thread per
  process, as ``torchrun --nproc_per_node 2 -m mobilenets train ... --threads 1`` runs it; the
  images/s are the sum over both processes (batch 128 each; and batch 64 each, the same global
  batch of 128 as the one-process rows).
- ``ceiling``: forward + backward + SGD step on one fixed batch (no data at all), fp32 and bf16,
  channels-last: what the cores can do with PyTorch's kernels.
- ``+ bf16 1x1 convs``: bf16 in the pointwise convolutions only (``mobilenets.train.mixed``,
  ``mobilenets train --bf16-pointwise``), where the CPU has bf16.
- ``+ compiled``: ``torch.compile`` of the model (inside DDP in the 2-process rows, its graph not
  split at DDP's buckets: ``mobilenets.train.distributed.wrap``), as ``mobilenets train --compile``
  does: Inductor fuses BN, the activations and the SE and residual arithmetic into C++ loops; the
  convolutions stay oneDNN's. The first step compiles (its seconds are recorded as ``warmup_s``,
  outside the images/s).
- ``+ freed memory kept``: malloc keeps freed memory (``mobilenets.train.allocator``, on by default
  in ``mobilenets train``), so the activation buffers of each step do not fault in anew. It is
  process-wide and cannot be undone, so these rows run last (or in their own processes).

Usage: python benchmarks/train_throughput.py [--data /work/cifar10/train] [--steps 25] [--threads 2]
Prints a table and writes benchmarks/results/train_throughput.json. Run it on a quiet machine:
other processes on the same cores slow OpenMP convolutions down a lot (the load average is
recorded).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import mobilenets
from mobilenets.core.hardware import cpu_has_bf16
from mobilenets.core.preprocessing import CIFAR10_MEAN, CIFAR10_STD, cifar
from mobilenets.data.datasets import decode_files, scan_folder
from mobilenets.train import distributed as D
from mobilenets.train import fastdw, mixed
from mobilenets.train.allocator import keep_freed_memory
from mobilenets.train.augment import AugmentConfig, augment, normalize
from mobilenets.train.config import resolve_config
from mobilenets.train.step import train_step

RESULTS = Path(__file__).parent / "results"


WARMUP_S: dict[str, float] = {}  # seconds of the warm-up steps of the compiled rows (compilation)


def model(channels_last: bool, fast_dw: bool = False, pw_bf16: bool = False):
    m = mobilenets.create_model("mobilenet_v3_small", num_classes=10, resolution=32, cifar_stem=True).train()
    m = m.to(memory_format=torch.channels_last) if channels_last else m
    if fast_dw:
        fastdw.enable(m)
    if pw_bf16:
        mixed.enable(m)
    return m


def timed(step_fn, batches, steps: int, warmup: int = 3, info: dict | None = None) -> float:
    """Images/s over ``steps`` steps after ``warmup`` (their seconds go to ``info["warmup_s"]``),
    data fetching included."""
    it = iter(batches)
    t = time.perf_counter()
    for _ in range(warmup):
        step_fn(*next(it))
    if info is not None:
        info["warmup_s"] = time.perf_counter() - t
    n, t = 0, time.perf_counter()
    for _ in range(steps):
        x, y = next(it)
        step_fn(x, y)
        n += len(y)
    return n / (time.perf_counter() - t)


def plain_step(net):
    """The seed's step: forward, cross-entropy, backward, SGD."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step(x, y):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def make_step(net, bf16: bool):
    """The engine's step (``mobilenets.train.step.train_step``), SGD."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    cfg = resolve_config(label_smoothing=0.0)

    def step(x, y):
        train_step(net, opt, x, y, cfg, bf16)
    return step


def seed_loop(root: Path, steps: int, workers: int) -> float:
    from torchvision import datasets, transforms
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    ds = datasets.ImageFolder(str(root), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True, num_workers=workers, drop_last=True)
    return timed(plain_step(model(False)), loader, steps)


def our_batches(data, channels_last: bool, seed: int = 0, batch: int = 128):
    pre, aug = cifar(32), AugmentConfig(pad_crop=4, flip=True)
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(data), generator=g)
        for i in range(0, len(perm) - batch + 1, batch):
            x, y = data.batch(perm[i:i + batch])
            yield normalize(augment(x, aug, pre, g), pre, channels_last), y


def our_loop(data, steps: int, channels_last: bool, bf16: bool, fast_dw: bool = False, pw_bf16: bool = False,
             compile: str | None = None) -> float:
    """One process; ``compile``: the row's name, to torch.compile the model and record its warm-up."""
    net, info = model(channels_last, fast_dw, pw_bf16), {}
    net = torch.compile(net) if compile else net
    out = timed(make_step(net, bf16), our_batches(data, channels_last), steps, info=info)
    if compile:
        WARMUP_S[compile] = info["warmup_s"]
    return out


def _ddp_worker(rank: int, world: int, port: int, data, steps: int, batch: int, keep: bool, pw_bf16: bool,
                compile: bool, out, warmup) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    if keep:
        keep_freed_memory()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        net = D.wrap(model(True, True, pw_bf16), D.Context(rank, world), compile)  # as mobilenets train does
        dist.barrier()
        info = {}
        out[rank] = timed(make_step(net, False), our_batches(data, True, seed=rank, batch=batch), steps, info=info)
        warmup[rank] = info["warmup_s"]
    finally:
        dist.destroy_process_group()


def ddp_loop(data, steps: int, procs: int = 2, batch: int = 128, keep: bool = False, pw_bf16: bool = False,
             compile: str | None = None) -> float:
    """Images/s summed over ``procs`` single-thread DDP processes of ``batch`` images each (``keep``:
    malloc keeps freed memory in them; ``pw_bf16``: bf16 in the 1x1 convolutions; ``compile``: the
    row's name, to torch.compile the model inside DDP and record the warm-up)."""
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out, warmup = manager.dict(), manager.dict()
    mp.spawn(_ddp_worker, args=(procs, port, data, steps, batch, keep, pw_bf16, bool(compile), out, warmup),
             nprocs=procs)
    if compile:
        WARMUP_S[compile] = max(warmup.values())
    return sum(out.values())


def ceiling(steps: int, bf16: bool, fast_dw: bool = False, pw_bf16: bool = False) -> float:
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    return timed(make_step(model(True, fast_dw, pw_bf16), bf16), iter(lambda: (x, y), None), steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/cifar10/train", help="ImageFolder tree of 32x32 JPEGs")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed-workers", type=int, default=0, help="DataLoader workers of the seed-style loop")
    ap.add_argument("--decode-limit", type=int, default=0, help="decode only this many images (0: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    files, labels, names = scan_folder(root)
    if args.decode_limit:
        every = max(1, len(files) // args.decode_limit)
        files, labels = files[::every], labels[::every]
    t = time.perf_counter()
    data = decode_files(files, labels, 32, names)
    decode_s = time.perf_counter() - t
    load = os.getloadavg()[0]
    rows = {}
    rows["seed (ImageFolder + PIL, NCHW fp32)"] = seed_loop(root, args.steps, args.seed_workers)
    rows["ours fp32 NCHW"] = our_loop(data, args.steps, False, False)
    rows["ours channels-last"] = our_loop(data, args.steps, True, False)
    rows["ours channels-last + fast depthwise"] = our_loop(data, args.steps, True, False, True)
    name = "ours channels-last + fast depthwise + compiled"
    rows[name] = our_loop(data, args.steps, True, False, True, compile=name)
    bf16 = cpu_has_bf16()
    if bf16:
        rows["ours channels-last + fast depthwise + bf16 1x1 convs"] = our_loop(data, args.steps, True, False, True,
                                                                                 True)
    if args.threads == 2:
        rows["ours 2 processes x 1 thread + fast depthwise"] = ddp_loop(data, args.steps)
        # the same global batch of 128 as the other rows, split over the two processes
        rows["ours 2 processes x 1 thread, batch 64 each + fast depthwise"] = ddp_loop(data, 2 * args.steps, batch=64)
        rows["ours 2 processes x 1 thread, batch 64 each + fast depthwise + freed memory kept"] = ddp_loop(
            data, 2 * args.steps, batch=64, keep=True)
        if bf16:
            rows["ours 2 processes x 1 thread, batch 64 each + fast depthwise + freed memory kept + bf16 1x1 convs"] \
                = ddp_loop(data, 2 * args.steps, batch=64, keep=True, pw_bf16=True)
        name = "ours 2 processes x 1 thread, batch 64 each + fast depthwise + freed memory kept + compiled"
        rows[name] = ddp_loop(data, 2 * args.steps, batch=64, keep=True, compile=name)
        if bf16:
            name = name.replace("kept +", "kept + bf16 1x1 convs +")
            rows[name] = ddp_loop(data, 2 * args.steps, batch=64, keep=True, pw_bf16=True, compile=name)
    if bf16:
        rows["ours channels-last + bf16"] = our_loop(data, args.steps, True, True)
    rows["ceiling fp32 channels-last (no data)"] = ceiling(args.steps, False)
    rows["ceiling fp32 channels-last + fast depthwise (no data)"] = ceiling(args.steps, False, True)
    if bf16:
        rows["ceiling bf16 channels-last (no data)"] = ceiling(args.steps, True)
    if keep_freed_memory():  # process-wide from here on
        rows["ours channels-last + fast depthwise + freed memory kept"] = our_loop(data, args.steps, True, False, True)
        rows["ceiling fp32 channels-last + fast depthwise + freed memory kept (no data)"] = ceiling(
            args.steps, False, True)
        if bf16:
            rows["ceiling channels-last + fast depthwise + freed memory kept + bf16 1x1 convs (no data)"] = ceiling(
                args.steps, False, True, True)
    base = rows["seed (ImageFolder + PIL, NCHW fp32)"]
    per_epoch = 50_000
    print(f"decoded {len(data)} images once in {decode_s:.1f}s "
          f"({decode_s / len(data) * 1e3:.2f} ms/image; amortised over an epoch of {per_epoch} images)")
    w = max(map(len, rows))
    print(f"{'loop':{w}s} {'img/s':>8s} {'x seed':>7s}")
    for k, v in rows.items():
        print(f"{k:{w}s} {v:8.0f} {v / base:7.2f}")
    for k, v in WARMUP_S.items():
        print(f"warm-up (compilation) of {k!r}: {v:.0f} s")
    best = max(v for k, v in rows.items() if k.startswith("ours"))
    epoch_s = per_epoch / best + decode_s * per_epoch / len(data)
    out = {"model": "mobilenet_v3_small 1.0, seed CIFAR stem (cifar_stem=3), 32x32, batch 128",
           "threads": args.threads, "steps": args.steps, "load_avg_1min_at_start": load,
           "load_avg_1min_at_end": os.getloadavg()[0], "torch": torch.__version__, "cpu_bf16": bf16,
           "machine": platform.processor() or platform.machine(), "decode_s": decode_s, "decoded": len(data),
           "images_per_s": rows, "ratio_vs_seed": {k: v / base for k, v in rows.items()},
           "warmup_s_of_compiled_rows": WARMUP_S,
           "best_ours_incl_decode_amortised_over_one_epoch": per_epoch / epoch_s,
           "best_over_fp32_ceiling": best / rows["ceiling fp32 channels-last (no data)"],
           "flop_ceiling_note": "the issue's ~6x is the fp32 FLOP peak of two cores; the 'ceiling' rows are "
                                "PyTorch's kernels on one fixed batch"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps(out, indent=1))
    print(f"best of ours / seed: {best / base:.2f}x; / fp32 ceiling: {out['best_over_fp32_ceiling']:.2f}; "
          f"with the one-time decode amortised over one epoch: "
          f"{out['best_ours_incl_decode_amortised_over_one_epoch']:.0f} img/s; "
          f"load average {load:.1f} -> {out['load_avg_1min_at_end']:.1f}")


if __name__ == "__main__":
    main()
