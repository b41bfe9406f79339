"""pytest-benchmark configuration: ``pytest benchmarks/ --benchmark-only [--benchmark-json=FILE]``.

Each ``test_bench_*`` function times one implementation at one size; the fused implementation and
its reference share a ``benchmark.group``, so pytest-benchmark's table puts them side by side and
``--benchmark-compare`` tracks both between commits. Sizes follow the device: CPU sizes that finish
in a few minutes on 2 cores, GPU sizes when torch sees CUDA. Unlike tests/conftest.py, nothing here
sets ``TRITON_INTERPRET``: on the CPU the fused losses take their tiled torch path, as users get.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def sync(device):
    """Waits for the device: call it at the end of every timed function."""

    def wait() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return wait


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
