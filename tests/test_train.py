"""train.py and its core modules: schedule, synchronised batch norm, memory bank, configuration
checks (in process), and the stages on real DeepSpeed launches with 1 and 2 CPU ranks (gloo).

The launches are few and each runs several tiny jobs (tests/scripts/train_jobs.py): r18_0.25x_sk0
with the small-image stem on 16-px crops of the embedded digits, a handful of steps per stage.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from torch import nn

from flashclr.core import checkpoint
from flashclr.core.config import (
    ConfigError,
    TrainConfig,
    deepspeed_config,
    validate,
)
from flashclr.core.lars import LARS, lars_param_groups
from flashclr.core.memory_bank import MomentumMemory
from flashclr.core.models import build_model
from flashclr.core.schedule import base_learning_rate, learning_rate
from flashclr.core.stages import build_stage
from flashclr.core.syncbn import GlooSyncBatchNorm, convert_sync_batchnorm
from tests.distributed import REPO_ROOT, free_port, run_deepspeed, run_distributed
from tests.scripts.train_jobs import first_step_batch, first_step_config

TINY = ["--model", "r18_0.25x_sk0", "--small-images", "--image-size", "16", "--no-progress"]
ZERO0 = os.path.join(REPO_ROOT, "configs", "ds_zero0.json")
ZERO3 = os.path.join(REPO_ROOT, "configs", "ds_zero3.json")


# ---- schedule ---------------------------------------------------------------------------------


def test_base_learning_rate_rules():
    assert base_learning_rate("sqrt", 0.075, 4096) == pytest.approx(4.8)
    assert base_learning_rate("linear", 0.3, 4096) == pytest.approx(4.8)  # the two agree at 4096
    assert base_learning_rate("sqrt", 0.005, 1024) == pytest.approx(0.16)
    with pytest.raises(ValueError, match="unknown lr rule"):
        base_learning_rate("cubic", 0.1, 256)


def test_learning_rate_warmup_then_cosine():
    lrs = [learning_rate(s, 10, 4, 1.0) for s in range(10)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))
    assert learning_rate(0, 5, 0, 2.0) == pytest.approx(2.0)


# ---- synchronised batch norm (2 gloo ranks) ---------------------------------------------------


def _syncbn_rank(rank, world):
    torch.manual_seed(0)
    x = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    bn = GlooSyncBatchNorm(4).double()
    nn.init.uniform_(bn.weight)
    nn.init.uniform_(bn.bias)
    rows = slice(rank * 4, rank * 4 + 4)
    xr = x[rows].clone().requires_grad_(True)
    (bn(xr) * w[rows]).sum().backward()
    return {"x_grad": xr.grad, "w_grad": bn.weight.grad, "b_grad": bn.bias.grad, "state": bn.state_dict()}


def test_gloo_syncbn_equals_batchnorm_on_the_global_batch():
    results = run_distributed(_syncbn_rank, 2)
    torch.manual_seed(0)
    x = torch.randn(8, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    bn = nn.BatchNorm2d(4).double()
    nn.init.uniform_(bn.weight)
    nn.init.uniform_(bn.bias)
    (bn(x) * w).sum().backward()
    # Each rank holds the gradient of the SUM of both ranks' losses for its own rows.
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in results]), x.grad)
    torch.testing.assert_close(results[0]["w_grad"] + results[1]["w_grad"], bn.weight.grad)
    torch.testing.assert_close(results[0]["b_grad"] + results[1]["b_grad"], bn.bias.grad)
    for r in results:
        for k, v in bn.state_dict().items():
            torch.testing.assert_close(r["state"][k], v)


def test_convert_sync_batchnorm_keeps_weights_and_gamma_only_bn():
    model = build_model("r18_0.25x_sk0", num_classes=0, small_images=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model = convert_sync_batchnorm(model)
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in model.modules())
    assert model.head.layers[-1].bn.bias is None  # the last head layer has gamma only
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        torch.testing.assert_close(after[k], before[k])
    model.train()
    x = torch.randn(4, 3, 16, 16)
    assert model.projections(x).shape == (4, 128)  # no process group: plain batch norm


# ---- MoCo-style memory -------------------------------------------------------------------------


def test_momentum_memory_queue_and_ema():
    model = build_model("r18_0.25x_sk0", num_classes=0, small_images=True, proj_dim=8)
    memory = MomentumMemory(model, size=10, momentum=0.9)
    assert memory.negatives().shape == (0, 8)
    memory.enqueue(torch.randn(6, 3, 16, 16))
    first = memory.negatives().clone()
    assert first.shape == (6, 8)
    torch.testing.assert_close(first.norm(dim=1), torch.ones(6))
    memory.enqueue(torch.randn(6, 3, 16, 16))  # wraps: rows 6..9 then 0..1
    assert memory.negatives().shape == (10, 8) and int(memory.head) == 2
    torch.testing.assert_close(memory.queue[2:6], first[2:6])
    p, pm = next(model.parameters()), next(memory.network.parameters())
    with torch.no_grad():
        p.add_(1.0)
    expected = 0.9 * pm.detach().clone() + 0.1 * p.detach()
    memory.update_network(model)
    torch.testing.assert_close(pm, expected)
    assert not pm.requires_grad


# ---- checkpoints ------------------------------------------------------------------------------


class _FakeEngine:
    """Writes files like DeepSpeed's save_checkpoint; ``die_after`` files, then 'is killed'."""

    def __init__(self, die_after=None):
        self.die_after = die_after

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        assert save_latest is False  # DeepSpeed's own `latest` file would name unfinished tags
        os.makedirs(os.path.join(save_dir, tag))
        for i in range(3):
            if self.die_after == i:
                raise KeyboardInterrupt("killed while writing")
            with open(os.path.join(save_dir, tag, f"part{i}.pt"), "w") as f:
                f.write(json.dumps(client_state))


