"""`lra` as a newcomer meets it: the commands a summary prints keep working, a typo gets one
paragraph wherever it was made, a damaged checkpoint points only to files that load, and the
help's first screen says how to choose."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lra.catalog import config_files
from lra.cli import COMMON_OPTIONS
from lra.cli import main as lra_main
from lrm import ModelConfig

ROOT = Path(__file__).parents[2]
# a few steps of the main job: 8 batches per epoch, validation and last.ckpt every 5 steps
SMALL = ["--data.init_args.train_size", "256", "--data.init_args.val_size", "64",
         "--data.init_args.batch_size", "32", "--model.model.d_model", "32",
         "--trainer.val_check_interval", "5", "--checkpoint.every_n_train_steps", "5",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--early_stopping.stopping_threshold", "null", "--test_after_fit", "false",
         # the validation loss falls at every validation of a fresh model: the best moves
         "--checkpoint.monitor", "val/loss", "--checkpoint.mode", "min"]


def _lra(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lra.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def _commands(out: str) -> dict[str, list[str]]:
    """The summary's `resume:` and `test:` commands, as argument lists for lra.cli.main."""
    found = {}
    for kind in ("resume", "test"):
        m = re.search(rf"^\s+{kind}:\s+lra (.*)$", out, flags=re.M)
        assert m, f"no {kind} command in the summary:\n{out}"
        found[kind] = m.group(1).split()
    return found


# ----------------------------------------------------------------------------- the summary


def test_a_summary_stays_valid_after_the_run_is_resumed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lra_main(["fit", "--trainer.max_steps", "10", *SMALL])
    first = _commands(capsys.readouterr().out)
    ckpts = tmp_path / "runs" / "lra" / "version_0" / "checkpoints"
    step_named = {p.name for p in ckpts.glob("best-step=*.ckpt")}
    assert first["test"][-1].endswith("best.ckpt"), first["test"]

    lra_main(first["resume"] + ["--trainer.max_steps", "20"])
    capsys.readouterr()
    # the resumed leg found a better checkpoint and replaced the step-named one ...
    assert {p.name for p in ckpts.glob("best-step=*.ckpt")} != step_named
    best = torch.load(ckpts / "best.ckpt", weights_only=False)
    assert best["global_step"] > 10
    # ... and every command of the first summary still works
    lra_main(first["test"] + ["--trainer.logger", "false"])
    assert "test/acc" in capsys.readouterr().out
    lra_main(first["resume"] + ["--trainer.max_steps", "22"])
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 22


# ----------------------------------------------------------------------------- unknown names


@pytest.mark.parametrize(("args", "names"), [
    (["--model.model.mixer", "mambaa"], ["'mamba'"]),
    (["--config", "configs/model/mambaa.yaml"], ["configs/model/mamba.yaml"]),
    (["--config", "configs/modle/gdn.yaml"], ["configs/model/gdn.yaml"]),
    (["--data", "RecalDataModule"], ["lra.data.recall.RecallDataModule"]),
    (["--trainer.max_stepz", "5"], ["--trainer.max_steps"]),
])
def test_a_typo_on_the_command_line_gets_one_short_paragraph(args, names):
    proc = _lra("fit", *args, "--trainer.max_steps", "1", cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    assert len(out.strip().splitlines()) <= 6, out
    for name in names:
        assert f"Did you mean {name}" in out, out


def test_a_typo_in_a_yaml_file_gets_the_same_paragraph_as_in_python(tmp_path):
    import lrm

    (tmp_path / "typo.yaml").write_text("model:\n  model:\n    mixer: mambaa\n")
    proc = _lra("fit", "--config", "typo.yaml", "--trainer.max_steps", "1", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and len(out.strip().splitlines()) <= 6, out
    with pytest.raises(ValueError) as err:
        lrm.build("mambaa", d=64)
    assert str(err.value) in out, out  # Python's message, word for word


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:2000])


