"""flashclr: SimCLR v2 with fused Triton losses, DALI pipelines and DeepSpeed ZeRO.

The three code folders install as one namespace: ``core/`` -> ``flashclr.core``,
``kernels/`` -> ``flashclr.kernels``, ``dataio/`` -> ``flashclr.dataio``. Nothing is
installed under a generic top-level name (``core`` would collide with other
distributions).
"""

import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
FOLDERS = {"core": "flashclr.core", "kernels": "flashclr.kernels", "dataio": "flashclr.dataio"}


def _packages_and_dirs():
    """Map every package folder below core/, kernels/ and dataio/ into ``flashclr.*``."""
    packages, package_dir = [], {}
    for folder, name in FOLDERS.items():
        for root, dirs, files in os.walk(os.path.join(HERE, folder)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            if "__init__.py" not in files:
                continue
            rel = os.path.relpath(root, HERE)
            package = name + rel[len(folder) :].replace(os.sep, ".")
            packages.append(package)
            package_dir[package] = rel
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages_and_dirs()

setup(
    name="flashclr",
    version="0.1.0",
    description="SimCLR v2 with fused Triton NT-Xent and distillation losses, DALI and DeepSpeed ZeRO",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    install_requires=[
        # A range that the CPU wheel on CI machines (2.13.0) satisfies, so pip never swaps it
        # for a multi-GB CUDA build; the Makefile installs torch first for that reason.
        "torch>=2.4",
        "triton>=3.1",
        "nvidia-dali-cuda120>=1.40",
        "deepspeed>=0.16",
        # The official NVML binding; the `pynvml` name is a deprecated shim that warns.
        "nvidia-ml-py>=12",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "scikit-learn>=1.3",
        "safetensors>=0.4",
        "numpy>=1.24",
        "pillow>=10",
    ],
    extras_require={
        # CUDA 13 machines: install with `.[cuda130]` and uninstall nvidia-dali-cuda120.
        "cuda130": ["nvidia-dali-cuda130>=1.50"],
        "dev": ["pytest>=8", "pytest-benchmark>=4", "pytest-timeout>=2.2", "hypothesis>=6", "ruff>=0.5"],
        # apex is optional and not on PyPI (the PyPI `apex` is unrelated); build it from
        # https://github.com/NVIDIA/apex when its fused optimizers are wanted. Never required.
        "apex": [],
    },
)