def test_checkpoint_marker_only_names_complete_checkpoints(tmp_path):
    ckpt = str(tmp_path)
    assert checkpoint.latest(ckpt) is None
    for step in (1, 2, 3):
        checkpoint.save(_FakeEngine(), ckpt, step, {"step": step}, keep=2)
    assert checkpoint.latest(ckpt) == {"tag": "step_00000003", "step": 3}
    assert sorted(os.listdir(ckpt)) == ["latest.json", "step_00000002", "step_00000003"]  # keep=2
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(_FakeEngine(die_after=1), ckpt, 4, {"step": 4}, keep=2)
    assert checkpoint.latest(ckpt) == {"tag": "step_00000003", "step": 3}  # the half-written 4 is ignored
    assert not [n for n in os.listdir(ckpt) if ".tmp" in n]


# ---- configuration checks (in process) ----------------------------------------------------------


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    from flashclr.dataio.digits import write_digits

    root = tmp_path_factory.mktemp("digits")
    write_digits(str(root))
    return str(root)


@pytest.fixture(scope="session")
def digits_odd(digits, tmp_path_factory):
    """The digits with 361 validation images: 2 ranks then score shards of 181 and 180."""
    root = tmp_path_factory.mktemp("digits_odd") / "d"
    shutil.copytree(digits, root)
    folder = root / "val" / "0"
    first = sorted(os.listdir(folder))[0]
    shutil.copy(folder / first, folder / f"copy_{first}")
    return str(root)


def _cfg(digits, tmp_path, **kw):
    base = dict(stage="pretrain", data=digits, out=str(tmp_path / "run"), model="r18_0.25x_sk0", batch_size=8)
    base.update(kw)
    return TrainConfig(**base)


def _fake_export(path, name="r18_0.25x_sk0", num_classes=10):
    model = build_model(name, num_classes=num_classes, small_images=True)
    os.makedirs(path, exist_ok=True)
    checkpoint.export(model, str(path), {"stage": "finetune"})
    return str(path)


