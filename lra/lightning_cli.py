"""``lra fit / validate / test``: LightningCLI with the harness's defaults and its habits.

What this adds to a plain LightningCLI:

- defaults for the README's main job (attention on MQAR), loggers that share one run folder
  ``runs/lra/version_N/``, and checkpoints (``last.ckpt`` every 100 steps, the best by
  ``val/acc`` as soon as it is measured, also kept as ``best.ckpt``, the name summaries print);
- the end of a fit: a validation at the last step, early stopping once ``val/acc`` passes a
  threshold (0.99 by default; ``--early_stopping.stopping_threshold null`` turns it off), a test
  of the best checkpoint where the task has a test split (``--test_after_fit false`` skips it),
  and a short summary with the commands to resume and to test;
- ``validate`` and ``test`` write their config and metrics into a folder of their own inside
  the run (``runs/lra/version_N/test/``), never over the training run's files, so the run stays
  resumable;
- a quiet console (no advert, no deprecation noise from Lightning's internals, a progress bar
  that shows the step limit instead of ``Epoch 9/-2``) and short errors: an unknown key gets
  one paragraph with the closest valid key, an unreadable checkpoint is named.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import pickle
import re
import shutil
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch

# Lightning 2.6's own pytree helper trips a deprecation in torch >= 2.10 on every step; it says
# nothing a user can act on. Only that message is silenced.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

from lightning.pytorch import Callback  # noqa: E402
from lightning.pytorch.callbacks import EarlyStopping, ModelSummary  # noqa: E402
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, SaveConfigCallback  # noqa: E402
from lightning.pytorch.utilities.model_helpers import is_overridden  # noqa: E402
from lightning.pytorch.utilities.model_summary import get_human_readable_count  # noqa: E402

from lra.lightning_compat import (  # noqa: E402
    DescribedProgressBar,
    HookedCLI,
    ResumableCheckpoint,
)
from lra.module import LRAModule  # noqa: E402
from lrm.names import unknown as unknown_name  # noqa: E402


class _DropAdverts(logging.Filter):
    """Lightning announces a cloud logger on every run; nothing else of its info is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())

# The built-in task when neither the command line nor a config file names one: the class's own
# defaults are the README's main job. It is added to the arguments only then, not set as a
# parser default: jsonargparse carries a default's init_args into any other data class that
# shares an argument name (seq_len), which would silently shorten a Path-X run to 128 tokens.
DEFAULT_DATA = "lra.data.recall.RecallDataModule"
# The main job validates every 100 steps (16 forward batches of 64 per 100 training steps), so
# that early stopping at 99% acts within 100 steps of reaching it.
DEFAULT_DATA_ARGS = ["--data", DEFAULT_DATA, "--trainer.val_check_interval", "100",
                     "--trainer.check_val_every_n_epoch", "null"]


# ----------------------------------------------------------------------------- callbacks


