"""The ``lra`` command.

    lra fit      [--config task.yaml --config model.yaml ...]   train (LightningCLI)
    lra validate / lra test --config ... --ckpt_path PATH          evaluate a checkpoint
    lra generate listops|pathfinder --out DIR                       make LRA data locally
    lra leaderboard [--quick]                                       run the grid, write docs/

With no config, ``lra fit`` trains the built-in default: a 2-layer attention model (d=64) on
MQAR (L=128, 16 key-value pairs), on CPU, in a few minutes. Several ``--config`` files compose
left to right (task config, then model config), and any key can be overridden on the command
line (``--model.model.mixer gdn``, ``--trainer.max_steps 500``). Multi-GPU and multi-node come
from Lightning's own strategies: ``--trainer.devices 4 --trainer.strategy ddp`` (or fsdp).

Resume a killed run exactly with ``--ckpt_path runs/<name>/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lra.module import LRAModule

# The built-in task when neither the command line nor a config file names one: the class's own
# defaults are the README's main job. It is added to the arguments only then, not set as a
# parser default: jsonargparse carries a default's init_args into any other data class that
# shares an argument name (seq_len), which would silently shorten a Path-X run to 128 tokens.
DEFAULT_DATA = "lra.data.recall.RecallDataModule"


class Checkpoint(ModelCheckpoint):
    """ModelCheckpoint that also writes ``last.ckpt`` when training stops between two saves
    (``max_steps`` reached mid-interval), so the final weights are never lost."""

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class LRACLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.link_arguments("data", "model.hints", compute_fn=_hints,
                              apply_on="instantiate")
        parser.set_defaults({
            "model.model": {"mixer": "attention", "d_model": 64, "n_layers": 2},
            "model.lr": 3e-3,
            "model.weight_decay": 0.1,
            "model.warmup_steps": 100,
            "checkpoint.save_last": True,
            "checkpoint.every_n_train_steps": 100,
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.save_top_k": 1,
            "checkpoint.filename": "best-{step}",
            "trainer.max_steps": 3000,
            "trainer.gradient_clip_val": 1.0,
            # the train loaders shard themselves across ranks (lra.resumable), so that a
            # resumed multi-process run continues mid-epoch exactly as a single one does
            "trainer.use_distributed_sampler": False,
            "trainer.log_every_n_steps": 25,
            "trainer.logger": [
                {"class_path": "lra.csv_logger.CSVLogger",
                 "init_args": {"save_dir": "runs", "name": "lra"}},
                {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                 "init_args": {"save_dir": "runs", "name": "lra"}},
            ],
        })


    def before_instantiate_classes(self) -> None:
        # The CSV and TensorBoard loggers would each pick their own next version number; give
        # them one, so that a run's metrics.csv, events and checkpoints share one folder.
        cfg = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        loggers = cfg.get("trainer", {}).get("logger")
        if not isinstance(loggers, list) or not loggers:
            return
        args = [lg.init_args for lg in loggers if hasattr(lg, "init_args")]
        if not args or any(a.get("version") is not None for a in args):
            return
        roots = {Path(a.get("save_dir", "runs")) / str(a.get("name", "lra")) for a in args}
        taken = [int(p.name.split("_")[1]) for r in roots if r.is_dir() for p in r.iterdir()
                 if p.name.startswith("version_") and p.name.split("_")[1].isdigit()]
        version = f"version_{max(taken, default=-1) + 1}"
        for a in args:
            a["version"] = version


def _names_data(argv: list[str]) -> bool:
    """True if the arguments choose a data module (``--data X`` or a config with ``data:``);
    ``--data.init_args.*`` overrides alone keep the built-in task."""
    import yaml

    for i, arg in enumerate(argv):
        if arg in ("--data", "--data.class_path") or arg.startswith(("--data=",
                                                                      "--data.class_path=")):
            return True
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else (
            argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None)
        if path and Path(path).is_file():
            cfg = yaml.safe_load(Path(path).read_text()) or {}
            if "data" in cfg or any(isinstance(v, dict) and "data" in v for v in cfg.values()):
                return True
    return False


def _hints(datamodule) -> dict:
    hints = getattr(datamodule, "model_hints", None)
    if hints is None:
        raise TypeError(f"{type(datamodule).__name__} has no model_hints(); every lra data "
                        f"module says which vocabulary, classes and head the model needs")
    return hints()


def main(argv: list[str] | None = None) -> None:
    from_shell = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "generate":
        from lra.data.generate import main as generate

        return generate(argv[1:])
    if argv and argv[0] == "leaderboard":
        from lra.leaderboard import main as leaderboard

        return leaderboard(argv[1:])
    if argv and argv[0] in ("fit", "validate", "test", "predict") and not _names_data(argv):
        argv[1:1] = ["--data", DEFAULT_DATA]
        from_shell = False
    LRACLI(LRAModule, None, subclass_mode_data=True, seed_everything_default=0,
           args=None if from_shell else argv,
           save_config_kwargs={"overwrite": True},
           parser_kwargs={"description": __doc__})
    return None


if __name__ == "__main__":
    main()
