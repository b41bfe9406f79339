"""`make lint` as a test, so CI keeps the tree ruff-clean."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.distributed import REPO_ROOT

RUFF = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed (pip install -e .[dev])")
@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff_clean(args):
    proc = subprocess.run([RUFF, *args], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