class Checkpoint(ResumableCheckpoint):
    """ModelCheckpoint whose best checkpoint is scored by a validation of its own weights.

    Lightning's step-triggered save runs before that step's validation, so a ``best-step=400``
    file would be ranked by the ``val/acc`` of an earlier step. Here the step trigger writes
    ``last.ckpt`` only, and the top-k files are written right after each validation. It also
    writes ``last.ckpt`` when training stops between two saves, so the final weights are never
    lost, and remembers the step of the best checkpoint for the run summary.

    The best checkpoint is also kept as ``best.ckpt`` beside the step-named file (a hard link,
    or a copy where links are not possible), and the run summary names that: a resumed run
    that finds a better checkpoint replaces ``best-step=N.ckpt`` by another name, but
    ``best.ckpt`` stays where an earlier summary said it is.
    """

    BEST_ALIAS = "best.ckpt"

    best_step: int | None = None
    _stage = "fit"

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._stage = stage
        super().setup(trainer, pl_module, stage)

    def _uses_split_saves(self) -> bool:
        return self.monitor is not None and self._every_n_train_steps >= 1

    _last_after_validation = False

    @staticmethod
    def _validation_follows(trainer) -> bool:
        """Whether a validation runs right after this training step: validation every N global
        steps (``check_val_every_n_epoch=None``, as the leaderboard's runs set it), or the last
        step. A wrong guess only delays last.ckpt to the next save (``on_train_end`` at worst)."""
        every = trainer.val_check_batch
        on_steps = (trainer.check_val_every_n_epoch is None and isinstance(every, int)
                    and every > 0
                    and (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % every == 0)
        return on_steps or 0 < trainer.max_steps <= trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._uses_split_saves():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if (trainer.global_step % self._every_n_train_steps == 0
                and not self._should_skip_saving_checkpoint(trainer)):
            if self._validation_follows(trainer):
                # written after that validation instead: a run killed during the validation
                # resumes from the save before this step and validates this step again,
                # where a last.ckpt of this step would resume past its validation
                self._last_after_validation = True
            else:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
                self._last_step_of_last = trainer.global_step
        return None

    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._uses_split_saves():
            return super().on_validation_end(trainer, pl_module)
        if trainer.state.fn != "fit" or trainer.sanity_checking or trainer.fast_dev_run:
            return None
        candidates = self._monitor_candidates(trainer)
        if self.monitor in candidates:
            before = self.best_model_path
            self._save_topk_checkpoint(trainer, candidates)
            if self.best_model_path != before:
                self.best_step = trainer.global_step
                self._write_best_alias(trainer)
                if getattr(self, "_last_step_of_last", None) == trainer.global_step:
                    # last.ckpt of this step was written before this validation: write it
                    # again, so that a run resumed from it knows its new best checkpoint
                    self._save_last_checkpoint(trainer, candidates)
        if self._last_after_validation:  # the step's last.ckpt, deferred to here
            self._last_after_validation = False
            self._save_last_checkpoint(trainer, candidates)
            self._last_step_of_last = trainer.global_step
        return None

    def _write_best_alias(self, trainer) -> None:
        src = Path(self.best_model_path)
        if not trainer.is_global_zero or not src.is_file() or src.name == self.BEST_ALIAS:
            return
        dst = src.parent / self.BEST_ALIAS
        tmp = src.parent / (self.BEST_ALIAS + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)  # atomic: a reader never sees a half-written best.ckpt

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        last_done = getattr(self, "_last_step_of_last", None) if self._uses_split_saves() \
            else self._last_global_step_saved
        if self.save_last and trainer.global_step != last_done:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_step = state_dict.get("best_step")
        # an evaluation saves nothing, so the ranking of a fit is of no use to it (and Lightning
        # would warn that the evaluation's folder differs from the fit's)
        if self._stage == "fit":
            super().load_state_dict(state_dict)


class ValidateAtLastStep(Callback):
    """Ask for a stop at ``max_steps``: Lightning then validates at that step (it validates
    whenever a stop is requested), instead of ending on the last scheduled validation."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class ProgressBar(DescribedProgressBar):
    """Rich progress bar that names the step limit (Lightning prints ``Epoch 9/-2`` when only
    ``max_steps`` bounds the run) and the early-stopping threshold, if any, and leaves out the
    logger's version (``v_num``)."""

    def train_description(self, current_epoch: int) -> str | None:
        trainer = self.trainer
        if trainer.max_epochs in (None, -1) and trainer.max_steps > 0:
            return f"Epoch {current_epoch} ({stop_condition(trainer)})"
        return None

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def stop_condition(trainer) -> str:
    """``stops at step 3000 or at val/acc >= 0.99``: every way the run can end by itself."""
    text = f"stops at step {trainer.max_steps}"
    stopper = getattr(trainer, "early_stopping_callback", None)
    threshold = getattr(stopper, "stopping_threshold", None)
    if threshold is not None:
        sign = ">=" if stopper.mode == "max" else "<="
        text += f" or at {stopper.monitor} {sign} {threshold:g}"
    return text


class Summary(ModelSummary):
    """Parameter counts per top-level module. Lightning's table adds a FLOPs column that reads
    0 unless the module defines an example input, which ours cannot (inputs depend on the task)."""

    @staticmethod
    def summarize(summary_data, total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes, total_flops: int = 0,
                  **kw: Any) -> None:
        cols = dict(summary_data)
        rows = [f"  {n:<10} {t:<14} {p:>8}"
                for n, t, p in zip(cols["Name"], cols["Type"], cols["Params"], strict=True)]
        print("\n".join([f"  {'module':<10} {'type':<14} {'params':>8}", *rows,
                         f"  {get_human_readable_count(total_parameters)} parameters "
                         f"({get_human_readable_count(trainable_parameters)} trainable), "
                         f"{model_size:.1f} MB"]))


class SaveConfig(SaveConfigCallback):
    """Lightning's SaveConfigCallback, except that an evaluation without a logger writes no
    config at all (it would land in the working directory, or over a run's own config)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" and trainer.logger is None:
            return
        super().setup(trainer, pl_module, stage)


# ----------------------------------------------------------------------------- errors


def _option_names(cls_path: str) -> list[str]:
    """The constructor arguments of ``module.Class`` (a data module, ModelConfig, ...)."""
    module, _, name = cls_path.rpartition(".")
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
        return [p for p in inspect.signature(cls).parameters if p not in ("args", "kwargs")]
    except Exception:  # a class that cannot be imported suggests nothing
        return []


def _all_options(parser) -> list[str]:
    names = {s for s in getattr(parser, "_option_string_actions", {}) if s.startswith("--")}
    for action in getattr(parser, "_actions", []):
        sub = getattr(action, "_name_parser_map", None)
        for p in (sub or {}).values():
            names |= _all_options(p)
    return sorted(names)


def explain_parse_error(message: str, parser, subcommand: str) -> str:
    """One short paragraph for a command-line error: the unknown key and its closest match."""
    prog = f"lra {subcommand}".strip()
    unknown: list[tuple[str, list[str]]] = []
    m = re.search(r"unrecognized arguments: (.*)", message)
    if m:
        valid = _all_options(parser)
        unknown += [(a.split("=")[0], valid) for a in m.group(1).split() if a.startswith("--")]
    for key, cls_path, opt in re.findall(
            r'Parser key "([^"]+)".*?class_path \'([^\']+)\':\s*Option \'([^\']+)\' is not '
            r'accepted', message, flags=re.S):
        prefix = "--data.init_args." if key == "data" else f"--{key}."
        unknown.append((prefix + opt, [prefix + o for o in _option_names(cls_path)]))
    missing = re.search(r'Parser key "config":.*?File does not exist: \'([^\']+)\'', message,
                        flags=re.S)
    if missing and not unknown:
        return f"{prog}: {unknown_config(missing.group(1))}"
    task = re.search(r'Parser key "data":.*?(?:class_path \'([^\']+)\'|dot import path '
                     r'string: (\S+))', message, flags=re.S)
    if task and not unknown and not _importable(task.group(1) or task.group(2)):
        return f"{prog}: {unknown_task(task.group(1) or task.group(2))}"
    if not unknown:
        first = message.strip().splitlines()
        return (f"{prog}: {' '.join(line.strip() for line in first[:8])}\n"
                f"`{prog} --help` lists every option.")
    parts = []
    for key, valid in unknown:
        parts.append(unknown_name("option", key, valid, show=str, listing=""))
    return f"{prog}: {' '.join(parts)} `{prog} --help` lists every option."


def _importable(cls_path: str) -> bool:
    module, _, name = cls_path.rpartition(".")
    try:
        return hasattr(__import__(module, fromlist=[name]), name) if module else False
    except Exception:
        return False


def unknown_config(given: str) -> str:
    """One paragraph for a config file that does not exist: the nearest shipped ones."""
    from lra.catalog import closest_config

    with contextlib.suppress(ValueError):  # jsonargparse made it absolute: show it as typed
        given = str(Path(given).relative_to(Path.cwd()))
    near = closest_config(given)
    hint = f" Did you mean {' or '.join(near)}?" if near else ""
    return (f"unknown config file {given} (no such file).{hint} `lra list` shows every "
            f"config file, mixer and task.")


def unknown_task(given: str) -> str:
    """One paragraph for a ``--data`` class that does not exist: the nearest task classes."""
    from lra.catalog import TASKS

    return unknown_name("task", given.rpartition(".")[2], TASKS, show=lambda _: given,
                        show_match=lambda name: TASKS[name][0],
                        listing="`lra list` shows every task, config file and mixer.")


def _own_error(err: BaseException) -> BaseException | None:
    """The deepest exception in ``err``'s chain that lrm or lra raised (a ValueError or
    TypeError whose message is written for the user), or None."""
    ours = None
    roots = (str(Path(__file__).resolve().parents[1] / "lrm"), str(Path(__file__).parent))
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        tb = err.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if (isinstance(err, (ValueError, TypeError)) and tb is not None
                and str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(roots)):
            ours = err
        err = err.__cause__ or err.__context__
    return ours


class _Parser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one paragraph instead of the full usage."""

    subcommand = ""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            return super().error(message, ex)
        sys.stderr.write(explain_parse_error(message, self, _Parser.subcommand) + "\n")
        raise SystemExit(2)


