import resource
import sys

import pytest
import torch

from mobilenets.train.allocator import keep_freed_memory


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_memory_is_reused_without_page_faults():
    assert keep_freed_memory()
    n = 48 * 2**20 // 4  # a 48 MiB buffer: glibc's default maps it anew each time (~12,000 page faults)
    faults = []
    for _ in range(6):
        before = _faults()
        torch.ones(n).sum()
        faults.append(_faults() - before)
    # The first use may grow the heap, and a small allocation left at its top can make it grow again
    # now and then, but the freed pages are reused as they are, which glibc's default never does.
    assert min(faults[1:]) < 1000, faults
