"""Ahead-of-time compile check: every shipped Triton kernel config of ``flashclr.kernels`` builds
for sm_80 and sm_90 on this machine (no GPU needed), without register spills, and the configs
that promise it use Hopper's ``wgmma`` on sm_90 (the bf16 NT-Xent forward and backward).

The test process runs Triton's interpreter (tests/conftest.py), whose jitted functions cannot be
compiled, so the check runs the real command, ``python -m flashclr.kernels.aot --json``, in a
process without ``TRITON_INTERPRET``. Parametrised over
:func:`flashclr.kernels.aot.collect_specs`, so a kernel module that adds an ``AOT_SPECS`` entry
is covered without editing this file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flashclr.kernels import aot
from tests.distributed import REPO_ROOT

SPECS = aot.collect_specs()


@pytest.fixture(scope="module")
def compiled() -> dict[tuple[int, int], dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "flashclr.kernels.aot", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {(r["index"], r["cc"]): r for r in rows}


def _id(index: int) -> str:
    spec = SPECS[index]
    return f"{spec.name}-{spec.dtype}-{index}"


@pytest.mark.parametrize("cc", aot.TARGETS)
@pytest.mark.parametrize("index", range(len(SPECS)), ids=_id)
def test_spec_compiles_without_spills(compiled, index, cc):
    result = compiled[(index, cc)]
    assert result["name"] == SPECS[index].name and result["dtype"] == SPECS[index].dtype
    assert result["registers"] is not None and result["registers"] <= 255
    assert result["spills"] == 0, f"{SPECS[index].name} ({SPECS[index].config}) spills on sm_{cc}: {result}"


@pytest.mark.parametrize("index", [i for i, s in enumerate(SPECS) if s.expect_wgmma], ids=_id)
def test_spec_uses_wgmma_on_sm90(compiled, index):
    assert compiled[(index, 90)]["wgmma"], f"{SPECS[index].name} {SPECS[index].dtype}: no wgmma on sm_90"


def test_ntxent_bf16_forward_and_backward_are_promised_wgmma():
    promised = {(s.name, s.dtype) for s in SPECS if s.expect_wgmma}
    assert {("nt_xent_fwd", "bf16"), ("nt_xent_bwd", "bf16")} <= promised


def test_main_refuses_under_the_interpreter():
    # This process runs the interpreter (conftest): compiling would fail obscurely.
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the interpreter is off in this process")
    with pytest.raises(SystemExit, match="TRITON_INTERPRET"):
        aot.main([])