def _load_error(p: Path) -> Exception | None:
    """Why ``p`` cannot be read as a torch checkpoint, or None if it can."""
    try:
        # mmap reads the zip directory and the pickle, not the tensors: cheap at any size
        torch.load(p, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError:
        return None  # readable, but holds more than tensors: Lightning loads it and says so
    except Exception as err:
        return err
    return None


def _loadable_neighbours(p: Path, limit: int = 3) -> list[Path]:
    """Up to ``limit`` other checkpoints in ``p``'s folder that load: last.ckpt and best.ckpt
    first, then the newest."""
    if not p.parent.is_dir():
        return []
    others = [q for q in p.parent.glob("*.ckpt") if q.name != p.name and q.is_file()]
    first = {"last.ckpt": 0, Checkpoint.BEST_ALIAS: 1}
    others.sort(key=lambda q: (first.get(q.name, 2), -q.stat().st_mtime))
    return [q for q in others if _load_error(q) is None][:limit]


def _instead(p: Path) -> str:
    found = _loadable_neighbours(p)
    if found:
        return f"Checkpoints beside it that load: {', '.join(str(q) for q in found)}."
    return (f"No other checkpoint in {p.parent} loads: train again, or take one from another "
            f"run (runs/lra/version_N/checkpoints/).")


def _check_checkpoint(path: str | None, subcommand: str) -> None:
    """Fail early, naming the file, when a checkpoint is missing or unreadable (torch's own
    message for a truncated file names neither the file nor a way out); suggest only
    checkpoints that exist and load."""
    if path is None or path in ("best", "last", "hpc", "registry"):
        return
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"lra {subcommand}: no checkpoint at {p}. {_instead(p)}")
    err = _load_error(p)
    if err is not None:
        said = textwrap.shorten(str(err).splitlines()[0] if str(err) else type(err).__name__,
                                width=120, placeholder=" ...")
        raise SystemExit(
            f"lra {subcommand}: cannot read checkpoint {p} ({p.stat().st_size} bytes): the "
            f"file is truncated or is not a torch checkpoint (a run killed while saving leaves "
            f"a partial file; torch says: {said}). {_instead(p)}") from None


