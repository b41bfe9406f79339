"""The multi-process helpers that later tests build on, proven on real gloo processes."""

import json

import pytest
import torch
import torch.distributed as dist

from tests.distributed import run_deepspeed, run_distributed


def _allreduce_rank(rank, world_size):
    t = torch.tensor([float(rank + 1), 10.0 * rank])
    dist.all_reduce(t)
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": t}


def _fail_on_rank_one(rank, world_size):
    if rank == 1:
        raise ValueError("rank one says no")
    return rank


def test_run_distributed_allreduce_two_ranks():
    results = run_distributed(_allreduce_rank, 2)
    assert [r["rank"] for r in results] == [0, 1]
    for r in results:
        assert r["world"] == 2
        torch.testing.assert_close(r["sum"], torch.tensor([3.0, 10.0]))


def test_run_distributed_reports_failing_rank():
    with pytest.raises(RuntimeError, match=r"rank 1 failed[\s\S]*rank one says no"):
        run_distributed(_fail_on_rank_one, 2, timeout_s=60)


@pytest.mark.slow
def test_deepspeed_launcher_two_cpu_ranks(tmp_path):
    proc = run_deepspeed("tests/scripts/allreduce.py", ["--out-dir", str(tmp_path)], num_gpus=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [s["rank"] for s in seen] == [0, 1]
    assert all(s["world_size"] == 2 and s["sum"] == 3.0 for s in seen)
