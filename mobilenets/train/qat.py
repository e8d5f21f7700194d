"""Quantization-aware training (``train --qat``): the network trains against simulated int8, with
fake quantization placed where the target runtime's int8 recipe puts it (``--qat-backend``).

The route is PyTorch's PT2E flow through torchao: ``torch.export`` of the training graph (BatchNorm
kept, so training from scratch works as TF-slim's ``--quantize`` does), ``prepare_qat_pt2e`` with
the backend's quantizer (which also rewrites each conv-BN pair to train against the folded,
quantized weights), then ordinary training. ``QATNet`` wraps the prepared graph so that the
training loop, EMA, DDP, checkpoints and ``--resume`` treat it as any model:

* ``onnxruntime`` / ``openvino``: ONNX Runtime's U8S8 QDQ recipe (``quantize.quantize_onnx``):
  uint8 asymmetric per-tensor activations, int8 symmetric per-channel weights in [-127, 127]; the
  input and weights of every convolution and linear layer, the output after its BN (and
  ReLU/ReLU6, which ORT folds into the convolution), and the outputs of hard-swish, hard-sigmoid,
  add, mul and global pooling.
  OpenVINO reads the same QDQ graph (Q/DQ pairs become FakeQuantize, run as int8).
* ``litert``: LiteRT's int8 specs (its PT2E quantizer's QAT config: int8 activations, int8
  symmetric per-channel weights) at the same places (LiteRT's own annotator fails on the conv-BN
  patterns of a training graph with this torch).

A checkpoint of a QAT run holds the float weights under the MobileNet's own names, the learned
quantization parameters under ``qat.`` (``checkpoint_tensors``), and ``{"qat": {...}}`` in its
metadata; ``export --int8`` rebuilds the graph, loads both (``QATNet.from_checkpoint``) and converts
without calibrating again (``deploy.qat``).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..core.errors import UsageError
from ..models.network import MobileNet

BACKENDS = ("onnxruntime", "openvino", "litert")
PREFIX = "qat."  # checkpoint keys of the learned quantization parameters
PLACEMENT = 2  # version of ``_placement``, recorded in checkpoints (1: convolutions only; 2: and linear layers)
OBSERVE_FRACTION = 0.5  # the observers follow the activations for this share of training, then freeze


def _ort_specs(is_qat: bool):
    """(activation, weight) specs of ONNX Runtime's U8S8 recipe."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    cfg = xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat)
    return cfg.input_activation, dataclasses.replace(cfg.weight, quant_min=-127, quant_max=127)


def quantizer(backend: str = "onnxruntime", *, is_qat: bool = True):
    """The PT2E quantizer of ``backend``'s int8 recipe (see the module docstring)."""
    if backend not in BACKENDS:
        raise UsageError(f"QAT backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "litert":
        from litert_torch.quantize import pt2e_quantizer
        config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat)
        if not is_qat:
            return pt2e_quantizer.PT2EQuantizer().set_global(config)
        # LiteRT's own annotator fails on conv-BN patterns under torch.export here: its specs, our placement
        return _placement(config.input_activation, config.weight)
    return _placement(*_ort_specs(is_qat))