@pytest.mark.parametrize(
    "change, world, message",
    [
        (dict(stage="fit"), 1, "unknown stage 'fit'"),
        (dict(model="r19_1x_sk0"), 1, "unknown model name 'r19_1x_sk0'"),
        (dict(batch_size=9), 2, "--batch-size 9 is not divisible by the 2 ranks"),
        (dict(data="/nonexistent/data"), 1, "missing train data"),
        (dict(stage="finetune", init=None), 1, "needs --init"),
        (dict(stage="finetune", init="/nonexistent/run"), 1, "--init '/nonexistent/run': no such directory"),
        (dict(stage="distill"), 1, "needs --teacher"),
        (dict(resume=True), 1, "--resume: missing checkpoint"),
        (dict(stage="finetune", init="random", label_fraction=1.5), 1, "--label-fraction must be in"),
        (dict(memory_size=-1), 1, "--memory-size must be >= 0"),
    ],
)
def test_bad_configuration_is_refused_before_any_work(digits, tmp_path, change, world, message):
    cfg = _cfg(digits, tmp_path, **change)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate(cfg, world, cfg.zero_stage or 0)


def test_checkpoint_of_another_architecture_is_refused(digits, tmp_path):
    run = _fake_export(tmp_path / "ft", name="r18_0.5x_sk0")
    cfg = _cfg(digits, tmp_path, stage="finetune", init=run, model="r18_0.25x_sk0")
    with pytest.raises(ConfigError, match="another architecture: r18_0.5x_sk0"):
        validate(cfg, 1, 0)
    cfg = _cfg(digits, tmp_path, stage="finetune", init=run, model=None)
    cfg = validate(cfg, 1, 0)
    assert (cfg.model, cfg.small_images) == ("r18_0.5x_sk0", True)  # taken from the checkpoint
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="missing checkpoint"):
        validate(_cfg(digits, tmp_path, stage="distill", teacher=str(empty)), 1, 0)
    teacher = _fake_export(tmp_path / "t3", num_classes=3)
    with pytest.raises(ConfigError, match="predicts 3 classes but --data has 10"):
        validate(_cfg(digits, tmp_path, stage="distill", teacher=teacher), 1, 0)


def test_existing_checkpoints_need_resume(digits, tmp_path):
    cfg = _cfg(digits, tmp_path)
    os.makedirs(os.path.join(cfg.out, "checkpoints"))
    with open(os.path.join(cfg.out, "checkpoints", "latest.json"), "w") as f:
        json.dump({"tag": "step_00000001", "step": 1}, f)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        validate(cfg, 1, 0)
    cfg.resume = True
    validate(cfg, 1, 0)


def test_deepspeed_config_is_filled_and_checked(tmp_path):
    cfg = TrainConfig(stage="pretrain", data="d", out="o", model="r18_1x_sk0", batch_size=64, zero_stage=2)
    ds = deepspeed_config(ZERO0, cfg, world_size=4, cuda=False)
    assert ds["train_batch_size"] == 64 and ds["train_micro_batch_size_per_gpu"] == 16
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] is False
    assert ds["gradient_clipping"] == 0.0
    assert deepspeed_config(ZERO0, cfg, 4, cuda=True)["bf16"]["enabled"] is True
    for name in ("ds_zero0.json", "ds_zero2.json", "ds_zero3.json"):
        with open(os.path.join(REPO_ROOT, "configs", name)) as f:
            assert "gradient_clipping" in json.load(f)
    bad = tmp_path / "noclip.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="must set gradient_clipping explicitly"):
        deepspeed_config(str(bad), cfg, 4, False)