# ----------------------------------------------------------------------------- the CLI


class LRACLI(HookedCLI):
    started: float | None = None  # set by run(): the wall time of the summary counts from here

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="after `fit`, test the best checkpoint where the task has a "
                                 "test split")
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
            # stop once validation accuracy passes the threshold; patience is effectively off,
            # since LRA tasks often sit at chance for many validations before they learn
            "early_stopping.monitor": "val/acc",
            "early_stopping.mode": "max",
            "early_stopping.stopping_threshold": 0.99,
            "early_stopping.patience": 1_000_000,
            # judge after a validation, never at a training epoch's end (no val/acc there yet)
            "early_stopping.check_on_train_epoch_end": False,
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
        # EarlyStopping's monitor has no default of its own, so the help marked it required
        # although the default above fills it
        for action in parser._actions:
            if action.dest == "early_stopping.monitor":
                action.required = False

    def instantiate_classes(self) -> None:
        """Building the model or the data module: an error lrm or lra wrote for the user (an
        unknown mixer, a mixer option, a bad size) is printed alone, without the traceback of
        the configuration library around it."""
        try:
            super().instantiate_classes()
        except Exception as err:
            own = _own_error(err)
            if own is None:
                raise
            raise SystemExit(f"lra {self.subcommand or ''}: {own} `lra list` shows every "
                             f"config file, mixer and task.") from None

    def before_checkpoint_is_read(self) -> None:
        sub = self.config.get("subcommand")
        if sub:
            _check_checkpoint(self.config[sub].get("ckpt_path"), sub)

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        _check_checkpoint(cfg.get("ckpt_path"), self.subcommand or "")
        # The CSV and TensorBoard loggers would each pick their own next version number; give
        # them one, so that a run's metrics.csv, events and checkpoints share one folder.
        loggers = cfg.get("trainer", {}).get("logger")
        if not isinstance(loggers, list) or not loggers:
            return
        args = [lg.init_args for lg in loggers if hasattr(lg, "init_args")]
        if not args:
            return
        versions = {a.get("version") for a in args}
        if versions == {None}:
            roots = {Path(a.get("save_dir", "runs")) / str(a.get("name", "lra")) for a in args}
            taken = [int(p.name.split("_")[1]) for r in roots if r.is_dir()
                     for p in r.iterdir()
                     if p.name.startswith("version_") and p.name.split("_")[1].isdigit()]
            for a in args:
                a["version"] = f"version_{max(taken, default=-1) + 1}"
        elif self.subcommand in ("validate", "test", "predict") and len(versions) == 1:
            # evaluating a run from its own config: write into a folder inside the run
            version = str(versions.pop())
            run_dirs = [Path(a.get("save_dir", "runs")) / str(a.get("name", "")) / version
                        for a in args]
            if any(d.is_dir() and any(d.iterdir()) for d in run_dirs):
                n = 1
                while any((d / _numbered(self.subcommand, n)).exists() for d in run_dirs):
                    n += 1
                for a in args:
                    a["version"] = f"{version}/{_numbered(self.subcommand, n)}"

    def adjust_trainer(self, config: dict[str, Any], callbacks: list[Callback]
                       ) -> tuple[dict[str, Any], list[Callback]]:
        callbacks = [*callbacks, ValidateAtLastStep()]
        if config.get("enable_progress_bar") is not False:
            callbacks.append(ProgressBar())
        if config.get("enable_model_summary") is not False:
            callbacks.append(Summary())
            # ours replaces Lightning's; the flag only stops Lightning announcing that
            config = {**config, "enable_model_summary": False}
        return config, callbacks

    def before_fit(self) -> None:
        if isinstance(self.trainer.checkpoint_callback, Checkpoint):
            self.trainer.checkpoint_callback.resuming = \
                self.config.get("fit", self.config).get("ckpt_path") is not None

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.interrupted:
            return
        ckpt = trainer.checkpoint_callback
        best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
        # read before testing: loading the best checkpoint restores the callback's older state
        monitor = getattr(ckpt, "monitor", None)
        score = getattr(ckpt, "best_model_score", None)
        score = None if score is None else float(score)
        best_step, last = getattr(ckpt, "best_step", None), getattr(ckpt, "last_model_path", "")
        guard = getattr(self.model, "step_guard", None)
        skipped = guard.summary() if guard is not None else None
        cfg = self.config.get("fit", self.config)
        test: dict[str, float] | str | None = None
        if not cfg.get("test_after_fit", True):
            test = "skipped (--test_after_fit false)"
        elif self.datamodule is None or not is_overridden("test_dataloader", self.datamodule):
            test = "none: the task has no test split"
        else:
            try:
                results = trainer.test(self.model, datamodule=self.datamodule,
                                       ckpt_path=best, verbose=False)
                test = dict(results[0]) if results else {}
            except FileNotFoundError as err:
                test = f"skipped: {err}"
        # trainer.log_dir broadcasts from rank 0 under DDP: every rank asks, one prints
        log_dir = trainer.log_dir
        if trainer.is_global_zero:
            print(run_summary(trainer, monitor, score, best_step, best, last, test,
                              time.monotonic() - (self.started or time.monotonic()),
                              log_dir=log_dir, skipped=skipped), flush=True)