def _placement(act, weight):
    """A quantizer placing ``act`` / ``weight`` fake quantization as ONNX Runtime's QDQ recipe does."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer

    aten = torch.ops.aten
    conv = {aten.conv2d.default, aten.linear.default}  # ORT quantizes Gemm as it does Conv
    norms = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
    clamps = {aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default}
    outputs = {aten.hardswish.default, aten.hardswish_.default, aten.hardsigmoid.default, aten.hardsigmoid_.default,
               aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor, aten.mul_.Tensor, aten.adaptive_avg_pool2d.default,
               aten.mean.dim}

    def only_user(node, targets):
        users = list(node.users)
        return users[0] if len(users) == 1 and users[0].target in targets else None

    def mark(node, **kw):
        node.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True, **kw)

    class OrtQDQQuantizer(Quantizer):
        """Fake quantization where ``quantize_static`` (QDQ) puts Q/DQ, so ORT fuses the same kernels."""

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for node in model.graph.nodes:
                if node.op != "call_function" or "quantization_annotation" in node.meta:
                    continue
                if node.target in conv:
                    last = node
                    norm = only_user(last, norms)
                    if norm is not None:
                        last = norm
                    clamp = only_user(last, clamps)
                    mark(node, input_qspec_map={node.args[0]: act, node.args[1]: weight},
                         output_qspec=act if last is node and clamp is None else None)
                    if last is not node:
                        mark(last, output_qspec=None if clamp is not None else act)
                    if clamp is not None:
                        mark(clamp, output_qspec=act)
                elif node.target in outputs and all(isinstance(a, torch.fx.Node) for a in node.args[:2]
                                                    if a is not None and not isinstance(a, (list, tuple))):
                    mark(node, output_qspec=act)
            return model

        def validate(self, model: torch.fx.GraphModule) -> None:
            pass

    return OrtQDQQuantizer()


class QATNet(nn.Module):
    """A MobileNet with fake quantization (``graph``: the prepared ``torch.fx.GraphModule``).

    ``train()``/``eval()`` switch its BatchNorm and dropout as a module's would; ``config`` is the
    MobileNet's; ``observe(on)`` lets the observers follow the activations or freezes them."""

    def __init__(self, net: MobileNet, backend: str = "onnxruntime", *, resolution: int | None = None):
        super().__init__()
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

        res = int(resolution or net.config.resolution)
        self.config, self.backend, self.resolution = net.config, backend, res
        self.checkpoint_meta = getattr(net, "checkpoint_meta", None)
        was_training = net.training
        example = torch.zeros(2, net.config.in_chans, res, res)
        dims = ({0: torch.export.Dim("batch", min=1, max=4096)},)
        try:
            net.train()
            gm = torch.export.export(net, (example,), dynamic_shapes=dims).module()
            self.graph = prepare_qat_pt2e(gm, quantizer(backend))
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - one line, as the exporters report
            raise UsageError(f"QAT preparation (torch.export + prepare_qat_pt2e) failed: "
                             f"{str(exc).strip().splitlines()[0][:300]}") from exc
        finally:
            net.train(was_training)
        self.train(was_training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> QATNet:
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        self.training = mode
        graph = self.__dict__.get("_modules", {}).get("graph")
        if graph is not None:
            (move_exported_model_to_train if mode else move_exported_model_to_eval)(graph)
            self._set_observers(mode and self.observing)  # evaluation never moves the ranges
        return self

    observing = True

    def observe(self, on: bool) -> None:
        """Let the observers follow the activations while training (``on``), or freeze them."""
        self.observing = on
        self._set_observers(on and self.training)

    def fake_quantize(self, on: bool) -> None:
        """Simulate int8 (``on``) or run the prepared graph in float, observers untouched (``--qat-delay``)."""
        from torchao.quantization.pt2e import disable_fake_quant, enable_fake_quant
        self.graph.apply(enable_fake_quant if on else disable_fake_quant)

    def _set_observers(self, on: bool) -> None:
        from torchao.quantization.pt2e import disable_observer, enable_observer
        self.graph.apply(enable_observer if on else disable_observer)

    def record(self) -> dict:
        """What a checkpoint's metadata says of the quantization."""
        return {"backend": self.backend, "resolution": self.resolution, "route": "pt2e (torchao)",
                "placement": PLACEMENT,
                "scheme": "int8 symmetric per-channel weights; "
                          + ("int8 symmetric per-tensor activations (LiteRT)" if self.backend == "litert"
                             else "uint8 asymmetric per-tensor activations (ONNX Runtime QDQ)")}

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The float weights under the MobileNet's names, the quantization state under ``qat.``."""
        float_keys = set(MobileNet(self.config).state_dict())
        out = {}
        for k, v in self.graph.state_dict().items():
            out[k if k in float_keys else PREFIX + k] = v
        missing = float_keys - set(out)
        if missing:
            raise UsageError(f"QAT graph lost {len(missing)} weights of the network (e.g. {sorted(missing)[0]})")
        return out

    @classmethod
    def from_checkpoint(cls, net: MobileNet, qat_state: dict[str, torch.Tensor], record: dict) -> QATNet:
        """The QAT network of a checkpoint: ``net`` (its float weights), prepared again for the
        recorded backend, with the learned quantization state loaded; in eval mode."""
        if record.get("placement", 1) != PLACEMENT:  # observers are numbered in graph order: they would shift
            raise UsageError(f"this QAT checkpoint was trained with fake quantization placed by version "
                             f"{record.get('placement', 1)} of the recipe, this mobilenets places it by version "
                             f"{PLACEMENT} (linear layers too): run train --qat again")
        q = cls(net, record.get("backend", "onnxruntime"), resolution=record.get("resolution"))
        state = {**{k: v for k, v in q.graph.state_dict().items()},
                 **{k[len(PREFIX):]: v for k, v in qat_state.items()}}
        missing = [k for k in q.graph.state_dict() if k not in state]
        if missing or len(state) != len(q.graph.state_dict()):
            raise UsageError(f"the checkpoint's quantization state does not fit the {record.get('backend')} QAT graph")
        q.graph.load_state_dict(state, strict=True)
        return q.eval()


def check(cfg) -> None:
    """Refuse, before any data is read, what QAT cannot train with."""
    if not cfg.qat:
        return
    if cfg.compile:
        raise UsageError("--qat trains the exported PT2E graph: torch.compile is not supported with it (--no-compile)")
    if cfg.bf16 is True or cfg.bf16_pointwise:
        raise UsageError("--qat simulates int8 in fp32: pass --bf16 off and no --bf16-pointwise")
    if cfg.micro_batch:
        raise UsageError("--qat does not take --micro-batch")
    if cfg.channels_last:  # fake quantization of channels-last tensors lost 14 points of top-1 here
        raise UsageError("--qat trains NCHW: drop --channels-last")