def test_cli_reports_bad_configuration_with_exit_code_2(digits, tmp_path):
    proc = subprocess.run(
        [sys.executable, "train.py", "--stage", "finetune", "--data", digits, "--out", str(tmp_path / "o"),
         "--init", str(tmp_path / "no_such_run"), "--batch-size", "8", "--deepspeed_config", ZERO0],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "configuration error: --init" in proc.stderr and "no such directory" in proc.stderr
    assert not os.path.exists(tmp_path / "o")  # nothing was started


# ---- real DeepSpeed launches --------------------------------------------------------------------


def _launch(tmp_path, jobs, num_gpus, name):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(jobs))
    proc = run_deepspeed(
        "tests/scripts/train_jobs.py", ["--jobs", str(path)], num_gpus=num_gpus, timeout_s=400
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def _eval(run):
    with open(os.path.join(run, "eval.json")) as f:
        return json.load(f)


@torch.no_grad()
def _val_top1(model, digits):
    from flashclr.dataio import build_loader

    loader = build_loader("eval", os.path.join(digits, "val"), batch_size=64, image_size=16, num_threads=1)
    hits = [(model.logits(x).argmax(1) == y).float() for x, y in loader]
    return torch.cat(hits).mean().item()


def _weights(run):
    return checkpoint.read_weights(run)


def _reference_first_step(out):
    """A single process, no DeepSpeed, plain batch norm: one LARS step on the whole batch."""
    cfg = first_step_config(out)
    built = build_stage(cfg, 0, 1, torch.device("cpu"))
    opt = LARS(lars_param_groups(built.objective, cfg.stage_default("weight_decay")), lr=cfg.lr, momentum=0.9)
    view1, view2 = first_step_batch()
    loss = built.objective(view1, view2)
    loss.backward()
    opt.step()
    return loss.item(), built.model.state_dict()


@pytest.mark.slow
def test_two_ranks(digits, digits_odd, tmp_path):
    """2 ranks: first step equals one process on the global batch; all four stages run and chain;
    the teacher is partitioned; resume equals an uninterrupted run; NaN stops without saving."""
    t = str(tmp_path)
    common = ["--data", digits, "--batch-size", "8", *TINY]
    pre = [*common, "--stage", "pretrain", "--epochs", "0.05"]
    jobs = [
        ["first_step", t],
        ["train", [*pre, "--out", f"{t}/pre", "--max-steps", "3", "--memory-size", "32"]],
        ["train", [*pre, "--out", f"{t}/pre_a", "--max-steps", "2", "--save-every", "1"]],
        ["train", [*pre, "--out", f"{t}/pre_a", "--max-steps", "3", "--resume"]],
        ["train", [*pre, "--out", f"{t}/pre_b", "--max-steps", "3"]],
        ["train", [*common, "--stage", "finetune", "--init", f"{t}/pre", "--label-fraction", "0.1",
                   "--out", f"{t}/ft", "--max-steps", "2"]],
        ["train", [*common, "--stage", "linear-eval", "--init", f"{t}/pre", "--out", f"{t}/lin",
                   "--max-steps", "2"]],
        ["train", [*common, "--stage", "distill", "--teacher", f"{t}/ft", "--out", f"{t}/dis",
                   "--max-steps", "2", "--alpha", "0.5", "--label-fraction", "0.1"]],
        ["train", [*common, "--stage", "finetune", "--init", f"{t}/pre", "--out", f"{t}/ft_zero3",
                   "--max-steps", "2", "--deepspeed_config", ZERO3, "--data", digits_odd]],
        ["train", [*pre, "--out", f"{t}/nan", "--max-steps", "4", "--save-every", "1", "--optimizer", "sgd",
                   "--lr", "1e30"]],
    ]  # fmt: skip
    _launch(tmp_path, jobs, 2, "two")

    # first step: 2 DeepSpeed ranks with synchronised batch norm == 1 plain process
    got = torch.load(os.path.join(t, "first_step_world2.pt"))
    ref_loss, ref_state = _reference_first_step(t)
    assert got["loss"] == pytest.approx(ref_loss, rel=1e-5)
    for k, v in ref_state.items():
        torch.testing.assert_close(got["state"][k], v, rtol=1e-4, atol=1e-5, msg=k)

    # every stage ran, chained, and evaluated
    for run in ("ft", "lin", "dis"):
        result = _eval(os.path.join(t, run))
        assert result["val_images"] == 360 and 0.0 <= result["val_top1"] <= 1.0
        assert os.path.isfile(os.path.join(t, run, "metrics.png"))
    with open(os.path.join(t, "pre", "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in records)

    # the teacher is partitioned: each rank holds half of its parameters
    with open(os.path.join(t, "dis", "teacher_memory.json")) as f:
        memory = json.load(f)
    assert memory["world_size"] == 2
    for held in memory["per_rank_bytes"]:
        assert abs(held - memory["teacher_bytes"] / 2) <= 0.01 * memory["teacher_bytes"]

    # a ZeRO-3 student (LARS over its partitions) evaluates uneven shards without hanging and
    # exports whole weights that reproduce its accuracy
    result = _eval(os.path.join(t, "ft_zero3"))
    assert result["val_images"] == 361
    ft_zero3 = checkpoint.load_exported(os.path.join(t, "ft_zero3")).eval()
    assert _val_top1(ft_zero3, digits_odd) == pytest.approx(result["val_top1"])

    # resume == uninterrupted (weights, and the metrics of step 3)
    a, b = _weights(os.path.join(t, "pre_a")), _weights(os.path.join(t, "pre_b"))
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)

    # NaN: stopped with the step named, the last good checkpoint intact and loadable
    with open(os.path.join(t, "nan", "nonfinite.txt")) as f:
        message = f.read()
    mark = checkpoint.latest(os.path.join(t, "nan", "checkpoints"))
    assert f"at step {mark['step'] + 1}" in message and "last good checkpoint" in message
    assert not os.path.exists(os.path.join(t, "nan", "model.safetensors"))


@pytest.mark.slow
def test_one_rank_and_export_without_deepspeed(digits, tmp_path):
    """1 rank: every stage runs; the exported model loads with build_model in a process that never
    imports DeepSpeed and gives the logits the run evaluated with; the teacher is whole."""
    t = str(tmp_path)
    common = ["--data", digits, "--batch-size", "8", *TINY, "--max-steps", "2"]
    jobs = [
        ["train", [*common, "--stage", "pretrain", "--out", f"{t}/pre"]],
        ["train", [*common, "--stage", "finetune", "--init", f"{t}/pre", "--out", f"{t}/ft"]],
        ["train", [*common, "--stage", "linear-eval", "--init", "random", "--out", f"{t}/lin"]],
        ["train", [*common, "--stage", "distill", "--teacher", f"{t}/ft", "--out", f"{t}/dis"]],
    ]
    _launch(tmp_path, jobs, 1, "one")
    for run in ("ft", "lin", "dis"):
        assert _eval(os.path.join(t, run))["val_images"] == 360
    with open(os.path.join(t, "dis", "teacher_memory.json")) as f:
        memory = json.load(f)
    assert memory["per_rank_bytes"] == [memory["teacher_bytes"]]

    code = (
        "import sys, torch\n"
        "from flashclr.core.checkpoint import load_exported\n"
        f"m = load_exported({os.path.join(t, 'ft')!r}).eval()\n"
        "assert 'deepspeed' not in sys.modules, 'deepspeed was imported'\n"
        "print(tuple(m.logits(torch.zeros(2, 3, 16, 16)).shape))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "(2, 10)"


@pytest.mark.slow
def test_dead_rank_stops_the_others_and_is_named(digits, tmp_path):
    """SIGKILL rank 1 mid-training: the launcher exits non-zero within a minute, rank 0 does not
    hang, and rank 0 names rank 1 (and its pid) as the rank that failed."""
    out = tmp_path / "run"
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2"]
    launcher += ["--master_port", str(free_port())]
    args = ["--stage", "pretrain", "--data", digits, "--out", str(out), "--batch-size", "8", *TINY]
    cmd = [*launcher, "train.py", *args, "--max-steps", "100000", "--collective-timeout", "30"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO_ROOT}
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
        time.sleep(0.5)
    spawned = next(
        line for line in list(lines) if "spawned with command" in line and "--local_rank=1" in line
    )
    victim = int(spawned.split("process ")[1].split()[0])
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=5)
    text = "".join(lines)
    assert time.monotonic() - killed_at < 60
    assert proc.returncode != 0
    assert "exits with return code = -9" in text
    # The launcher's own line shows the last-spawned rank's command; the survivor names the victim,
    # whichever comes first: its collective failing (peer reset) or the launcher's SIGTERM.
    named = f"rank 1 (pid {victim}) on this host exited first: that is the rank that failed"
    assert named in text
    survivor = text[: text.index(named)].rsplit("train.py [rank ", 1)[-1]
    assert survivor.startswith("0]"), text[-3000:]
