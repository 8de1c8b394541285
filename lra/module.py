"""The one LightningModule every task trains with.

Batches are dicts (see :mod:`lra.data`, and :mod:`lra.data.recall` for the recall tasks):

- classification: ``inputs`` (B, L) tokens, ``lengths`` (B,) valid tokens, ``targets`` (B,);
- retrieval (two towers): the above plus ``inputs2``, ``lengths2``;
- language-model style recall: ``inputs`` (B, L), ``targets`` (B, L) with -100 where unscored.

The model is an :class:`lrm.LRModel`. The data module's ``model_hints()`` (vocabulary size,
number of classes, head) is merged into the ModelConfig by the CLI, so a model config never
repeats what the data already knows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning.pytorch as pl
import torch
from torchmetrics.classification import MulticlassAccuracy

from lra.init_from import load_encoder
from lra.objective import IGNORE, cross_entropy, warmup_cosine
from lra.step_guard import StepGuard, grad_norm
from lrm import LRModel, ModelConfig
from lrm.optim import param_groups

# the fields a data module may decide; any other hint is an error
HINT_KEYS = ("vocab_size", "n_classes", "head", "pooling")


def merge_hints(cfg: ModelConfig, hints: dict[str, Any] | None) -> ModelConfig:
    """Fill the data module's hints into ``cfg``; a conflicting explicit value is an error."""
    if not hints:
        return cfg
    unknown = sorted(set(hints) - set(HINT_KEYS))
    if unknown:
        raise ValueError(f"model hints may only set {HINT_KEYS}; got {unknown}")
    defaults = ModelConfig()
    updates = {}
    for key, value in hints.items():
        mine = getattr(cfg, key)
        if mine not in (None, getattr(defaults, key), value):
            raise ValueError(f"the model config sets {key}={mine!r} but the data needs "
                             f"{key}={value!r}; remove {key} from the model config")
        updates[key] = value
    return dataclasses.replace(cfg, **updates)


