"""Test configuration shared by the whole suite.

Without a GPU the Triton kernels run under the interpreter on CPU tensors. Triton reads
``TRITON_INTERPRET`` when ``@triton.jit`` decorates, and decorates its own library functions
when it is imported, so the variable must be set before the first ``import triton`` of the
process: here, at the top of conftest, and only for the test process (the product never sets it).
"""

import os
import shutil
import sys

# Decided without importing torch's CUDA runtime: nvidia-smi is present on every CUDA machine
# that can run the compiled kernels. The check is repeated against torch below for skipping.
_HAS_GPU_DRIVER = shutil.which("nvidia-smi") is not None
if not _HAS_GPU_DRIVER and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def kernel_device() -> torch.device:
    """Where Triton kernels run in tests: the GPU when there is one, else CPU tensors under
    the interpreter (set above)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
