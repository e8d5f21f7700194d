import os

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread per test process: tests run in parallel (pytest -n), and OpenMP threads
# that outnumber the cores slow small convolutions down a hundredfold.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def spread_bn_and_head(model: torch.nn.Module, mean: float, head_std: float) -> torch.nn.Module:
    """Random BN statistics (running mean within +-``mean``) and affine parameters, and linear layers
    drawn N(0, ``head_std``): logits that differ between classes (a fresh network's are all ~0)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-mean, mean)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            elif isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, 0, head_std)
    return model


def random_torchvision_v3_small():
    """torchvision's MobileNetV3-Small with non-trivial BN statistics and classifier (a stand-in
    for a downloaded checkpoint whose top-5 must survive conversion)."""
    import torchvision
    return spread_bn_and_head(torchvision.models.mobilenet_v3_small().eval(), mean=0.5, head_std=0.1)