class LRAModule(pl.LightningModule):
    """Trains an LRModel with AdamW (lrm.optim.param_groups) and warmup + cosine decay.

    Args:
        model: the ModelConfig (YAML: the ``model.model`` mapping).
        hints: filled in by the CLI from the data module; leave unset.
        lr, weight_decay, betas: AdamW. Tagged parameters (SSM A, dt, ...) keep their own.
        warmup_steps: linear warmup; then cosine decay to ``min_lr_ratio``·lr at the last step.
        init_from: a checkpoint of ``lra pretrain`` (same task and model configs): its encoder
            weights (embedding, blocks, final norm) replace the random ones when ``fit``
            starts (not when resuming); the head starts fresh. See :mod:`lra.init_from` and
            :mod:`lra.pretrain`.
        compile: run the model through ``torch.compile`` (opt-in, off by default). On the CPU
            it paid for some mixers and not others (docs/bench/compile.md: ``mamba2`` 1.7x,
            ``gdn`` 1.3x, ``mamba`` 0.9x, ``s4d`` 0.3x, each after 0.5-2.5 min of compiling;
            outputs equal to fp32 round-off). Checkpoints are unchanged: the model's own
            ``forward`` is compiled in place, so no wrapper appears in the state dict.

    A step whose gradients are not finite is skipped (:mod:`lra.step_guard`): the weights and
    the optimizer's state stay as they were, the step is logged and counted
    (``skipped_steps``, the metric ``train/skipped_steps``, the end-of-fit summary), and the
    run stops with what to do after ``lra.step_guard.MAX_IN_A_ROW`` of them in a row.
    """

    def __init__(self, model: ModelConfig | None = None, hints: dict[str, Any] | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.98), warmup_steps: int = 1000,
                 min_lr_ratio: float = 0.0, init_from: str | None = None,
                 compile: bool = False) -> None:
        super().__init__()
        cfg = model if model is not None else ModelConfig()
        if isinstance(cfg, dict):
            cfg = ModelConfig.from_dict(cfg)
        cfg = merge_hints(cfg, hints)
        # plain types only, so checkpoints load with torch.load(..., weights_only=True)
        self.save_hyperparameters({"model": cfg.to_dict(), "hints": None, "lr": lr,
                                   "weight_decay": weight_decay, "betas": list(betas),
                                   "warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio,
                                   "init_from": init_from, "compile": compile})
        self.cfg = cfg
        self.model = LRModel(cfg)
        if compile:
            self.model.compile()  # nn.Module.compile: in place, state-dict keys unchanged
        n_out = self.model.head[-1].out_features if cfg.head == "retrieval" else \
            self.model.head.out_features
        self.n_out = n_out
        self.metrics = torch.nn.ModuleDict()
        self._names: dict[str, list[str]] = {}
        self.step_guard = StepGuard()

    # -- data-dependent setup -----------------------------------------------------------------

    def setup(self, stage: str) -> None:
        init_from = self.hparams.get("init_from")
        if stage == "fit" and init_from and self.trainer.ckpt_path is None:
            # a resumed run restores its own weights after setup, so it skips this
            load_encoder(self.model, init_from)
        dm = getattr(self.trainer, "datamodule", None)
        for split in ("train", "val", "test"):
            names = list(getattr(dm, f"{split}_names", None) or [split])
            self._names[split] = names
            for n in names:
                key = "acc_" + n.replace("/", "_")
                if key not in self.metrics:
                    self.metrics[key] = MulticlassAccuracy(self.n_out, average="micro",
                                                           ignore_index=IGNORE)

    # -- steps --------------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["inputs"], batch.get("lengths"), tokens2=batch.get("inputs2"),
                          lengths2=batch.get("lengths2"))

    def _step(self, batch: dict[str, torch.Tensor], split: str, idx: int = 0) -> torch.Tensor:
        logits = self(batch)
        targets = batch["targets"]
        if logits.dim() == 3:  # lm: a prediction per position
            logits, targets = logits.flatten(0, 1), targets.flatten()
        return self._score(logits, targets, split, idx, len(batch["inputs"]))

    def _score(self, logits: torch.Tensor, targets: torch.Tensor, split: str, idx: int,
               batch_size: int, what: str = "loss") -> torch.Tensor:
        """Cross-entropy of (N, C) logits against (N,) targets (-100 ignored), logged with the
        split's accuracy. A non-finite evaluation loss stops the run with what to do; in
        training, its gradients are not finite either, and the step guard skips the step."""
        loss = cross_entropy(logits, targets)
        if split != "train" and not torch.isfinite(loss):
            raise FloatingPointError(
                f"{split} {what} is {loss.item()} at step {self.global_step}; lower the learning "
                f"rate, enable gradient clipping (trainer.gradient_clip_val) or use fp32")
        name = self._names.get(split, [split])[idx]
        metric = self.metrics["acc_" + name.replace("/", "_")]
        metric(logits.detach(), targets)
        on_step = split == "train"
        self.log(f"{name}/loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=True,
                 add_dataloader_idx=False, batch_size=batch_size)
        self.log(f"{name}/acc", metric, on_step=on_step, on_epoch=not on_step, prog_bar=True,
                 add_dataloader_idx=False, batch_size=batch_size)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # The configured rate under the schedule. Groups are sorted by rate, so group 0 may be
        # a tagged group (S4's A and dt at a fixed 1e-3); every group shares the schedule's
        # factor, so read the factor there and apply it to the configured rate.
        g = self.optimizers().param_groups[0]
        self.log("train/lr", self.hparams.lr * g["lr"] / g["initial_lr"], on_step=True,
                 on_epoch=False)
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        self._step(batch, "val", dataloader_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int,
                  dataloader_idx: int = 0) -> None:
        self._step(batch, "test", dataloader_idx)

    # -- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        opt = torch.optim.AdamW(param_groups(self.model, lr=hp.lr, weight_decay=hp.weight_decay),
                                betas=tuple(hp.betas))
        total = int(self.trainer.estimated_stepping_batches)
        warmup = min(hp.warmup_steps, max(1, total // 2))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, total, warmup, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps refused so far for non-finite gradients."""
        return self.step_guard.skipped

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        # Lightning calls this after the backward pass and right before the optimizer step,
        # with the gradients unscaled: the one place to refuse a step. With every gradient
        # set to None, AdamW leaves each parameter and its state as they are.
        finite = bool(torch.isfinite(grad_norm(self.parameters())))
        if self.trainer.world_size > 1:  # gradients may be sharded: all ranks must agree
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        allowed = self.step_guard.allows(finite, self.global_step)
        self.log("train/skipped_steps", float(self.step_guard.skipped), on_step=True,
                 on_epoch=False)
        if not allowed:
            optimizer.zero_grad(set_to_none=True)
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    # -- exact resume -------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # dropout and any sampling draw from the global RNG: keep it so a resumed run
        # continues with the same random stream
        checkpoint["lrm_rng"] = torch.get_rng_state()
        checkpoint["lrm_step_guard"] = self.step_guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "lrm_rng" in checkpoint:
            torch.set_rng_state(checkpoint["lrm_rng"])
        if "lrm_step_guard" in checkpoint:
            self.step_guard.load_state_dict(checkpoint["lrm_step_guard"])
