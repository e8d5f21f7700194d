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


def random_torchvision_v3_small():
    """torchvision's MobileNetV3-Small with non-trivial BN statistics and classifier (a stand-in
    for a downloaded checkpoint whose top-5 must survive conversion)."""
    import torchvision
    ref = torchvision.models.mobilenet_v3_small().eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            elif isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, 0, 0.1)
    return ref
