"""The lra harness: recall generators, the quick loop, the CLI, checkpoints and exact resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lrm
from lra import quick
from lra.cli import main as lra_main
from lra.data import recall_tasks
from lra.module import merge_hints
from lra.resumable import EpochBatchSampler

# ----------------------------------------------------------------------------- generators


def test_mqar_matches_zoology_layout():
    P, L, V = 8, 96, 200
    x, y = recall_tasks.mqar(50, L, vocab_size=V, num_kv_pairs=P, seed=3)
    assert x.shape == y.shape == (50, L)
    assert torch.equal(x, recall_tasks.mqar(50, L, vocab_size=V, num_kv_pairs=P, seed=3)[0])
    keys, values = x[:, 0:2 * P:2], x[:, 1:2 * P:2]
    assert ((keys >= 1) & (keys < V // 2)).all() and ((values >= V // 2) & (values < V)).all()
    assert all(len(set(k.tolist())) == P for k in keys)  # each key once per example
    scored = y != recall_tasks.IGNORE
    assert (scored.sum(1) == P).all() and not scored[:, :2 * P].any()
    for i in range(50):  # at each scored position the input is a key, the target its value
        kv = dict(zip(keys[i].tolist(), values[i].tolist(), strict=True))
        for t in scored[i].nonzero().flatten().tolist():
            assert kv[x[i, t].item()] == y[i, t].item()
    # power law: queries cluster right after the context
    pos = scored.nonzero()[:, 1].float() - 2 * P
    assert (pos < (L - 2 * P) / 4).float().mean() > 0.5


def test_selective_copying_targets_are_the_data_in_order():
    x, y = recall_tasks.selective_copying(20, 64, vocab_size=10, n_tokens=8, seed=1)
    for i in range(20):
        data = x[i, :56][x[i, :56] >= 2]
        assert torch.equal(data, y[i, 56:]) and (x[i, 56:] == 1).all()
        assert (y[i, :56] == recall_tasks.IGNORE).all()


def test_induction_heads_target_follows_the_earlier_special_token():
    x, y = recall_tasks.induction_heads(30, 50, vocab_size=8, seed=2)
    for i in range(30):
        (p,) = (x[i, :-1] == 0).nonzero().flatten().tolist()
        assert x[i, -1] == 0 and y[i, -1] == x[i, p + 1]
        assert (y[i, :-1] == recall_tasks.IGNORE).all()


def test_passkey_answer_is_the_hidden_number():
    x, y = recall_tasks.passkey(20, 100, n_digits=5, seed=4)
    for i in range(20):
        (k,) = (x[i] == recall_tasks.PASSKEY_KEY).nonzero().flatten().tolist()
        assert torch.equal(y[i, -5:], x[i, k + 1:k + 6])
        assert x[i, -5] == recall_tasks.PASSKEY_QUERY
    assert x.max() < recall_tasks.PASSKEY_VOCAB


def test_passkey_random_filler_keeps_key_and_digits_but_breaks_the_period():
    xr, yr = recall_tasks.passkey(16, 200, n_digits=3, seed=5)
    xs, ys = recall_tasks.passkey(16, 200, n_digits=3, seed=5, filler="random")
    assert torch.equal(ys, yr)  # the same digits at the same depth, the same targets
    assert torch.equal(xs == recall_tasks.PASSKEY_KEY, xr == recall_tasks.PASSKEY_KEY)
    filler = ~torch.isin(xs, torch.tensor([recall_tasks.PASSKEY_KEY, recall_tasks.PASSKEY_QUERY,
                                            *range(10)]))
    assert torch.isin(xs[filler], recall_tasks.PASSKEY_FILLER).all()
    # repeated filler is periodic (period 8); random filler is not, and uses every token
    body = xs[:, 100:150]  # away from the key in most rows: compare the period row by row
    period = len(recall_tasks.PASSKEY_FILLER)
    assert (xr[:, 100:150] == xr[:, 100 + period:150 + period]).float().mean() > 0.9
    assert (body == xs[:, 100 + period:150 + period]).float().mean() < 0.3
    assert set(xs[filler].tolist()) == set(recall_tasks.PASSKEY_FILLER.tolist())
    with pytest.raises(ValueError, match="filler"):
        recall_tasks.passkey(1, 50, filler="shuffled")


def test_generators_reject_impossible_settings():
    with pytest.raises(ValueError, match="seq_len"):
        recall_tasks.mqar(1, 20, vocab_size=100, num_kv_pairs=8)
    with pytest.raises(ValueError, match="unknown recall task"):
        recall_tasks.make("copy", 1, 10)


# ----------------------------------------------------------------------------- training


def test_short_cpu_training_lowers_the_loss():
    torch.manual_seed(0)
    x, y = recall_tasks.mqar(512, 32, vocab_size=32, num_kv_pairs=4, seed=0)
    model = lrm.LRModel(lrm.ModelConfig(d_model=32, n_layers=2, vocab_size=32, head="lm"))
    losses = quick.fit(model, x, y, steps=80, batch_size=32, lr=3e-3)
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    # accuracy: argmax hits over the scored positions (targets != -100), in batches
    with torch.no_grad():
        hits = model(x[:64]).argmax(-1) == y[:64]
    scored = y[:64] != -100
    expected = (hits & scored).sum().item() / scored.sum().item()
    assert quick.accuracy(model, x[:64], y[:64], batch_size=24) == pytest.approx(expected)


def test_merge_hints_fills_and_refuses_conflicts():
    cfg = merge_hints(lrm.ModelConfig(), {"vocab_size": 7, "n_classes": 7, "head": "lm"})
    assert (cfg.vocab_size, cfg.head) == (7, "lm")
    with pytest.raises(ValueError, match="vocab_size"):
        merge_hints(lrm.ModelConfig(vocab_size=9), {"vocab_size": 7})


def test_sampler_resumes_mid_epoch_and_at_epoch_end():
    s = EpochBatchSampler(10, 3, seed=5)
    full = [list(s), list(s)]  # two epochs
    for used in (2, 4):  # mid-epoch 0; end of epoch 0 (4 batches)
        r = EpochBatchSampler(10, 3, seed=5)
        it = iter(r)
        for _ in range(used):
            next(it)
        state = r.state_dict()
        fresh = EpochBatchSampler(10, 3, seed=5)
        fresh.load_state_dict(state)
        rest = list(fresh)
        expected = full[0][used:] if used < 4 else full[1]
        assert rest == expected
    assert full[0] != full[1]  # a new order each epoch


# ----------------------------------------------------------------------------- CLI

TINY = ["--data.init_args.train_size", "256", "--data.init_args.val_size", "32",
        "--data.init_args.batch_size", "32", "--model.model.d_model", "32",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--checkpoint.every_n_train_steps", "10"]


def _run_fit(root: Path, steps: int, extra: list[str] | None = None) -> None:
    lra_main(["fit", "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(root),
              "--trainer.logger", "false", *TINY, *(extra or [])])


def test_cli_fit_writes_logs_and_loadable_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lra_main(["fit", "--config", str(Path(__file__).parents[2] / "configs/recall/mqar.yaml"),
              "--trainer.max_steps", "12", *TINY, "--data.init_args.eval_lengths", "[256]"])
    run = tmp_path / "runs" / "lra" / "version_0"
    metrics = (run / "metrics.csv").read_text()
    assert "val/acc" in metrics and "val_L256/acc" in metrics
    assert list(run.glob("events.out.tfevents*")), "no TensorBoard log"
    # resuming into the same folder appends to metrics.csv instead of replacing it
    lra_main(["fit", "--config", str(run / "config.yaml"), "--trainer.max_steps", "16",
              "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    resumed = (run / "metrics.csv").read_text()
    assert resumed.startswith(metrics.rstrip("\n")) and len(resumed) > len(metrics)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 16 and ckpt["hyper_parameters"]["model"]["vocab_size"] == 256
    lra_main(["validate", "--config", str(run / "config.yaml"), "--ckpt_path",
              str(run / "checkpoints" / "last.ckpt"), "--trainer.logger", "false"])


def test_logged_lr_is_the_configured_rate_not_a_tagged_group(tmp_path, monkeypatch):
    """S4D tags A and dt with lr 1e-3; train/lr must follow the configured 0.02 and its schedule."""
    monkeypatch.chdir(tmp_path)
    lra_main(["fit", "--trainer.max_steps", "8", *TINY, "--model.model.mixer", "s4d",
              "--model.lr", "0.02", "--model.warmup_steps", "4", "--trainer.log_every_n_steps",
              "1"])
    rows = (tmp_path / "runs" / "lra" / "version_0" / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("train/lr")
    lrs = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert len(lrs) >= 6
    assert max(lrs) == pytest.approx(0.02, rel=0.05)  # the peak after warmup, not 1e-3
    assert lrs[0] < max(lrs)  # the warmup is visible


def test_cli_rejects_unknown_model_key(tmp_path, capsys):
    with pytest.raises(SystemExit):
        lra_main(["fit", "--model.model.d_modle", "3", "--trainer.default_root_dir",
                  str(tmp_path)])
    assert "d_modle" in capsys.readouterr().err


def test_killed_run_resumes_to_the_same_end_state(tmp_path):
    """Kill -9 a run part-way, resume from last.ckpt: the end state equals an unbroken run."""
    steps = 50  # 8 batches per epoch, checkpoints every 10 steps: the resume is mid-epoch
    _run_fit(tmp_path / "a", steps)
    b = tmp_path / "b"
    # the killed leg runs in a child process: give it this process's torch thread count, since a
    # different count changes the order of floating-point sums (pytest-xdist workers use one)
    threads = torch.get_num_threads()
    cmd = [sys.executable, "-c", f"import torch; torch.set_num_threads({threads}); "
           "from lra.cli import main; import sys; main(sys.argv[1:])",
           "fit", "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(b),
           "--trainer.logger", "false", *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    last = b / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["global_step"] >= 20:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(last, weights_only=True)["global_step"]
    assert 10 <= killed_at < steps, f"the run was not killed part-way (step {killed_at})"
    _run_fit(b, steps, ["--ckpt_path", str(last)])
    end_a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    end_b = torch.load(last, weights_only=True)
    assert end_a["global_step"] == end_b["global_step"] == steps
    for k, v in end_a["state_dict"].items():
        assert torch.equal(v, end_b["state_dict"][k]), f"{k} differs after resume"


class _Fixed(torch.nn.Module):
    """A 'model' whose prediction at every position is the given token (logits one-hot)."""

    def __init__(self, preds: torch.Tensor, vocab: int) -> None:
        super().__init__()
        self.preds, self.vocab, self.seen = preds, vocab, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.one_hot(self.preds[self.seen:self.seen + len(x)], self.vocab)
        self.seen += len(x)
        return out.float()


def test_accuracy_by_position_splits_the_sequence_into_equal_slices():
    # L = 10 in 4 slices: position p is in slice p·4 // 10 -> 0 0 0 1 1 2 2 2 3 3
    I = -100
    targets = torch.tensor([[5, I, I, I, I, 1, I, I, I, 2],
                            [I, 5, I, I, I, 1, 3, I, I, I],
                            [I, I, 4, I, I, I, I, 7, I, I]])
    preds = torch.tensor([[5, 0, 0, 0, 0, 1, 0, 0, 0, 0],  # slice 0 right, 2 right, 3 wrong
                          [0, 5, 0, 0, 0, 0, 3, 0, 0, 0],  # slice 0 right, 2: wrong, right
                          [0, 0, 0, 0, 0, 0, 0, 7, 0, 0]])  # slice 0 wrong (p 2), 2 right (p 7)
    acc = quick.accuracy_by_position(_Fixed(preds, 8), preds, targets, n_bins=4, batch_size=2)
    # slice 0: 2 of 3; slice 1 (positions 3, 4) holds no query; slice 2: 3 of 4; slice 3: 0 of 1
    assert acc == [pytest.approx(2 / 3), None, pytest.approx(3 / 4), 0.0]
    overall = quick.accuracy(_Fixed(preds, 8), preds, targets, batch_size=2)
    assert overall == pytest.approx(5 / 8)
    with pytest.raises(ValueError, match="n_bins"):
        quick.accuracy_by_position(_Fixed(preds, 8), preds, targets, n_bins=0)
