"""Write an untrained model as a finished fine-tuning run (model.safetensors + model.json), to
measure what a big teacher costs in ``train.py --stage distill`` without training it first.

    python tests/scripts/random_teacher.py OUT_DIR r152_3x_sk1 --num-classes 10 --small-images
"""

import argparse
import os

import torch

from flashclr.core import checkpoint
from flashclr.core.models import build_model

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("model")
parser.add_argument("--num-classes", type=int, default=10)
parser.add_argument("--small-images", action="store_true")
args = parser.parse_args()
torch.manual_seed(0)
model = build_model(args.model, num_classes=args.num_classes, small_images=args.small_images)
model.finetune_head_()
os.makedirs(args.out, exist_ok=True)
checkpoint.export(model, args.out, {"stage": "finetune", "note": "untrained, for memory measurements"})
print(f"{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters -> {args.out}")
