"""Launched by tests through `deepspeed --num_gpus N`: each rank all-reduces its rank + 1 and
writes what it saw to OUT_DIR/rank{r}.json."""

import argparse
import json
import os

import deepspeed
import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--out-dir", required=True)
parser.add_argument("--local_rank", type=int, default=-1)  # injected by the deepspeed launcher
args = parser.parse_args()

deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
with open(os.path.join(args.out_dir, f"rank{rank}.json"), "w") as f:
    json.dump({"rank": rank, "world_size": world, "sum": value.item(), "backend": dist.get_backend()}, f)
dist.barrier()
dist.destroy_process_group()
