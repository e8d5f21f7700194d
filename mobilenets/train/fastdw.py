"""Faster depthwise convolutions in CPU training: the weight gradient as a compiled loop.

On CPU, oneDNN computes a depthwise convolution's weight gradient several times slower than its
forward pass, which makes it a large share of a MobileNet training step. ``numba`` compiles the
plain loop over channels-last tensors (vectorised over channels, the accumulator kept in cache),
which is faster; the forward pass and the input gradient stay with PyTorch.
``benchmarks/train_throughput.py`` measures the whole step with and without it.

``enable(model)`` switches every eligible depthwise ``nn.Conv2d`` of a model to this path (the
parameters, state dict and eval/export behaviour are unchanged); without numba it is a no-op.
"""
from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import swap_class, unswap_class


def has_numba() -> bool:
    """numba is imported when a kernel is first compiled, not with the package (command-line start-up)."""
    return importlib.util.find_spec("numba") is not None


def _kernel():
    import numba

    @numba.njit(fastmath=True, cache=True, boundscheck=False, nogil=True)
    def depthwise_weight_grad(x, go, k, stride, pad, out):  # pragma: no cover - compiled
        """out[i, j, c] += sum over n, h, w of x[n, h*s-p+i, w*s-p+j, c] * go[n, h, w, c] (NHWC)."""
        n_, h_, w_, c_ = x.shape
        ho_, wo_ = go.shape[1], go.shape[2]
        for n in range(n_):
            for ho in range(ho_):
                for i in range(k):
                    hi = ho * stride - pad + i
                    if hi < 0 or hi >= h_:
                        continue
                    for wo in range(wo_):
                        g = go[n, ho, wo]
                        for j in range(k):
                            wi = wo * stride - pad + j
                            if wi < 0 or wi >= w_:
                                continue
                            xr = x[n, hi, wi]
                            acc = out[i, j]
                            for c in range(c_):
                                acc[c] += xr[c] * g[c]
    return depthwise_weight_grad


_compiled = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


@torch.library.custom_op("mobilenets::depthwise_weight_grad", mutates_args=(), device_types="cpu")
def weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """The (C, 1, k, k) weight gradient of a depthwise conv, from NCHW-shaped float32 CPU tensors.

    With ``torch.get_num_threads()`` > 1 the batch is split across that many threads (the loop
    releases the GIL), each with its own accumulator. A custom op, so that ``torch.compile``
    keeps it as one opaque call instead of breaking the graph on NumPy.
    """
    global _compiled, _pool, _pool_size
    if _compiled is None:
        _compiled = _kernel()
    x_, g_ = (t.detach().permute(0, 2, 3, 1).contiguous().numpy() for t in (x, grad_out))
    parts = max(1, min(torch.get_num_threads(), x_.shape[0]))
    out = np.zeros((parts, kernel, kernel, x_.shape[3]), np.float32)
    if parts == 1:
        _compiled(x_, g_, kernel, stride, padding, out[0])
    else:
        if _pool_size < parts:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(parts, thread_name_prefix="fastdw"), parts
        bounds = np.linspace(0, x_.shape[0], parts + 1).astype(int)
        jobs = [_pool.submit(_compiled, x_[a:b], g_[a:b], kernel, stride, padding, out[i])
                for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]
        for job in jobs:
            job.result()
    return torch.from_numpy(out.sum(0)).permute(2, 0, 1).unsqueeze(1).contiguous()  # the fake's strides


@weight_grad.register_fake
def _(x, grad_out, kernel, stride, padding):
    return x.new_empty((x.shape[1], 1, kernel, kernel))


class _DepthwiseConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride: int, padding: int):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, has_bias = ctx.conf
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], weight.shape[0],
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:  # in the weight's own memory layout, as DDP's gradient buckets expect
            grad_w = torch.empty_like(weight).copy_(weight_grad(x, grad_out, weight.shape[-1], stride, padding))
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


class FastDepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` whose training step uses the compiled weight gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
                and self.weight.dtype == torch.float32):
            return _DepthwiseConvFn.apply(x, self.weight, self.bias, self.stride[0], self.padding[0])
        return super().forward(x)


def eligible(m: nn.Module) -> bool:
    """A plain depthwise conv: one filter per channel, square kernel, symmetric integer padding."""
    return (type(m) is nn.Conv2d and m.groups > 1 and m.groups == m.in_channels == m.out_channels
            and m.kernel_size[0] == m.kernel_size[1] and m.stride[0] == m.stride[1]
            and isinstance(m.padding, tuple) and m.padding[0] == m.padding[1] and m.dilation == (1, 1)
            and m.padding_mode == "zeros")


def enable(model: nn.Module) -> int:
    """Switch the model's eligible depthwise convs to the fast path; returns how many (0 without numba)."""
    return 0 if not has_numba() else swap_class(model, eligible, FastDepthwiseConv2d)


def disable(model: nn.Module) -> None:
    """Undo ``enable`` (plain ``nn.Conv2d`` again)."""
    unswap_class(model, FastDepthwiseConv2d)
