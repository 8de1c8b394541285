"""Every override of a private Lightning method, in one place, and the private names lra uses.

Written against Lightning 2.6 (``WRITTEN_FOR``) and jsonargparse 4.x. A private method can
change or vanish in any release, so the harness never overrides one anywhere else: each
override here is a thin base class that turns the private method into a public-named hook, and
:mod:`lra.lightning_cli` builds on those hooks.

- :class:`ResumableCheckpoint`: ``ModelCheckpoint.__warn_if_dir_not_empty`` (name-mangled) is
  silenced for a run that resumes into its own folder (``resuming = True``);
- :class:`DescribedProgressBar`: ``RichProgressBar._get_train_description(current_epoch)``
  becomes ``train_description(current_epoch)``, falling back to Lightning's own text;
- :class:`HookedCLI`: ``LightningCLI._parse_ckpt_path()`` (where Lightning reads a checkpoint's
  hyperparameters, before ``before_instantiate_classes``) first calls
  ``before_checkpoint_is_read()``, and ``LightningCLI._instantiate_trainer(config, callbacks)``
  first passes both through ``adjust_trainer(config, callbacks)``.

``PRIVATE_OVERRIDES`` and ``PRIVATE_USES`` list every private name lra overrides or calls, with
the parameters it was written for; ``tests/lra/test_lightning_compat.py`` checks that they
still exist with those parameters and that Lightning still calls the overridden ones where
these hooks assume. When that test fails after an upgrade, adapt this module (and the names
here), not the callers.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI

WRITTEN_FOR = "2.6"

# (class, private name, its parameters after self): the methods overridden below
PRIVATE_OVERRIDES: tuple[tuple[type, str, tuple[str, ...]], ...] = (
    (ModelCheckpoint, "_ModelCheckpoint__warn_if_dir_not_empty", ("dirpath",)),
    (RichProgressBar, "_get_train_description", ("current_epoch",)),
    (LightningCLI, "_parse_ckpt_path", ()),
    (LightningCLI, "_instantiate_trainer", ("config", "callbacks")),
)
# (class, private name, its parameters after self, or None for an attribute): what
# lra.lightning_cli.Checkpoint calls to write last.ckpt and the top-k files at its own moments
PRIVATE_USES: tuple[tuple[type, str, tuple[str, ...] | None], ...] = (
    (ModelCheckpoint, "_save_last_checkpoint", ("trainer", "monitor_candidates")),
    (ModelCheckpoint, "_save_topk_checkpoint", ("trainer", "monitor_candidates")),
    (ModelCheckpoint, "_monitor_candidates", ("trainer",)),
    (ModelCheckpoint, "_should_skip_saving_checkpoint", ("trainer",)),
    (ModelCheckpoint, "_every_n_train_steps", None),
    (ModelCheckpoint, "_last_global_step_saved", None),
)


class ResumableCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that does not warn about a non-empty folder when ``resuming``."""

    resuming = False  # set by the CLI before a fit from a checkpoint

    def _ModelCheckpoint__warn_if_dir_not_empty(self, dirpath) -> None:
        # a resumed run writes into its own, non-empty folder: that is the point, not a risk
        if not self.resuming:
            super()._ModelCheckpoint__warn_if_dir_not_empty(dirpath)


class DescribedProgressBar(RichProgressBar):
    """RichProgressBar whose training-bar text comes from ``train_description``."""

    def train_description(self, current_epoch: int) -> str | None:
        """The text left of the training bar; None keeps Lightning's ``Epoch N/M``."""
        return None

    def _get_train_description(self, current_epoch: int) -> str:
        text = self.train_description(current_epoch)
        return super()._get_train_description(current_epoch) if text is None else text


class HookedCLI(LightningCLI):
    """LightningCLI with two hooks it does not offer publicly."""

    def before_checkpoint_is_read(self) -> None:
        """Runs after parsing, right before Lightning reads ``ckpt_path``'s hyperparameters
        (earlier than ``before_instantiate_classes``)."""

    def adjust_trainer(self, config: dict[str, Any], callbacks: list[Callback]
                       ) -> tuple[dict[str, Any], list[Callback]]:
        """The Trainer's arguments and the extra callbacks, as the Trainer will get them."""
        return config, callbacks

    def _parse_ckpt_path(self) -> None:
        self.before_checkpoint_is_read()
        super()._parse_ckpt_path()

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]):
        config, callbacks = self.adjust_trainer(config, callbacks)
        return super()._instantiate_trainer(config, callbacks)
