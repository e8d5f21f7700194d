"""Quantization-aware fine-tuning (QAT): the path for when post-training int8 loses too much.

As the TF-slim seed does, QAT starts from a trained float model, simulates int8 in the forward
pass (fake quantization, straight-through gradients) and fine-tunes a little with a small
learning rate, so the weights settle where int8 rounding hurts least. The route is PyTorch's
PT2E flow (``torch.export`` -> ``prepare_qat_pt2e`` -> train -> ``convert_pt2e``), via torchao:

1. ``prepare``: the inference graph of ``graph.deploy_module`` (BN folded into the convs,
   dropout gone, head as 1x1 convs: the graph that is exported) is captured by ``torch.export``
   with a dynamic batch and annotated (``quantizer``) with ONNX Runtime's U8S8 QDQ recipe of
   ``quantize.quantize_onnx``: uint8 asymmetric per-tensor activations, int8 symmetric
   per-channel weights in [-127, 127], Q/DQ where ``quantize_static`` puts them; OpenVINO's CPU
   plugin runs the same scheme (NNCF's default for CPU: symmetric per-channel int8 weights).
2. ``finetune``: calibration (``calib_size`` images through the observers, no gradient), then
   ``epochs`` of SGD (cosine to 0, momentum 0.9) on labelled data, with training's batching,
   augmentation, normalisation and schedule (``mobilenets.train``: ``batches``, ``augment``,
   ``schedule``, ``optim``); the
   observers are frozen for the second half so the last steps train against the final ranges.
3. ``save_int8``: ``convert_pt2e`` (int8 weights + QuantizeLinear / DequantizeLinear), exported
   with the package's ONNX exporter (``runtimes.onnxruntime.to_onnx``) as a QDQ model for ONNX Runtime; for
   OpenVINO the same QDQ ONNX is read by ``openvino.convert_model``, which turns each Q/DQ pair
   into a FakeQuantize its CPU plugin executes as int8 convolutions.

Why BN is folded first: the fine-tuned graph is then exactly the deployed one (no train/eval
BN mismatch, no BN statistics drifting with small batches, no folding after quantization that
would move the weights off the learned grid); with a converged model, a small learning rate
and a few epochs, the normalisation BN gives to training is not needed.

Why not NNCF's PyTorch QAT: its fake quantizers are a C++ extension compiled on first use (a
compiler required, slow to build and load); PT2E is plain PyTorch and its one graph serves
both runtimes.

This module trains and writes files; the verified, atomically installed export is
``export.qat_finetune`` (also ``export(..., int8=True, qat_epochs=N)`` and ``mobilenets export
--int8 --calib DATA --qat-epochs N``).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import UsageError
from ..core.preprocessing import preprocessing_of
from ..data.datasets import ImageTensors, LazyImageFolder, load_data, parse_data_spec
from ..train.augment import AugmentConfig, augment, mirror, normalize
from ..train.batches import seeded, train_batches
from ..train.distributed import Context
from ..train.optim import make_optimizer
from ..train.qat import QATNet, quantizer
from ..train.report import Reporter
from ..train.schedule import lr_at
from .calibration import ImageSet, load_images
from .common import quiet
from .graph import deploy_module
from .runtimes.onnxruntime import to_onnx
from .runtimes.openvino import onnx_to_openvino

DEFAULT_LR = 1e-3
DEFAULT_BATCH = 64
DEFAULT_MAX_IMAGES = 10_000
OBSERVE_FRACTION = 0.5  # observers follow the activations for this share of the steps, then freeze
FORMATS = ("onnx", "openvino")


def require() -> None:
    """torchao's PT2E, or a one-line ``UsageError`` saying what to install."""
    try:
        import torchao.quantization.pt2e  # noqa: F401
    except ImportError:
        raise UsageError("quantization-aware fine-tuning needs torchao (PT2E): pip install torchao") from None


