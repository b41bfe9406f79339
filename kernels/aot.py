"""Ahead-of-time compile check of every shipped Triton kernel config, for sm_80 and sm_90.

    python -m flashclr.kernels.aot

works without a GPU: ``triton.compile(ASTSource(fn, signature, constexprs),
target=GPUTarget("cuda", cc, 32))`` lowers each config to PTX; the ``ptxas-blackwell`` (CUDA 13)
beside triton's own ``ptxas`` assembles it with ``-v`` for registers and spills (triton 3.9 emits
PTX 9.4, which its bundled CUDA 12.9 ``ptxas`` refuses). It prints one row per kernel config and
target: registers, spill bytes, shared memory (from triton's metadata) and whether the PTX uses
``wgmma`` (Hopper's warpgroup tensor-core instruction; sm_80 uses ``mma.sync``).

Registry contract, for every kernel module in ``kernels/``: a module-level ``AOT_SPECS`` list of
plain dicts (plain, so kernel modules need not import this file) with the keys of :class:`AotSpec`:

    AOT_SPECS = [
        dict(name="nt_xent_fwd", fn=_nt_xent_fwd_kernel,
             signature={"z_ptr": "*bf16", "n_rows": "i32", "scale": "fp32", "BLOCK_M": "constexpr", ...},
             constexprs={"BLOCK_M": 128, ...}, num_warps=8, num_stages=2,
             dtype="bf16", expect_wgmma=True),
    ]

``signature`` names every argument of the jitted function in order, with triton's type strings
(``*fp32``/``*bf16``/``*fp16`` pointers, ``i32``, ``fp32``, and ``constexpr`` for the constexpr
arguments, whose values go in ``constexprs``). ``expect_wgmma``: the sm_90 PTX must use wgmma
(tests/test_aot.py asserts it, and that no config spills). Modules are found by
:func:`collect_specs`, which imports every module of this package that defines ``AOT_SPECS``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
import re
import subprocess
import tempfile
from typing import Any

TARGETS = (80, 90)


@dataclasses.dataclass(frozen=True)
class AotSpec:
    """One kernel config to compile: the jitted function, its signature and constexpr values."""

    name: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int
    dtype: str
    expect_wgmma: bool

    @property
    def config(self) -> str:
        blocks = ",".join(f"{k}={v}" for k, v in self.constexprs.items() if k.startswith("BLOCK"))
        flags = ",".join(
            f"{k}" for k, v in self.constexprs.items() if not k.startswith("BLOCK") and v is True
        )
        return f"{blocks} w{self.num_warps} s{self.num_stages}" + (f" {flags}" if flags else "")


def collect_specs() -> list[AotSpec]:
    """Every ``AOT_SPECS`` entry of the modules of ``flashclr.kernels`` (this one excepted)."""
    package = importlib.import_module(__package__)
    specs = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name == "aot":
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        specs.extend(AotSpec(**spec) for spec in getattr(module, "AOT_SPECS", []))
    return specs


def _ptxas(cc: int) -> str:
    import triton

    # Triton's own choice (get_ptxas in its nvidia backend): sm_90+ PTX is version 9.4, which
    # only the CUDA 13 `ptxas-blackwell` takes; for sm_80 triton emits PTX 8.8 for `ptxas`.
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    return os.path.join(bin_dir, "ptxas-blackwell" if cc >= 90 else "ptxas")


# The flags triton's own make_cubin passes (triton/backends/nvidia/compiler.py, 3.9):
# --regAllocOptLevel=2 works around a ptxas 13.x register-allocation bug.
_PTXAS_FLAGS = ("-lineinfo", "-v", "--regAllocOptLevel=2")


def compile_spec(spec: AotSpec, cc: int) -> dict[str, Any]:
    """Compile ``spec`` for sm_``cc``; return registers, spills (bytes), shared (bytes), wgmma."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = triton.compile(
        ASTSource(spec.fn, spec.signature, spec.constexprs),
        target=GPUTarget("cuda", cc, 32),
        options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
    )
    ptx = kernel.asm["ptx"]
    arch = f"sm_{cc}a" if cc >= 90 else f"sm_{cc}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        proc = subprocess.run(
            [_ptxas(cc), *_PTXAS_FLAGS, f"--gpu-name={arch}", path, "-o", os.path.join(tmp, "kernel.cubin")],
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed for {spec.name} on {arch}:\n{proc.stderr[-2000:]}")
    info = proc.stdout + proc.stderr
    registers = re.search(r"Used (\d+) registers", info)
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", info)]
    return {
        "registers": int(registers.group(1)) if registers else None,
        "spills": sum(spills),
        "shared": int(kernel.metadata.shared),
        "wgmma": "wgmma" in ptx,
    }


def main(argv: list[str] | None = None) -> None:
    """Print the table; ``--json`` prints one JSON object per spec and target instead."""
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m flashclr.kernels.aot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per (spec, target)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        # Under the interpreter @triton.jit gives InterpretedFunctions, which cannot be compiled.
        raise SystemExit("flashclr.kernels.aot: unset TRITON_INTERPRET to compile the kernels")
    specs = collect_specs()
    header = f"{'kernel':<22} {'config':<60} {'dtype':<5} {'target':<6} {'regs':>4} {'spills':>6} {'smem':>7}  wgmma"
    if not args.json:
        print(header)
        print("-" * len(header))
    for index, spec in enumerate(specs):
        for cc in TARGETS:
            r = compile_spec(spec, cc)
            if args.json:
                print(
                    json.dumps({"index": index, "name": spec.name, "dtype": spec.dtype, "cc": cc, **r}),
                    flush=True,
                )
                continue
            print(
                f"{spec.name:<22} {spec.config:<60} {spec.dtype:<5} sm_{cc:<3} {r['registers']:>4} "
                f"{r['spills']:>6} {r['shared']:>7}  {'yes' if r['wgmma'] else 'no'}",
                flush=True,
            )


if __name__ == "__main__":
    main()