def _numbered(name: str, n: int) -> str:
    return name if n == 1 else f"{name}_{n}"


def run_summary(trainer, monitor: str | None, score: float | None, best_step: int | None,
                best: str | None, last: str | None, test: dict[str, float] | str | None,
                seconds: float, log_dir: str | None = None, skipped: str | None = None) -> str:
    """The last lines of a fit: what was reached, where it is, how to go on. ``skipped``
    says how many optimizer steps were refused for non-finite gradients (lra.step_guard)."""
    lines = ["", f"fit done: {trainer.global_step} steps in {_duration(seconds)}"]
    stopper = trainer.early_stopping_callback
    if stopper is not None and stopper.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD:
        lines[-1] += (f" (stopped early: {stopper.monitor} passed "
                      f"{stopper.stopping_threshold})")
    elif stopper is not None and stopper.stopping_reason_message:
        lines[-1] += f" (stopped early: {stopper.stopping_reason_message})"
    if skipped:
        lines.append(f"  {skipped}")
    if score is not None:
        at = f" at step {best_step}" if best_step is not None else ""
        lines.append(f"  best {monitor}: {score:.4f}{at}")
    if isinstance(test, dict):
        shown = {k: v for k, v in test.items() if k.endswith("/acc")} or test
        what = "best checkpoint" if best else "final weights"
        lines.append(f"  test ({what}): " + ", ".join(f"{k} {v:.4f}"
                                                      for k, v in shown.items()))
    elif test:
        lines.append(f"  test: {test}")
    run_dir = Path(log_dir) if log_dir else None
    if run_dir is not None:
        lines.append(f"  run folder: {run_dir}")
    config = run_dir / "config.yaml" if run_dir is not None else None
    if best and (Path(best).parent / Checkpoint.BEST_ALIAS).is_file():
        best = str(Path(best).parent / Checkpoint.BEST_ALIAS)  # stays valid when resumed
    if config is not None and config.is_file():
        if last:
            lines.append(f"  resume: lra fit --config {config} --ckpt_path {last}")
        lines.append(f"  test:   lra test --config {config} --ckpt_path {best or last}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s"


def _names_data(argv: list[str]) -> bool:
    """True if the arguments choose a data module (``--data X`` or a config with ``data:``);
    ``--data.init_args.*`` overrides alone keep the built-in task."""
    import yaml

    for i, arg in enumerate(argv):
        if arg in ("--data", "--data.class_path") or arg.startswith(("--data=",
                                                                      "--data.class_path=")):
            return True
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else (
            argv[i + 1] if arg in ("--config", "-c") and i + 1 < len(argv) else None)
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


def run(argv: list[str], *, from_shell: bool = False, started: float | None = None,
        cli_class: type[LRACLI] | None = None, module_class: type | None = None) -> None:
    """``lra fit|validate|test|predict ...`` (``argv`` starts with the subcommand).

    ``cli_class`` and ``module_class`` replace :class:`LRACLI` and :class:`LRAModule` (``lra
    pretrain`` is this with its own CLI defaults and module)."""
    cli_class = cli_class or LRACLI
    argv = list(argv)
    if argv[0] in ("fit", "validate", "test", "predict") and not _names_data(argv):
        argv[1:1] = DEFAULT_DATA_ARGS
    _Parser.subcommand = argv[0]
    cli_class.started = started if started is not None else time.monotonic()
    # LightningCLI warns when it is handed arguments while sys.argv holds others (the shell's
    # own, or pytest's); the arguments go through sys.argv instead, for the time of the run.
    saved = sys.argv
    sys.argv = [saved[0] if from_shell else "lra", *argv]
    try:
        cli_class(module_class or LRAModule, None, subclass_mode_data=True,
                  seed_everything_default=0, args=None, save_config_callback=SaveConfig,
                  parser_class=_Parser, save_config_kwargs={"overwrite": True},
                  parser_kwargs={"description": "lra: train and evaluate lrm models "
                                                "(LightningCLI). `lra --help` lists the "
                                                "subcommands."})
    except FileNotFoundError as err:
        hf = sys.modules.get("lra.data.hf")  # loaded if a hub dataset was asked for
        if hf is None or not isinstance(err, hf.DatasetUnavailable):
            raise
        # the message says what to do; the stack around it says nothing more
        raise SystemExit(f"lra {argv[0]}: {err}") from None
    finally:
        sys.argv = saved
        _close_process_group()


def _close_process_group() -> None:
    """Tear down the DDP process group that Lightning leaves open once the run is over.

    Lightning keeps it for a next run in the same process; left to interpreter exit, gloo's
    worker threads are destroyed unjoined and the process aborts ("terminate called without an
    active exception", exit code -6) after a run that otherwise succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["LRACLI", "Checkpoint", "run"]
