"""Every shipped config parses through the CLI and builds its model."""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml

import lrm
from lra.lightning_cli import LRACLI
from lra.module import LRAModule

ROOT = Path(__file__).parents[2]
MODEL_CONFIGS = sorted((ROOT / "configs" / "model").glob("*.yaml"))
TASK_CONFIGS = sorted((ROOT / "configs" / "recall").glob("*.yaml")) + sorted(
    (ROOT / "configs" / "lra").glob("*.yaml"))


def _parse(*configs: Path):
    cli = LRACLI(LRAModule, None, subclass_mode_data=True, run=False,
                 args=[a for c in configs for a in ("--config", str(c))])
    return cli.config


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_model_config_composes_after_a_task_and_builds(path):
    model_cfg = yaml.safe_load(path.read_text())
    assert set(model_cfg) == {"model"} and set(model_cfg["model"]) == {"model"}, (
        "model configs are `lra fit` fragments: model: {model: {...}}")
    task = ROOT / "configs" / "recall" / "mqar.yaml"
    cfg = yaml.safe_load(task.read_text())["model"]["model"] | model_cfg["model"]["model"]
    cfg |= {"vocab_size": 256, "head": "lm"}
    model = lrm.LRModel(lrm.ModelConfig.from_dict(cfg))
    assert model.cfg.mixer == path.stem and model.cfg.d_model == 64  # the task keeps the size


@pytest.mark.parametrize("path", TASK_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_task_configs_parse(path):
    cfg = _parse(path)
    module, _, name = cfg.data.class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    # a data module of the harness, which tells the model its vocabulary and head
    assert issubclass(cls, pl.LightningDataModule) and callable(getattr(cls, "model_hints", None))


def test_task_config_data_arguments_do_not_leak_from_the_default(tmp_path):
    # the built-in default is MQAR at seq_len 128; a data config that leaves seq_len out must
    # get its own class's default, not the recall task's
    path = tmp_path / "pathx.yaml"
    path.write_text("data:\n  class_path: lra.data.PathfinderDataModule\n"
                    "  init_args: {resolution: 128}\n")
    cfg = _parse(path)
    assert cfg.data.init_args.seq_len != 128
