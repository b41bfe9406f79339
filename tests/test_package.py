"""The installed package: one `flashclr` namespace, nothing under generic top-level names."""

import importlib.metadata
import os
import subprocess
import sys

from packaging.requirements import Requirement


def _run_elsewhere(code: str, cwd) -> subprocess.CompletedProcess:
    """Run Python code from a directory outside the checkout, so only installed names import."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def test_namespace_imports_from_another_directory(tmp_path):
    proc = _run_elsewhere(
        "import flashclr.core, flashclr.kernels, flashclr.dataio, os;"
        "print(os.path.basename(os.path.dirname(flashclr.kernels.__file__)))",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "kernels"


def test_no_generic_top_level_names_installed(tmp_path):
    for name in ("core", "kernels", "dataio", "benchmarks", "tests"):
        proc = _run_elsewhere(f"import importlib.util; print(importlib.util.find_spec({name!r}))", tmp_path)
        assert proc.stdout.strip() == "None", f"{name!r} is importable from outside the checkout"


def test_no_deprecated_or_conflicting_requirements():
    requires = importlib.metadata.requires("flashclr") or []
    names = {Requirement(r).name for r in requires}
    assert "pynvml" not in names and "torchvision" not in names
    assert {"torch", "triton", "deepspeed", "nvidia-ml-py", "nvidia-dali-cuda120"} <= names
