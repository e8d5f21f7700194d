"""bf16 in the 1x1 convolutions only: training forwards change, nothing else does."""
import copy

import torch
import torch.nn.functional as F
from torch import nn

import mobilenets
from mobilenets.train import mixed


def _model():
    torch.manual_seed(0)
    return mobilenets.create_model("mobilenet_v3_small", num_classes=10, resolution=32, cifar_stem=2)


def test_only_pointwise_layers_switch_and_eval_is_unchanged():
    model = _model().eval()
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    n = mixed.enable(model)
    pointwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1]
    assert n == len(pointwise) == 40  # expansions, projections, SE squeeze/excite, the last conv
    assert all(type(m) is not mixed.Bf16PointwiseConv2d for m in model.modules() if isinstance(m, nn.Conv2d)
               and m.kernel_size != (1, 1))
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(model(x), before)  # eval stays fp32, bit for bit
    mixed.disable(model)
    assert not any(type(m) is mixed.Bf16PointwiseConv2d for m in model.modules())


def test_training_step_runs_bf16_pointwise_with_fp32_gradients():
    a = _model().train().to(memory_format=torch.channels_last)
    b = copy.deepcopy(a)
    mixed.enable(b)
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    outs = []
    for m in (a, b):
        torch.manual_seed(1)  # the same dropout mask
        out = m(x)
        F.cross_entropy(out, y).backward()
        outs.append(out.detach())
    assert outs[1].dtype == torch.float32
    assert not torch.equal(outs[0], outs[1])  # the bf16 path really ran
    torch.testing.assert_close(outs[1], outs[0], rtol=0.1, atol=0.1)
    grads_a = torch.cat([p.grad.flatten() for p in a.parameters()])
    grads_b = torch.cat([p.grad.flatten() for p in b.parameters()])
    assert all(p.grad.dtype == torch.float32 and p.grad.stride() == p.stride() for p in b.parameters())
    assert F.cosine_similarity(grads_a, grads_b, dim=0) > 0.99
