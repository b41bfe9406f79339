"""Run a function on N CPU processes joined by the gloo backend, and collect their results.

Later tests use this to check multi-rank behaviour (gathered losses, synchronised batch norm,
sharded optimizers) on machines without a GPU. Two ways in:

- :func:`run_distributed` spawns N Python processes with ``torch.multiprocessing``, initialises
  a gloo process group in each and returns what ``fn(rank, world_size, *args)`` returned, in rank
  order. ``fn`` must be importable (defined at module level), as with any spawned process.
- :func:`run_deepspeed` launches a script with the real ``deepspeed --num_gpus N`` launcher, as
  users do, and returns the finished process.
"""

from __future__ import annotations

import datetime
import os
import pickle
import queue
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _worker(rank, world_size, port, fn, args, results, timeout_s):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    # One thread per rank: the ranks share the machine's cores.
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s)
        )
        out = fn(rank, world_size, *args)
        # Plain pickle bytes, not tensors: a tensor put on a multiprocessing queue travels as
        # shared memory that vanishes when this process exits, before the parent may read it.
        results.put((rank, True, pickle.dumps(_to_cpu(out))))
    except BaseException:  # reported to the parent, which raises it with the rank named
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(
    fn: Callable[..., Any], world_size: int = 2, *args: Any, timeout_s: float = 120.0
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo processes; return the results.

    Tensors in the results come back on the CPU. A failure on any rank raises ``RuntimeError``
    naming the rank and carrying its traceback; a rank that hangs past ``timeout_s`` is killed.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, port, fn, args, results, timeout_s), daemon=True)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    collected: dict[int, Any] = {}
    errors: list[str] = []
    try:
        for _ in range(world_size):
            try:
                rank, ok, payload = results.get(timeout=timeout_s)
            except queue.Empty:
                raise RuntimeError(
                    f"distributed run timed out after {timeout_s}s; ranks that answered: {sorted(collected)}"
                ) from None
            if ok:
                collected[rank] = pickle.loads(payload)
            else:
                errors.append(f"rank {rank} failed:\n{payload}")
                break
    finally:
        for p in procs:
            p.join(timeout=10 if not errors else 1)
            if p.is_alive():
                p.terminate()
                p.join()
    if errors:
        raise RuntimeError("\n".join(errors))
    return [collected[r] for r in range(world_size)]


def run_deepspeed(
    script: str,
    script_args: Sequence[str] = (),
    num_gpus: int = 2,
    timeout_s: float = 300.0,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> subprocess.CompletedProcess:
    """Launch ``deepspeed --num_gpus N script args`` (CPU ranks on gloo where there is no GPU).

    Returns the finished process with its stdout and stderr as text; it does not raise on a
    non-zero exit, so tests can check failures too.
    """
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(num_gpus),
        "--master_port",
        str(free_port()),
        script,
        *script_args,
    ]
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    return subprocess.run(
        cmd, cwd=cwd or REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout_s
    )
