"""The `lra` command in daily use: help, errors, the end of a fit, evaluation beside a run,
and a quiet console."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lra.cli import SUBCOMMANDS
from lra.cli import main as lra_main

ROOT = Path(__file__).parents[2]
# a few steps of the main job: 8 batches per epoch, validation every 5 steps
SMALL = ["--data.init_args.train_size", "256", "--data.init_args.val_size", "64",
         "--data.init_args.batch_size", "32", "--model.model.d_model", "32",
         "--trainer.val_check_interval", "5", "--checkpoint.every_n_train_steps", "5"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_help_lists_every_subcommand_quickly():
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "lra.cli", "--help"], capture_output=True,
                         text=True, check=True, env=_env(), cwd=ROOT).stdout
    assert time.monotonic() - t0 < 3.0, "lra --help must not import Lightning"
    lines = out.splitlines()
    for name, sub in SUBCOMMANDS.items():
        assert f"  {name}  " in out or f"  {name} " in out
        assert sum(sub.summary in line for line in lines) == 1  # one line each


def test_generate_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        lra_main(["generate", "listops", "--help"])
    out = capsys.readouterr().out
    assert "--n-train N_TRAIN" in out and "(default: 96000)" in out


def test_unknown_key_gets_one_paragraph_with_the_closest_key(capsys):
    for typo, meant in [("--trainer.max_stepz", "--trainer.max_steps"),
                        ("--model.model.d_modle", "--model.model.d_model"),
                        ("--data.init_args.seq_lenn", "--data.init_args.seq_len")]:
        with pytest.raises(SystemExit):
            lra_main(["fit", typo, "5"])
        err = capsys.readouterr().err
        assert f"Did you mean {meant}?" in err, err
        assert len(err.strip().splitlines()) <= 2, err
    with pytest.raises(SystemExit):
        lra_main(["fitt"])
    assert "Did you mean `lra fit`?" in capsys.readouterr().err


def test_truncated_checkpoint_is_named(tmp_path):
    good = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, good)
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(SystemExit, match=r"cannot read checkpoint .*cut\.ckpt.*truncated"):
        lra_main(["test", "--ckpt_path", str(bad)])
    with pytest.raises(SystemExit, match=r"no checkpoint at .*missing\.ckpt"):
        lra_main(["fit", "--ckpt_path", str(tmp_path / "missing.ckpt")])


def test_fit_then_test_then_resume(tmp_path, monkeypatch, capsys):
    """fit ends with a validation at its last step, a test of the best checkpoint and a
    summary; `lra test` on the run's config leaves the run's files alone, and the run still
    resumes from its own config."""
    monkeypatch.chdir(tmp_path)
    lra_main(["fit", "--trainer.max_steps", "12", *SMALL,
              "--early_stopping.stopping_threshold", "null"])
    run = tmp_path / "runs" / "lra" / "version_0"
    out = capsys.readouterr().out
    rows = _rows(run / "metrics.csv")
    val = [(int(r["step"]), float(r["val/acc"])) for r in rows if r.get("val/acc")]
    assert [s for s, _ in val] == [4, 9, 11], "validation at steps 5, 10 and the last, 12"
    best_acc = max(a for _, a in val)
    best_step = next(s + 1 for s, a in val if a == best_acc)  # a tie keeps the earlier one
    best = run / "checkpoints" / f"best-step={best_step}.ckpt"
    assert best.is_file(), sorted(p.name for p in (run / "checkpoints").iterdir())
    test_acc = [float(r["test/acc"]) for r in rows if r.get("test/acc")]
    assert len(test_acc) == 1
    assert f"best val/acc: {best_acc:.4f} at step {best_step}" in out, out
    assert f"test (best checkpoint): test/acc {test_acc[0]:.4f}" in out
    assert f"run folder: {Path('runs/lra/version_0')}" in out
    resume = f"lra fit --config {Path('runs/lra/version_0/config.yaml')} --ckpt_path"
    assert resume in out and f"lra test --config {Path('runs/lra/version_0/config.yaml')}" in out

    config, metrics = (run / "config.yaml").read_text(), (run / "metrics.csv").read_text()
    events = sorted(run.glob("events.out.tfevents*"))
    lra_main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(best)])
    lra_main(["validate", "--config", str(run / "config.yaml"), "--ckpt_path", str(best)])
    assert (run / "config.yaml").read_text() == config
    assert (run / "metrics.csv").read_text() == metrics
    assert sorted(run.glob("events.out.tfevents*")) == events
    assert float(_rows(run / "test" / "metrics.csv")[-1]["test/acc"]) == pytest.approx(
        test_acc[0])
    assert "ckpt_path" in (run / "test" / "config.yaml").read_text()
    assert (run / "validate" / "metrics.csv").is_file()

    lra_main(["fit", "--config", str(run / "config.yaml"), "--trainer.max_steps", "14",
              "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 14


def test_early_stopping_at_the_threshold(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lra_main(["fit", "--trainer.max_steps", "40", *SMALL, "--test_after_fit", "false",
              "--early_stopping.stopping_threshold", "0.0"])  # any accuracy passes 0
    out = capsys.readouterr().out
    assert "fit done: 5 steps" in out and "(stopped early: val/acc passed 0.0)" in out, out
    assert "test: skipped" in out


NOISE = ["intended to run from within Python", "litlogger", "LeafSpec", "/-2", "v_num",
         "FLOPs", "Trainer already configured"]


def test_the_main_job_prints_no_noise(tmp_path):
    """`lra fit` from the shell (the real entry point, progress bar and summary on)."""
    proc = subprocess.run([sys.executable, "-m", "lra.cli", "fit", "--trainer.max_steps", "6",
                           *SMALL], capture_output=True, text=True, env=_env(), cwd=tmp_path,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "fit done" in out
    for noise in NOISE:
        assert noise not in out, f"{noise!r} in the output of lra fit:\n{out}"


def test_compile_is_an_opt_in_that_leaves_checkpoints_alone():
    """``--model.compile true`` compiles the model's forward in place: the state-dict keys (and so
    every checkpoint) are those of the eager module, and the flag is saved with the run."""
    from lra.module import LRAModule
    from lrm import ModelConfig

    cfg = ModelConfig(mixer="s4d", d_model=16, n_layers=1, vocab_size=10, n_classes=3)
    eager, compiled = LRAModule(cfg), LRAModule(cfg, compile=True)
    assert eager.model._compiled_call_impl is None  # off unless asked for
    assert compiled.model._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert compiled.hparams["compile"] is True and eager.hparams["compile"] is False
