"""Scale-out on CPU: `lra fit` under DDP (two gloo processes) for a few MQAR steps, then resumed
from its checkpoint; and a few bf16-mixed training steps of every registered mixer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lrm
from lrm.config import ModelConfig
from lrm.model import LRModel

ROOT = Path(__file__).parents[2]
TINY = ["--data.init_args.train_size", "128", "--data.init_args.val_size", "32",
        "--data.init_args.batch_size", "16", "--model.model.d_model", "32",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger", "false", "--checkpoint.every_n_train_steps", "3",
        "--trainer.val_check_interval", "3", "--trainer.check_val_every_n_epoch", "null"]


def _fit(root: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    # `python -m lra.cli`: Lightning's DDP launcher starts the second process with the same
    # module and arguments
    cmd = [sys.executable, "-m", "lra.cli", "fit", "--config",
           str(ROOT / "configs/recall/mqar.yaml"), "--trainer.max_steps", str(steps),
           "--trainer.default_root_dir", str(root), "--trainer.strategy", "ddp",
           "--trainer.devices", "2", "--trainer.accelerator", "cpu", *TINY, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def test_ddp_two_cpu_processes_fit_and_resume(tmp_path):
    first = _fit(tmp_path, 6)
    assert first.returncode == 0, first.stderr[-3000:]
    (last,) = tmp_path.rglob("last.ckpt")
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 6
    out = first.stdout + first.stderr
    assert "MEMBER: 2/2" in out, out[-2000:]  # Lightning's log line of the second rank
    resumed = _fit(tmp_path, 9, "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    end = torch.load(last, weights_only=True)
    assert end["global_step"] == 9
    changed = [k for k, v in end["state_dict"].items()
               if not torch.equal(v, ckpt["state_dict"][k])]
    assert changed, "resuming trained nothing"


@pytest.mark.parametrize("name", lrm.available())
def test_bf16_mixed_steps_have_no_nan(name):
    """What Lightning's ``precision='bf16-mixed'`` does on CPU: fp32 weights, the forward under
    ``torch.autocast(bfloat16)``. A few AdamW steps on a next-token task stay finite."""
    torch.manual_seed(0)
    model = LRModel(ModelConfig(mixer=name, d_model=32, n_layers=2, vocab_size=16, head="lm"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens = torch.randint(0, 16, (4, 33))
    losses = []
    for _ in range(4):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), f"{name}: non-finite grad"
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, torch.tensor(losses))), f"{name}: {losses}"
    assert losses[-1] < losses[0], f"{name} did not learn in bf16-mixed: {losses}"


def test_epoch_batch_sampler_shards_across_ranks():
    from lra.resumable import EpochBatchSampler

    shards = [EpochBatchSampler(11, 2, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 3  # 6 examples per rank (one wrapped around)
    seen = [[i for batch in s for i in batch] for s in shards]
    assert set(seen[0]) | set(seen[1]) == set(range(11))
    assert len(set(seen[0]) & set(seen[1])) == 1  # only the wrapped example is shared
    whole = [i for batch in EpochBatchSampler(11, 2, seed=3) for i in batch]
    assert seen[0] == whole[0::2] and seen[1] == (whole + whole)[1:12:2]