def test_a_damaged_checkpoint_suggests_only_checkpoints_that_load(tmp_path, capsys):
    for name in ("last.ckpt", "best.ckpt", "best-step=5.ckpt"):
        _checkpoint(tmp_path / name)
    _cut(tmp_path / "last.ckpt")
    _cut(tmp_path / "best-step=5.ckpt")
    with pytest.raises(SystemExit) as exit_:
        lra_main(["test", "--ckpt_path", str(tmp_path / "last.ckpt")])
    said = str(exit_.value)
    assert f"cannot read checkpoint {tmp_path / 'last.ckpt'}" in said
    assert str(tmp_path / "best.ckpt") in said
    assert "best-step=5" not in said, said  # damaged too: not a way out
    assert "last.ckpt," not in said and "last.ckpt." not in said.split("torch says")[1]

    _cut(tmp_path / "best.ckpt")
    with pytest.raises(SystemExit, match=r"No other checkpoint .* loads"):
        lra_main(["test", "--ckpt_path", str(tmp_path / "last.ckpt")])
    with pytest.raises(SystemExit, match=r"no checkpoint at .*missing\.ckpt\. No other"):
        lra_main(["test", "--ckpt_path", str(tmp_path / "missing.ckpt")])


def test_a_missing_checkpoint_lists_the_ones_beside_it(tmp_path):
    _checkpoint(tmp_path / "best.ckpt")
    with pytest.raises(SystemExit, match=r"best-step=1000\.ckpt.*that load: .*best\.ckpt"):
        lra_main(["test", "--ckpt_path", str(tmp_path / "best-step=1000.ckpt")])


# ----------------------------------------------------------------------------- help


def test_fit_help_first_screen_says_how_to_choose(tmp_path):
    proc = _lra("fit", "--help", cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert len(out.splitlines()) <= 50, out
    screen = "\n".join(out.splitlines()[:24])
    for shown in ("--config", "--model.model.mixer", "--trainer.max_steps", "configs/recall"):
        assert shown in screen, screen
    for name in ("mamba2", "gdn.yaml", "mqar.yaml", "--help-all"):
        assert name in out
    assert "configs/recall/: " in out and "mqar.yaml" in out


def test_the_common_options_exist_with_the_defaults_the_short_help_states(tmp_path):
    full = _lra("fit", "--help-all", cwd=tmp_path).stdout
    assert len(full.splitlines()) > 300  # the full dump is still one flag away
    model_defaults = re.search(r"--model.model MODEL .*?default: (\{.*?\})\)",
                               " ".join(full.split()), flags=re.S).group(1)
    model_defaults = ast.literal_eval(model_defaults)
    for flag, what in COMMON_OPTIONS:
        option = flag.split()[0]
        said = re.search(r"default: ([^;)]+)", what)
        if option.startswith("--model.model."):  # ModelConfig's fields: one nested option
            field = option.removeprefix("--model.model.")
            assert field in {f.name for f in dataclasses.fields(ModelConfig)}, option
            assert str(model_defaults[field]) == said.group(1), option
            continue
        assert re.search(rf"^\s+(-\w \w+, )?{re.escape(option)}\b", full, flags=re.M), option
        if said:
            block = re.split(rf"\n  {re.escape(option)} ", full, maxsplit=1)[1]
            block = block.split("\n  -", 1)[0]
            shown = re.search(r"default: ([^),]+)", " ".join(block.split())).group(1)
            assert shown.strip().lower() == said.group(1).strip().lower(), (option, shown)
    monitor = full.split("  --early_stopping.monitor ", 1)[1].split("\n  --", 1)[0]
    assert "required" not in monitor, monitor


def test_lra_list_shows_every_config_and_mixer(capsys):
    import lrm

    lra_main(["list"])
    out = capsys.readouterr().out
    for path in config_files():
        assert Path(path).name in out
    for name in lrm.available():
        assert name in out
    assert len(config_files()) >= 30


def test_the_progress_bar_names_every_way_the_run_can_stop():
    from types import SimpleNamespace

    from lra.lightning_cli import stop_condition

    stopper = SimpleNamespace(stopping_threshold=0.99, mode="max", monitor="val/acc")
    trainer = SimpleNamespace(max_steps=3000, early_stopping_callback=stopper)
    assert stop_condition(trainer) == "stops at step 3000 or at val/acc >= 0.99"
    stopper.stopping_threshold = None
    assert stop_condition(trainer) == "stops at step 3000"
    trainer.early_stopping_callback = None
    assert stop_condition(trainer) == "stops at step 3000"
