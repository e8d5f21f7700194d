"""Quantization-aware fine-tuning for ``export --int8 --qat-epochs N``: a thin call of ``train --qat``.

As the TF-slim seed does (``--quantize --fine_tune_checkpoint``), QAT starts from the trained float
model, simulates int8 in the forward pass and fine-tunes a little with a small learning rate, so the
weights settle where int8 rounding hurts least. ``finetune`` writes the float model as a checkpoint
and runs ``mobilenets.train.fit`` on it with ``qat=True`` and the recipe of the file it is for
(ONNX Runtime's QDQ recipe, which OpenVINO reads too, or LiteRT's; ``train.qat`` places the fake
quantization): the same graph, data pipeline,
held-out split and run directory as ``mobilenets train MODEL --weights CKPT --qat``, with a
fine-tuning schedule (SGD, Nesterov, cosine from ``lr`` to 0, no warm-up, weight decay, label
smoothing or EMA) and the model's own normalisation (``--normalize weights``). The observers follow
the activations for the first half of the epochs, then freeze. The learned ranges are then
converted without calibrating (``save_learned_int8``), as ``export --int8`` of any QAT checkpoint.

Why PT2E (``torch.export`` -> ``prepare_qat_pt2e`` -> ``convert_pt2e``, via torchao) and not NNCF's
PyTorch QAT: its fake quantizers are a C++ extension compiled on first use (a compiler required,
slow to build and load); PT2E is plain PyTorch and serves the three runtimes.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from ..core.errors import UsageError
from ..train import fit, resolve_config
from ..train.qat import QATNet, quantizer
from ..train.report import Reporter
from ..weights.io import save_checkpoint
from ..weights.resolve import resolve_model
from .calibration import is_spec, split_of
from .common import quiet
from .runtimes.onnxruntime import to_onnx
from .runtimes.openvino import onnx_to_openvino

DEFAULT_LR = 1e-3
DEFAULT_BATCH = 64
DEFAULT_MAX_IMAGES = 10_000
FORMATS = ("onnx", "openvino", "tflite")
BACKEND_OF = {"onnx": "onnxruntime", "openvino": "onnxruntime", "tflite": "litert"}  # the recipe each file runs


def require() -> None:
    """torchao's PT2E, or a one-line ``UsageError`` saying what to install."""
    try:
        import torchao.quantization.pt2e  # noqa: F401
    except ImportError:
        raise UsageError("quantization-aware fine-tuning needs torchao (PT2E): pip install torchao") from None


def check_data(data) -> str:
    """``data`` as a ``train --data`` spec, or a one-line ``UsageError``: QAT trains on labelled
    data through ``train`` (``folder:PATH`` with ``train/<class>/``, ``cifar10:PATH``, ``synthetic:N``)."""
    if not is_spec(data):
        raise UsageError(f"QAT fine-tuning trains on labelled data through `train`: pass a dataset spec "
                         f"(folder:PATH holding train/<class>/, cifar10:PATH, synthetic:N), not "
                         f"{type(data).__name__ if not isinstance(data, (str, os.PathLike)) else repr(str(data))}")
    path = Path(data)
    return f"folder:{path}" if path.is_dir() else os.fspath(data)


def finetune(net, data, work: str | os.PathLike, *, fmt: str = "onnx", epochs: int = 1, lr: float = DEFAULT_LR,
             batch_size: int = DEFAULT_BATCH, max_images: int | None = DEFAULT_MAX_IMAGES,
             resolution: int | None = None, reporter: Reporter | None = None):
    """``train --qat`` of ``net`` (a float MobileNet) on ``data`` for ``epochs``, in ``work``, with
    the int8 recipe of the ``fmt`` file it is for (``BACKEND_OF``).

    Returns the fine-tuned network (its ``qat_state`` loaded: ``learned_model`` gives the
    fake-quantized graph, ``save_learned_int8`` the int8 file) and the run's record. The held-out
    images are those ``net``'s training run recorded for ``data`` (``calibration.split_of``), so
    QAT never trains on the images that score it; ``max_images`` caps the training images."""
    check_schedule(epochs, lr, batch_size)
    spec = check_data(data)
    work = Path(work)
    meta = getattr(net, "checkpoint_meta", None)
    pre = getattr(meta, "preprocessing", None)
    res = int(resolution or net.config.resolution)
    ckpt = save_checkpoint(work / "float.safetensors", net)
    split = split_of(spec, meta)
    cfg = resolve_config(
        "default", model=net.config.family, weights=str(ckpt), data=spec, resolution=res,
        preset=getattr(pre, "kind", None), normalize="weights", val_size=split["val_size"], seed=split["seed"],
        train_images=max_images, epochs=epochs, batch_size=batch_size, lr=lr, nesterov=True, weight_decay=0.0,
        label_smoothing=0.0, ema_decay=0.0, warmup_epochs=0.0, schedule="cosine", cutout=0, policy="none",
        qat=True, qat_backend=BACKEND_OF[fmt], output=str(work / "qat-run"))
    result = fit(cfg, reporter=reporter or Reporter(enabled=False))
    tuned = resolve_model(result.run_dir / "last.safetensors").model
    known = getattr(meta, "class_names", None)
    got = tuned.checkpoint_meta.class_names
    if tuned.config.num_classes != net.config.num_classes or (known and got and list(known) != list(got)):
        raise UsageError(f"QAT data {spec} has classes {', '.join(map(str, (got or [])[:5]))}..., not the model's "
                         f"{net.config.num_classes}" + (f" ({', '.join(map(str, known[:5]))}...)" if known else ""))
    data_info = json.loads((result.run_dir / "config.json").read_text())["resolved"]["data"]
    history = [{k: r[k] for k in ("epoch", "lr", "train_loss", "train_top1", "val_top1", "images_per_s") if k in r}
               for r in result.history]
    info = {"route": "train --qat (mobilenets.train.fit)", "backend": BACKEND_OF[fmt], "epochs": epochs, "lr": lr,
            "batch_size": batch_size, "seed": cfg.seed,
            "data": {"data": spec, "images": data_info.get("train_images"), "held_out": data_info.get("val_size"),
                     "split_seed": data_info.get("split_seed")},
            "val_top1_fake_quantized": result.history[-1].get("val_top1") if result.history else None,
            "history": history, "time_s": result.wall_time_s}
    return tuned, info


def check_schedule(epochs, lr, batch_size) -> None:
    """A one-line ``UsageError`` for a fine-tuning schedule that cannot run (checked before any work)."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise UsageError(f"QAT epochs must be a positive integer, got {epochs!r}")
    if not lr > 0:
        raise UsageError(f"QAT learning rate must be > 0, got {lr}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"QAT batch size must be a positive integer, got {batch_size!r}")


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
