"""Non-finite steps (lra/step_guard.py): a step whose gradients hold a NaN is refused by every
training loop (the Lightning module behind `lra fit` and `lra pretrain`, and lra.quick.fit):
the weights and the optimizer state stay as they were, the step is counted, training goes on."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from lra import quick
from lra.lightning_cli import run_summary
from lra.module import LRAModule
from lra.step_guard import StepGuard, grad_norm, stopped_at
from lrm import LRModel, ModelConfig

POISONED_STEP = 2
CFG = {"mixer": "attention", "d_model": 16, "n_layers": 1, "vocab_size": 8, "head": "lm"}


def nan_gradients(model: torch.nn.Module) -> torch.Tensor:
    """A term that is 0 in the forward pass and NaN in every weight's gradient: d√u/du is
    infinite at u = 0, times du/dp = 0."""
    return torch.sqrt(sum(p.sum() for p in model.parameters()) * 0.0)


def lm_data(n: int = 64, L: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 8, (n, L), generator=g)
    return x, x.roll(-1, dims=1)


def test_guard_counts_and_stops_after_too_many_in_a_row():
    guard = StepGuard(max_in_a_row=3)
    assert guard.allows(True, 0) and guard.summary() is None
    assert not guard.allows(False, 1) and not guard.allows(False, 2)
    assert guard.allows(True, 3)  # a finite step resets the run of refusals
    assert guard.summary() == "2 steps skipped: non-finite gradients"
    assert not guard.allows(False, 4) and not guard.allows(False, 5)
    with pytest.raises(FloatingPointError, match="3 steps in a row"):
        guard.allows(False, 6)
    unbounded = StepGuard(max_in_a_row=None)
    assert not any(unbounded.allows(False, i) for i in range(100))


def test_the_stop_message_gives_back_the_first_step_of_the_streak():
    # the store reads a stopped run's divergence from its error text (a worker's log tail)
    guard = StepGuard(max_in_a_row=3)
    guard.allows(False, 4), guard.allows(False, 5)
    with pytest.raises(FloatingPointError) as err:
        guard.allows(False, 6)
    assert stopped_at(f"worker exited 1: FloatingPointError: {err.value}") == 4
    assert stopped_at("worker exited 1: RuntimeError: out of memory") is None
    assert stopped_at(None) is None


def test_grad_norm_is_not_finite_when_one_gradient_is_nan():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    a.grad, b.grad = torch.tensor([3.0, 0.0, 4.0]), torch.zeros(2)
    assert grad_norm([a, b]).item() == pytest.approx(5.0)
    b.grad[1] = float("nan")
    assert not torch.isfinite(grad_norm([a, b]))


# ---------------------------------------------------------------------------- Lightning module
class Poisoned(LRAModule):
    """LRAModule whose loss is finite at every step but has NaN gradients at one step; it
    records the weights and AdamW state around that step."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.global_step == POISONED_STEP:
            self.before = (copy.deepcopy(self.model.state_dict()),
                           copy.deepcopy(self.optimizers().optimizer.state_dict()))
            loss = loss + nan_gradients(self.model)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.global_step == POISONED_STEP + 1 and not hasattr(self, "after"):
            self.after = (copy.deepcopy(self.model.state_dict()),
                          copy.deepcopy(self.optimizers().optimizer.state_dict()))


def _batches():
    x, y = lm_data()
    return DataLoader([{"inputs": a, "targets": b} for a, b in zip(x, y, strict=True)],
                      batch_size=8)


def _trainer(steps: int) -> pl.Trainer:
    return pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      gradient_clip_val=1.0, accelerator="cpu", devices=1)


def test_lightning_module_skips_a_step_with_nan_gradients(one_thread, caplog):
    module = Poisoned(ModelConfig(**CFG), warmup_steps=1)
    with caplog.at_level("WARNING", logger="lra.step_guard"):
        _trainer(6).fit(module, train_dataloaders=_batches())
    assert module.global_step == 6  # training went on after the refused step
    assert module.skipped_steps == 1
    assert f"step {POISONED_STEP}: gradients are not finite" in caplog.text
    (w0, opt0), (w1, opt1) = module.before, module.after
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    assert opt0["state"].keys() == opt1["state"].keys()
    for i, s in opt0["state"].items():
        for k, v in s.items():
            assert torch.equal(v, opt1["state"][i][k]), (i, k)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    # and a step that is not refused does change the weights
    assert not all(torch.equal(w1[k], v) for k, v in module.model.state_dict().items())


def test_the_end_of_fit_summary_reports_the_skipped_steps(one_thread):
    module = Poisoned(ModelConfig(**CFG), warmup_steps=1)
    trainer = _trainer(4)
    trainer.fit(module, train_dataloaders=_batches())
    text = run_summary(trainer, None, None, None, None, None, None, 1.0,
                       skipped=module.step_guard.summary())
    assert "1 step skipped: non-finite gradients" in text


def test_the_skip_count_survives_a_checkpoint():
    module = LRAModule(ModelConfig(**CFG))
    module.step_guard.allows(False, 0)
    ckpt = {}
    module.on_save_checkpoint(ckpt)
    fresh = LRAModule(ModelConfig(**CFG))
    fresh.on_load_checkpoint(ckpt)
    assert fresh.skipped_steps == 1


# ---------------------------------------------------------------------------- lra.quick
class PoisonedModel(LRModel):
    calls = 0

    def forward(self, tokens, lengths=None, **kw):
        out = super().forward(tokens, lengths, **kw)
        PoisonedModel.calls += 1
        if PoisonedModel.calls == POISONED_STEP + 1:  # the forward of step POISONED_STEP
            out = out + nan_gradients(self)
        return out


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_quick_fit_skips_a_step_with_nan_gradients(one_thread, grad_clip, caplog):
    x, y = lm_data()
    PoisonedModel.calls = 0
    model = PoisonedModel(ModelConfig(**CFG))
    reference = LRModel(ModelConfig(**CFG))
    reference.load_state_dict(model.state_dict())
    # the reference trains the steps before the poisoned one; the poisoned run must hold
    # the same weights after the refused step
    quick.fit(reference, x, y, steps=POISONED_STEP, batch_size=8, grad_clip=grad_clip)
    snapshot = {}

    class Spy(torch.optim.AdamW):
        def step(self, closure=None):
            snapshot[len(snapshot)] = copy.deepcopy(model.state_dict())
            return super().step(closure)

    with pytest.MonkeyPatch.context() as mp, caplog.at_level("WARNING", logger="lra.step_guard"):
        mp.setattr(torch.optim, "AdamW", Spy)
        losses = quick.fit(model, x, y, steps=POISONED_STEP + 3, batch_size=8,
                           grad_clip=grad_clip)
    assert losses.skipped_steps == 1 and len(losses) == POISONED_STEP + 3
    assert all(torch.isfinite(torch.tensor(losses)))
    assert len(snapshot) == POISONED_STEP + 2  # the optimizer stepped at every other step
    # the weights going into step POISONED_STEP + 1 are those after step POISONED_STEP - 1
    for k, v in snapshot[POISONED_STEP].items():
        assert torch.equal(v, reference.state_dict()[k]), k
    assert "gradients are not finite" in caplog.text
    assert all(torch.isfinite(p).all() for p in model.parameters())
