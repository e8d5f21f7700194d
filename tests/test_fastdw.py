"""The compiled depthwise weight gradient equals PyTorch's, and leaves the model unchanged otherwise."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobilenets
from mobilenets.train import fastdw

pytestmark = pytest.mark.skipif(not fastdw.has_numba(), reason="numba not installed")


@pytest.mark.parametrize("kernel,stride,bias,channels_last", [
    (3, 1, False, True), (5, 2, False, True), (5, 1, True, False), (3, 2, True, True), (7, 2, False, False)])
def test_gradients_match_pytorch(kernel, stride, bias, channels_last):
    torch.manual_seed(0)
    ref = nn.Conv2d(12, 12, kernel, stride, padding=kernel // 2, groups=12, bias=bias)
    fast = copy.deepcopy(ref)
    assert fastdw.enable(fast) == 1 and type(fast) is fastdw.FastDepthwiseConv2d
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 12, 11, 9).contiguous(memory_format=fmt)
    grads = []
    for conv in (ref, fast):
        xi = x.clone().requires_grad_(True)
        out = conv(xi)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), xi.grad, conv.weight.grad, conv.bias.grad if bias else None))
    for a, b in zip(*grads, strict=True):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_only_depthwise_layers_switch_and_state_dict_is_unchanged():
    model = mobilenets.create_model("mobilenet_v3_small", num_classes=10, resolution=32, cifar_stem=2)
    keys = list(model.state_dict())
    n = fastdw.enable(model)
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert n == len(depthwise) == 11
    assert list(model.state_dict()) == keys
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
    fastdw.disable(model)
    assert not any(type(m) is fastdw.FastDepthwiseConv2d for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), y)


def test_training_step_matches_pytorch():
    torch.manual_seed(0)
    a = mobilenets.create_model("mobilenet_v3_small", num_classes=10, resolution=32, cifar_stem=2).train()
    a = a.to(memory_format=torch.channels_last)
    b = copy.deepcopy(a)
    fastdw.enable(b)
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))
    for m in (a, b):
        torch.manual_seed(1)  # the same dropout mask
        F.cross_entropy(m(x), y).backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
        assert q.grad.stride() == q.stride(), name  # DDP's buckets want the parameter's layout


def test_batch_split_across_threads_gives_the_same_gradient():
    torch.manual_seed(0)
    x = torch.randn(5, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, 5, 5)
    go = torch.randn(5, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    ref = torch.ops.aten.convolution_backward(go, x, w, None, [2, 2], [2, 2], [1, 1], False, [0, 0], 8,
                                              [False, True, False])[1]
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            torch.testing.assert_close(fastdw.weight_grad(x, go, 5, 2, 2), ref, rtol=1e-4, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_weight_gradient_is_a_custom_op_that_compiles_without_graph_breaks():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 9, 9).contiguous(memory_format=torch.channels_last)
    go = torch.randn(3, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.mobilenets.depthwise_weight_grad.default, (x, go, 3, 2, 1))
    ref = nn.Conv2d(6, 6, 3, 2, padding=1, groups=6, bias=False)
    fast = copy.deepcopy(ref)
    fastdw.enable(fast)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break fails
    for conv in (ref, compiled):
        (conv(x) * go).sum().backward()
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-5)