@dataclass
class TrainingData:
    """Labelled images for fine-tuning: ``tensors`` (uint8, the engine's data sets) or ``images``
    (normalised float32 N x C x H x W from ``calibration.load_images``) with ``labels``."""
    tensors: object = None
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    kind: str = "cifar"  # the data's preprocessing kind (pad-crop augmentation for "cifar")
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tensors) if self.tensors is not None else len(self.images)


@dataclass
class QATModel:
    """A fake-quantized model (``module``: a ``torch.fx.GraphModule``) and what its fine-tuning did."""
    module: torch.nn.Module
    example: torch.Tensor
    nhwc: bool = False
    info: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# data


def load_training_data(data, net, pre, *, max_images: int | None = DEFAULT_MAX_IMAGES, val_size=None,
                       seed: int = 0) -> TrainingData:
    """The labelled training images of ``data`` for ``net``, at most ``max_images`` (seeded sample).

    ``data``: a ``train --data`` spec (``folder:PATH``, ``cifar10:PATH``, ``synthetic:N``; its
    training split only: for a folder without ``val/`` the held-out share is the checkpoint's own
    when it records one, else ``val_size``/``seed`` as ``train`` uses them), a folder of class
    folders, a labelled ``calibration.ImageSet``, or a data set of ``mobilenets.data.datasets``
    (``ImageTensors``, ``LazyImageFolder``: used as given). Unlabelled data is a ``UsageError``.
    """
    if max_images is not None and max_images < 1:
        raise UsageError(f"QAT needs at least one training image, got max_images={max_images}")
    num_classes = net.config.num_classes
    model_names = _model_class_names(net)
    if isinstance(data, TrainingData):
        out = data
    elif isinstance(data, (ImageTensors, LazyImageFolder)):
        part = data
        if max_images is not None and len(part) > max_images:
            idx = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed))[:max_images].sort().values
            part = part.subset(idx)
        kind = part.pre.kind if isinstance(part, LazyImageFolder) else pre.kind
        out = TrainingData(tensors=part, class_names=list(part.class_names), kind=kind,
                           info={"data": type(data).__name__, "train_images_available": len(data)})
    elif isinstance(data, ImageSet):
        if data.labels is None:
            raise UsageError("QAT fine-tuning needs labelled data: these images have no labels (pass a dataset "
                             "spec such as folder:PATH or a folder of class folders)")
        out = TrainingData(images=data.images[:max_images], labels=np.asarray(data.labels[:max_images]),
                           class_names=data.class_names, kind=pre.kind, info={"data": data.source or "images"})
    elif isinstance(data, np.ndarray) or data is None:
        raise UsageError("QAT fine-tuning needs labelled data: pass a dataset spec (folder:PATH, cifar10:PATH, "
                         "synthetic:N) or a folder of class folders, not bare images")
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if (not path.exists() and ":" in str(data)) or (path / "train").is_dir():
            out = _from_spec(str(data), net, pre, max_images, val_size, seed, model_names, num_classes)
        elif path.is_dir():
            s = load_images(path, pre, limit=max_images, seed=seed)
            if s.labels is None:
                raise UsageError(f"QAT fine-tuning needs labelled data: {path} holds no class folders "
                                 f"(use {path}/<class>/<image> or a dataset spec)")
            out = TrainingData(images=s.images, labels=s.labels, class_names=s.class_names, kind=pre.kind,
                               info={"data": str(path)})
        else:
            raise UsageError(f"QAT training data {str(data)!r}: no such directory or dataset spec")
    else:
        raise UsageError(f"QAT training data must be a dataset spec, a folder or an ImageSet, "
                         f"got {type(data).__name__}")
    if len(out) == 0:
        raise UsageError(f"QAT training data {out.info.get('data')!r} has no images")
    _check_labels(out, model_names, num_classes)
    out.info["images"] = len(out)
    return out


