"""Report what this machine gives flashclr and prove the distributed path on real processes.

``python -m flashclr.core.envcheck`` prints the versions of torch, triton, DALI and DeepSpeed,
whether a CUDA device is present, and runs a 2-process gloo all-reduce on the CPU (the backend
that ``deepspeed --num_gpus 2`` uses on a machine without a GPU).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PACKAGES = ("torch", "triton", "nvidia-dali-cuda120", "deepspeed", "nvidia-ml-py")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _allreduce(rank: int, world_size: int, port: int, out) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    out.put((rank, t.item()))
    dist.destroy_process_group()


def main() -> None:
    for name in PACKAGES:
        print(f"{name:22s} {_version(name)}")
    if torch.cuda.is_available():
        print(f"{'device':22s} {torch.cuda.get_device_name(0)}")
    else:
        print(f"{'device':22s} no CUDA device: kernels take the tiled torch path, DALI runs CPU-only")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    world = 2
    procs = [ctx.Process(target=_allreduce, args=(r, world, port, out)) for r in range(world)]
    for p in procs:
        p.start()
    seen = dict(out.get(timeout=120) for _ in range(world))
    for p in procs:
        p.join()
    expected = world * (world + 1) / 2
    ok = all(v == expected for v in seen.values())
    print(
        f"{'gloo all-reduce':22s} {world} ranks, each saw {sorted(seen.values())} (expected {expected}): "
        f"{'ok' if ok else 'WRONG'}"
    )
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
