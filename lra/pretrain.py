"""Self-pretraining (SPT) on the task's own training inputs, then fine-tuning from it.

Amos, Berant & Gupta, "Never Train from Scratch: Fair Comparison of Long-Sequence Models
Requires Data-Driven Priors" (ICLR 2024): before the supervised run, train the same encoder
with a denoising objective on the downstream task's own inputs (no labels, no other data);
then fine-tune it on the labels.

    lra pretrain --config configs/lra/listops.yaml --config configs/pretrain/listops.yaml \\
        --config configs/model/s4d.yaml
    lra fit --config configs/lra/listops.yaml --config configs/model/s4d.yaml \\
        --model.init_from runs/pretrain/version_0/checkpoints/last.ckpt

Objectives (``objective="auto"`` picks by the model's direction):

- causal model (``bidirectional: false``): next-token prediction,
  loss = mean over t < n−1 of CE(W h_t, x_{t+1});
- bidirectional model: masked denoising. Each valid position is masked independently with
  probability p (``mask_prob``, 0.5 as in the paper's code), its input vector is replaced by a
  learned mask vector m, and the model predicts the original token at the masked positions only:
  loss = mean over {t : M_t = 1} of CE(W h_t, x_t).

Glossary: x (B, L) token ids (pixels: the intensity 0..255, which is also the target class);
n the valid length of a sequence; h_t the encoder's output (after the final norm) at t;
W the pretraining head, a linear map d -> vocab_size; M_t ~ Bernoulli(p) the mask; m ∈ R^d
the mask vector. The retrieval task pretrains on each document of a pair on its own.

What carries over to fine-tuning (``LRAModule(init_from=...)``, :mod:`lra.init_from`): every
encoder weight, i.e. the embedding (or the linear pixel encoder), all blocks and the final
norm. The pretraining head W and the mask vector m are thrown away; the task head starts fresh.

Against the paper's code (github IdoAmos/not-from-scratch): it masks a token by zeroing its
value and appending a 0/1 mask channel to the input (pixels), or by the id of a ``<mask>``
token (ListOps, text). Both amount to one learned input vector at every masked position,
which is what ``m`` is; keeping it outside the encoder leaves the encoder's shapes those of
the fine-tuned model. Masking is i.i.d. per token (their default; span masking is not
offered). Pixel targets are the 256 intensity classes (their ``lm_loss: ce``; their L1
regression on the value is not offered).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser
from torch import nn

from lra.lightning_cli import LRACLI, run
from lra.module import LRAModule
from lra.objective import IGNORE
from lrm import ModelConfig

OBJECTIVES = ("auto", "causal", "masked")


class PretrainHead(nn.Module):
    """The pretraining-only parameters: the token head W and the mask vector m."""

    def __init__(self, d: int, vocab_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, vocab_size)
        self.mask_vector = nn.Parameter(torch.randn(d) * 0.02)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)


class PretrainModule(LRAModule):
    """Pretrains the encoder of the task's LRModel on its inputs (see the module docstring).

    Args:
        model, hints, lr, weight_decay, betas, warmup_steps, min_lr_ratio, compile: as in
            :class:`LRAModule` (``min_lr_ratio: 1.0`` gives the paper's constant schedule after
            warmup); use the task and model configs of the fine-tuning run, so the encoders
            match.
        objective: ``auto`` (causal models: next token; bidirectional: masked), ``causal`` or
            ``masked``.
        mask_prob: the probability p that a position is masked (masked objective only).
    """

    def __init__(self, model: ModelConfig | None = None, hints: dict[str, Any] | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.98), warmup_steps: int = 1000,
                 min_lr_ratio: float = 0.0, objective: str = "auto",
                 mask_prob: float = 0.5, compile: bool = False) -> None:
        super().__init__(model, hints, lr=lr, weight_decay=weight_decay, betas=betas,
                         warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio, compile=compile)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if objective == "auto":
            objective = "masked" if self.cfg.bidirectional else "causal"
        if objective == "causal" and self.cfg.bidirectional:
            raise ValueError("a bidirectional model sees the next token, so it cannot be "
                             "pretrained by next-token prediction; use objective='masked' "
                             "(or bidirectional: false)")
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        self.objective, self.mask_prob = objective, mask_prob
        # the checkpoint's hyperparameters are this class's arguments (a resumed CLI run reads
        # them back): no init_from, which pretraining does not take
        self.hparams.pop("init_from", None)
        self.hparams.update(objective=objective, mask_prob=mask_prob)
        # the task head is never trained here: replace it by the pretraining head, which
        # init_from leaves behind
        self.model.replace_head(PretrainHead(self.cfg.d_model, self.cfg.vocab_size))
        self.n_out = self.cfg.vocab_size
        self._val_batches = 0

    # -- the objectives -----------------------------------------------------------------------

    def draw_mask(self, tokens: torch.Tensor, lengths: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Bernoulli(mask_prob) over valid positions, at least one per sequence, (B, L) bool."""
        B, L = tokens.shape
        valid = torch.arange(L, device=tokens.device)[None, :] < lengths[:, None]
        u = torch.rand(B, L, device=tokens.device, generator=generator)
        mask = (u < self.mask_prob) & valid
        # a sequence with nothing masked gives no signal: mask its position of smallest u
        first = torch.where(valid, u, 2.0).argmin(1)
        none = ~mask.any(1)
        mask[none, first[none]] = True
        return mask & valid

    @staticmethod
    def documents(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, lengths) of every document in the batch; labels are never read."""
        tokens, lengths = batch["inputs"], batch.get("lengths")
        if lengths is None:
            lengths = torch.full((tokens.shape[0],), tokens.shape[1], device=tokens.device)
        if "inputs2" in batch:  # retrieval: each document of a pair is a sequence of its own
            tokens = torch.cat([tokens, batch["inputs2"]])
            lengths = torch.cat([lengths, batch["lengths2"]])
        return tokens, lengths

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position logits (B', L, vocab) and targets (B', L) with IGNORE where unscored.
        Masks are drawn from ``generator`` (default: the global RNG)."""
        tokens, lengths = self.documents(batch)
        L = tokens.shape[1]
        valid = torch.arange(L, device=tokens.device)[None, :] < lengths[:, None]
        if self.objective == "causal":
            # target at t is x_{t+1}; the last valid position has none
            targets = torch.full_like(tokens, IGNORE)
            targets[:, :-1] = torch.where(valid[:, 1:], tokens[:, 1:], IGNORE)
            h = self.model.encode(tokens, lengths)
        else:
            mask = self.draw_mask(tokens, lengths, generator)
            targets = torch.where(mask, tokens, IGNORE)
            m = self.model.head.mask_vector
            # the mask vector enters right after the input encoder, inside LRModel.encode
            with self.model.input_transform(
                    lambda x: torch.where(mask[..., None], m.to(x.dtype), x)):
                h = self.model.encode(tokens, lengths)
        return self.model.head(h), targets

    def _step(self, batch: dict[str, torch.Tensor], split: str, idx: int = 0) -> torch.Tensor:
        # masks come from a generator seeded by the run's seed and the step (validation: the
        # batch), not from the global stream that data loaders also draw from: a resumed run
        # draws the masks an unbroken one would, and every validation sees the same masks
        if split == "train":
            key = self.global_step
        else:
            key = -1 - self._val_batches
            self._val_batches += 1
        generator = torch.Generator(device=batch["inputs"].device)
        generator.manual_seed((torch.initial_seed() * 1_000_003 + key) % 2**63)
        logits, targets = self(batch, generator)
        return self._score(logits.flatten(0, 1), targets.flatten(), split, idx,
                           len(batch["inputs"]), what="pretraining loss")

    def on_validation_epoch_start(self) -> None:
        self._val_batches = 0

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int,
                  dataloader_idx: int = 0) -> None:
        raise RuntimeError("self-pretraining never reads the test split; evaluate the "
                           "fine-tuned model with `lra test` instead")


# ------------------------------------------------------------------------------------ the CLI
class PretrainCLI(LRACLI):
    """``lra fit``'s CLI with the runs filed under ``runs/pretrain/version_N``; no test after
    the fit (pretraining never reads the test split) and no early stop at a target accuracy."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.set_defaults({
            "test_after_fit": False,
            "early_stopping.stopping_threshold": None,"trainer.logger": [
            {"class_path": "lra.csv_logger.CSVLogger",
             "init_args": {"save_dir": "runs", "name": "pretrain"}},
            {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
             "init_args": {"save_dir": "runs", "name": "pretrain"}},
        ]})


def main(argv: list[str] | None = None) -> None:
    """``lra pretrain [--config ...]``: the arguments of ``lra fit`` (resume with
    ``--ckpt_path``), with :class:`PretrainModule` as the model."""
    argv = list(sys.argv[2:] if argv is None else argv)
    if argv and argv[0] == "fit":
        argv = argv[1:]
    run(["fit", *argv], cli_class=PretrainCLI, module_class=PretrainModule)