def _from_spec(spec, net, pre, max_images, val_size, seed, model_names, num_classes) -> TrainingData:
    parsed = parse_data_spec(spec)
    extra = getattr(getattr(net, "checkpoint_meta", None), "extra", None) or {}
    if val_size is None:
        same = extra.get("data") == str(parsed) or extra.get("data") == spec
        val_size = extra.get("val_size", 0.1) if same else 0.1
        seed = int(extra.get("split_seed", seed)) if same else seed
    if isinstance(val_size, float) and val_size >= 1:
        val_size = int(val_size)
    kw = {"class_names": model_names} if parsed.kind == "folder" and model_names else {}
    splits = load_data(parsed, resolution=pre.resolution, val_size=val_size, seed=seed, num_classes=num_classes,
                       **kw)
    part = splits.train
    if max_images is not None and len(part) > max_images:
        idx = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed))[:max_images].sort().values
        part = part.subset(idx)
    info = {"data": str(parsed), "split": dict(splits.info), "train_images_available": len(splits.train)}
    return TrainingData(tensors=part, class_names=list(splits.class_names), kind=splits.preprocessing.kind, info=info)


def _model_class_names(net) -> list[str] | None:
    names = getattr(getattr(net, "checkpoint_meta", None), "class_names", None)
    return list(names) if names and len(names) == net.config.num_classes else None


def _check_labels(data: TrainingData, model_names, num_classes: int) -> None:
    labels = data.tensors.labels if data.tensors is not None else data.labels
    labels = torch.as_tensor(np.asarray(labels))
    if model_names and data.class_names and list(data.class_names) != list(model_names):
        if any(c not in model_names for c in data.class_names):
            missing = [c for c in data.class_names if c not in model_names]
            raise UsageError(f"QAT data has classes the model does not know: {', '.join(missing[:5])}")
        remap = torch.tensor([model_names.index(c) for c in data.class_names])
        if data.tensors is not None:  # a copy: the caller's data set keeps its labels
            old = data.tensors.labels
            data.tensors = copy.copy(data.tensors)
            new = remap[torch.as_tensor(np.asarray(old))]
            data.tensors.labels = new if isinstance(old, torch.Tensor) else new.tolist()
        else:
            data.labels = remap[torch.as_tensor(data.labels)].numpy()
        labels = remap[labels]
    if len(labels) and int(labels.max()) >= num_classes:
        raise UsageError(f"QAT data has label {int(labels.max())} but the model has {num_classes} classes")


# ------------------------------------------------------------------------------------------
# prepare, fine-tune, convert


def prepare(net, *, resolution: int | None = None, nhwc: bool = False) -> QATModel:
    """The BN-folded inference graph of ``net`` with fake quantizers, ready to calibrate and train."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    res = int(resolution or net.config.resolution)
    chans = net.config.in_chans
    deploy = deploy_module(net, nhwc=nhwc)
    example = torch.zeros((2, res, res, chans) if nhwc else (2, chans, res, res))
    dims = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    with quiet():
        try:
            gm = torch.export.export(deploy, (example,), dynamic_shapes=dims).module()
            gm = prepare_qat_pt2e(gm, quantizer("onnxruntime"))
        except Exception as exc:  # noqa: BLE001 - one line, as the exporters report
            raise UsageError(f"QAT preparation (torch.export + prepare_qat_pt2e) failed: "
                             f"{str(exc).strip().splitlines()[0][:300]}") from exc
    for p in gm.parameters():
        p.requires_grad_(True)
    return QATModel(gm, example, nhwc, {"route": "pt2e", "quantizer": "ORT QDQ placement (train.qat.quantizer)",
                                        "scheme": "activations u8 asymmetric per-tensor, weights s8 symmetric "
                                                  "per-channel [-127, 127]", "bn": "folded before QAT"})


def _set_observers(module: torch.nn.Module, enabled: bool) -> None:
    from torchao.quantization.pt2e import disable_observer, enable_observer
    module.apply(enable_observer if enabled else disable_observer)


def _float_batches(data: TrainingData, batch_size: int, epoch: int, seed: int, pre, aug):
    """Normalised float32 batches and labels of one epoch (the last partial batch dropped, as in
    training), drawn from generators seeded by (``seed``, ``epoch``) as training draws them."""
    b = min(batch_size, len(data))
    if data.tensors is not None:
        g = seeded(seed, epoch, 0, 101)
        aug_pre = dataclasses.replace(pre, kind=data.kind)
        for x, y, _ in train_batches(data.tensors, batch_size=b, seed=seed, epoch=epoch, ctx=Context(),
                                     flip="random", workers=2):
            if len(y):
                yield normalize(augment(x, aug, aug_pre, g), pre), y
        return
    g = seeded(seed, epoch, 17)
    perm = torch.randperm(len(data), generator=g)
    images, labels = torch.from_numpy(data.images), torch.as_tensor(data.labels)
    for i in range(max(len(perm) // b, 1)):
        idx = perm[i * b:(i + 1) * b]
        x = images[idx]
        if aug.flip:
            x = mirror(x, torch.rand(len(idx), generator=g) < 0.5)
        yield x, labels[idx]


def finetune(net, data: TrainingData, calib: np.ndarray, *, epochs: int = 1, lr: float = DEFAULT_LR,
             batch_size: int = DEFAULT_BATCH, resolution: int | None = None, nhwc: bool = False, seed: int = 0,
             pre=None, reporter=None) -> QATModel:
    """Prepare ``net`` for QAT, calibrate on ``calib`` (normalised NCHW float32), then fine-tune
    ``epochs`` over ``data`` with SGD (momentum 0.9, Nesterov, cosine from ``lr`` to 0)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    check_schedule(epochs, lr, batch_size)
    reporter = reporter or Reporter()
    res = int(resolution or net.config.resolution)
    pre = pre or preprocessing_of(net, res)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    qm = prepare(net, resolution=res, nhwc=nhwc)
    gm = qm.module

    def to_layout(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).contiguous() if nhwc else x

    # calibration: the observers see calib_size images before any step (fake quantization on)
    _set_observers(gm, True)
    with torch.no_grad():
        for i in range(0, len(calib), batch_size):
            gm(to_layout(torch.from_numpy(np.ascontiguousarray(calib[i:i + batch_size]))))
    optimizer = make_optimizer(gm, optimizer="sgd", lr=lr, momentum=0.9, nesterov=True, weight_decay=0.0)
    aug = AugmentConfig(pad_crop=4, flip=True)
    spe = max(len(data) // min(batch_size, len(data)), 1)
    total, step, history = epochs * spe, 0, []
    freeze_at = int(math.ceil(OBSERVE_FRACTION * total))
    reporter.log(f"QAT: {len(data)} labelled images, {epochs} epoch(s) of {spe} steps, batch {batch_size}, "
                 f"lr {lr:g} (cosine), calibration {len(calib)} images")
    move_exported_model_to_train(gm)  # no dropout or BN left: a no-op kept for the graph's contract
    for epoch in range(1, epochs + 1):
        te = time.perf_counter()
        loss_sum = correct = seen = 0.0
        for x, y in _float_batches(data, batch_size, epoch, seed, pre, aug):
            if step == freeze_at:
                _set_observers(gm, False)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, lr=lr, schedule="cosine")
            logits = gm(to_layout(x))
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise UsageError(f"QAT loss is {loss.item()} at step {step}: lower the learning rate (--qat-lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_top1": 100 * correct / max(seen, 1),
               "images": int(seen), "time_s": time.perf_counter() - te}
        history.append(row)
        reporter.log(f"QAT epoch {epoch}/{epochs}: loss {row['train_loss']:.4f}  train top-1 "
                     f"{row['train_top1']:.2f}% (fake-quantized, augmented)  {row['time_s']:.0f}s")
    _set_observers(gm, False)
    move_exported_model_to_eval(gm)
    qm.info.update(epochs=epochs, lr=lr, batch_size=batch_size, steps=step, observers_frozen_at_step=freeze_at,
                   calib_images=int(len(calib)), data=data.info, history=history, seed=seed,
                   time_s=time.perf_counter() - t0)
    return qm


def check_schedule(epochs, lr, batch_size) -> None:
    """A one-line ``UsageError`` for a fine-tuning schedule that cannot run (checked before any work)."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise UsageError(f"QAT epochs must be a non-negative integer, got {epochs!r}")
    if not lr > 0:
        raise UsageError(f"QAT learning rate must be > 0, got {lr}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"QAT batch size must be a positive integer, got {batch_size!r}")


def save_int8(qm: QATModel, fmt: str, path: str | os.PathLike, *, batch: int | str = 1, opset: int = 18,
              verbose: bool = False) -> Path:
    """``convert_pt2e`` a copy of the fine-tuned model and write it as an int8 ``fmt`` file:
    ONNX QDQ, or an OpenVINO IR converted from that QDQ graph (FakeQuantize -> int8 kernels)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if fmt not in FORMATS:
        raise UsageError(f"QAT exports {' or '.join(FORMATS)}, not {fmt!r} (TFLite int8 is post-training only)")
    path = Path(path)
    with quiet():
        converted = convert_pt2e(copy.deepcopy(qm.module))
    fixed = 2 if batch == "dynamic" else int(batch)
    example = torch.zeros((fixed, *qm.example.shape[1:]))
    return _write_qdq(converted, example, fmt, path, batch=batch, opset=opset, verbose=verbose)


def save_learned_int8(net, fmt: str, path: str | os.PathLike, *, batch: int | str = 1, opset: int = 18,
                      verbose: bool = False) -> Path:
    """The int8 ``fmt`` file of a quantization-aware checkpoint (``train --qat``): its graph prepared
    again for the recorded backend, its learned quantization state loaded, converted without
    calibration: ONNX QDQ / OpenVINO IR (``onnxruntime``, ``openvino``) or TFLite (``litert``)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    record = dict(net.checkpoint_meta.extra.get("qat") or {})
    backend = record.get("backend", "onnxruntime")
    wanted = "litert" if fmt == "tflite" else "onnxruntime or openvino"
    if (fmt == "tflite") != (backend == "litert"):
        raise UsageError(f"this checkpoint learned {backend}'s int8 recipe; a {fmt} export needs one trained with "
                         f"--qat-backend {wanted}")
    q = learned_model(net)
    path = Path(path)
    with quiet():
        # LiteRT's converter matches the unfolded quantize -> dequantize of each weight
        converted = convert_pt2e(copy.deepcopy(q.graph), fold_quantize=fmt != "tflite")
    fixed = 2 if batch == "dynamic" else int(batch)
    example = torch.zeros((fixed, net.config.in_chans, q.resolution, q.resolution))
    if fmt == "tflite":
        with quiet():
            import litert_torch
            from litert_torch.quantize.quant_config import QuantConfig
            litert_torch.convert(converted, (example,), quant_config=QuantConfig(
                pt2e_quantizer=quantizer("litert", is_qat=False))).export(str(path))
        return path
    return _write_qdq(converted, example, fmt, path, batch=batch, opset=opset, verbose=verbose)


def _write_qdq(converted, example, fmt: str, path: Path, *, batch, opset: int, verbose: bool) -> Path:
    """A converted PT2E graph as ONNX QDQ, or as an OpenVINO IR read from that QDQ graph."""
    onnx_path = path if fmt == "onnx" else path.with_name(path.stem + ".qdq.onnx")
    to_onnx(converted, example, onnx_path, dynamic=batch == "dynamic", opset=opset, verbose=verbose)
    if fmt == "openvino":
        onnx_to_openvino(onnx_path, path, what="QAT model")
        onnx_path.unlink(missing_ok=True)
    return path


def learned_model(net) -> QATNet:
    """The fake-quantized network of a QAT checkpoint (what its int8 export computes), in eval mode."""
    return QATNet.from_checkpoint(net, net.qat_state, dict(net.checkpoint_meta.extra.get("qat") or {}))
