"""A minimal training loop for CPU-sized experiments (claim checks, notebooks, tests).

The Lightning harness (``lra fit``) is the way to train for real; this loop exists so that a
claim check is twenty readable lines and runs in seconds. Same optimizer recipe as the harness:
AdamW over :func:`lrm.optim.param_groups`, linear warmup then cosine decay.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lra.allocator import keep_freed_memory
from lra.objective import IGNORE, cross_entropy, warmup_cosine
from lra.resumable import save_atomic
from lra.step_guard import StepGuard, grad_norm
from lrm.optim import param_groups

__all__ = ["IGNORE", "Losses", "accuracy", "accuracy_by_position", "fit", "warmup_cosine"]


class Losses(list):
    """The training loss of every step, in order; ``skipped_steps`` counts the steps whose
    optimizer update was refused for non-finite gradients (:mod:`lra.step_guard`);
    ``resumed_at`` is the step a checkpoint resumed the run from (0 for a fresh run) and
    ``elapsed_s`` the seconds of training, summed over the sittings of a resumed run."""

    skipped_steps: int = 0
    resumed_at: int = 0
    elapsed_s: float = 0.0


CHECKPOINT_EVERY = 250  # steps between checkpoints: a few seconds of a run's minutes


def _fit_settings(inputs: torch.Tensor, **kw: Any) -> dict[str, Any]:
    """What a checkpoint must agree on to continue a run: the data's shape and the loop's
    settings (the weights' shapes are checked by ``load_state_dict``)."""
    return {"n_examples": int(inputs.shape[0]), "seq_len": int(inputs.shape[1]), **kw}


def fit(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, steps: int,
        batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.1,
        warmup: int | None = None, seed: int = 0, log_every: int = 0,
        grad_clip: float = 1.0, checkpoint: str | Path | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
        on_progress: Callable[[int, float, float], None] | None = None,
        progress_every: int = 50) -> Losses:
    """Train an LM-head model on (inputs, targets) for ``steps`` steps; returns the losses.

    Batches are drawn by seeded shuffling, epoch after epoch. ``log_every`` > 0 prints the loss.
    A step whose gradients are not finite is skipped (the weights and AdamW's state stay as
    they were), logged, and counted in the result's ``skipped_steps``.

    ``checkpoint``: a file that makes the run resumable. Every ``checkpoint_every`` steps the
    loop writes there what it needs to go on (weights, AdamW's state, the shuffling generator
    and the batch order, torch's global random state, the losses so far); a call that finds
    the file continues from it, and the run ends exactly as it would have without the
    interruption (tested bit for bit on CPU). The file is removed when the run finishes. It is
    loaded with ``weights_only=True``; one written for other data or settings is an error.

    ``on_progress(step, loss, s_per_step)``: called every ``progress_every`` steps and after the
    last, with the number of steps done, the mean training loss of the last ``progress_every``
    steps and the seconds per step since the previous call (this sitting's, for a resumed run):
    how the recall arena and the claim checks show a run in flight.
    """
    if inputs.shape != targets.shape:
        raise ValueError(f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} differ")
    if checkpoint_every < 1 or progress_every < 1:
        raise ValueError(f"checkpoint_every and progress_every must be >= 1, got "
                         f"{checkpoint_every} and {progress_every}")
    keep_freed_memory()  # large freed tensors stay mapped (lra/allocator.py)
    warmup = max(1, steps // 10) if warmup is None else warmup
    opt = torch.optim.AdamW(param_groups(model, lr=lr, weight_decay=weight_decay),
                            betas=(0.9, 0.98))
    base = [grp["lr"] for grp in opt.param_groups]
    g = torch.Generator().manual_seed(seed)
    order, pos, losses = torch.randperm(len(inputs), generator=g), 0, Losses()
    guard = StepGuard(max_in_a_row=None)
    settings = _fit_settings(inputs, steps=steps, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, warmup=warmup, seed=seed,
                             grad_clip=grad_clip)
    first, elapsed = 0, 0.0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.is_file():
        try:
            # on the CPU first: a checkpoint written on a GPU also resumes on a CPU
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file
            raise ValueError(f"the checkpoint {ckpt} could not be read ({e}); delete it to "
                             f"start the run afresh") from e
        if state.get("settings") != settings:
            raise ValueError(f"the checkpoint {ckpt} belongs to another run (its settings "
                             f"{state.get('settings')} differ from this run's {settings}); "
                             f"delete it or pass another checkpoint path")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available() \
                and len(state["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        guard.load_state_dict(state["guard"])
        order, pos, first = state["order"], int(state["pos"]), int(state["step"])
        losses.extend(state["losses"].tolist())
        elapsed = float(state["elapsed_s"])
        losses.resumed_at = first
        if log_every:
            print(f"resuming from {ckpt} at step {first}", flush=True)
    model.train()
    t0 = time.time()
    reported = (first, t0)  # the step and time of the last progress report
    for step in range(first, steps):
        if ckpt is not None and step > first and step % checkpoint_every == 0:
            save_atomic({
                "settings": settings, "step": step, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "generator": g.get_state(),
                "torch_rng": torch.get_rng_state(), "guard": guard.state_dict(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "order": order, "pos": pos, "losses": torch.tensor(losses, dtype=torch.float64),
                "elapsed_s": elapsed + time.time() - t0}, ckpt)  # a kill mid-write keeps the last
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(inputs), generator=g), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        scale = warmup_cosine(step, steps, warmup)
        for grp, b in zip(opt.param_groups, base, strict=True):
            grp["lr"] = b * scale
        logits = model(inputs[idx])
        loss = cross_entropy(logits.flatten(0, 1), targets[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # clipping measures the norm anyway (before scaling); a NaN in it leaves the clipped
        # gradients NaN too, which is harmless: the step is refused and they are discarded
        norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip
                else grad_norm(model.parameters()))
        if guard.allows(bool(torch.isfinite(norm)), step):
            opt.step()
        losses.append(loss.item())
        if on_progress is not None and ((step + 1) % progress_every == 0 or step == steps - 1):
            recent, now = losses[-progress_every:], time.time()
            per = (now - reported[1]) / (step + 1 - reported[0])
            reported = (step + 1, now)
            on_progress(step + 1, sum(recent) / len(recent), per)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:6.1f}s", flush=True)
    losses.skipped_steps = guard.skipped
    losses.elapsed_s = elapsed + time.time() - t0
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
    if guard.summary():
        print(f"fit done: {guard.summary()}", flush=True)
    return losses


@torch.no_grad()
def _hit_counts(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                n_bins: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax hits and scored positions (targets != IGNORE) per slice of the sequence, (n_bins,)
    each: position p of L falls in slice ⌊p · n_bins / L⌋. One pass over the data, in batches."""
    L = targets.shape[-1]
    bin_of = torch.arange(L, device=targets.device) * n_bins // L  # (L,) slice of each position
    model.eval()
    correct = torch.zeros(n_bins, dtype=torch.long)
    total = torch.zeros(n_bins, dtype=torch.long)
    for i in range(0, len(inputs), batch_size):
        logits = model(inputs[i:i + batch_size])
        t = targets[i:i + batch_size]
        mask = t != IGNORE
        hit = (logits.argmax(-1) == t) & mask
        bins = bin_of.expand_as(t)
        correct += torch.bincount(bins[hit], minlength=n_bins).cpu()
        total += torch.bincount(bins[mask], minlength=n_bins).cpu()
    if int(total.sum()) == 0:
        raise ValueError("no scored positions (every target is -100)")
    return correct, total


def accuracy(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
             batch_size: int = 64) -> float:
    """Accuracy of argmax predictions on the positions where targets != IGNORE (-100)."""
    correct, total = _hit_counts(model, inputs, targets, n_bins=1, batch_size=batch_size)
    return int(correct[0]) / int(total[0])


def accuracy_by_position(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                         n_bins: int = 4, batch_size: int = 64) -> list[float | None]:
    """Accuracy of argmax predictions per slice of the sequence: the L positions are cut into
    ``n_bins`` equal slices (position p falls in slice ⌊p · n_bins / L⌋) and each slice's scored
    positions (targets != IGNORE) give one accuracy, None where a slice has none.

    Where a mixer sees the past through a window or a segment, this splits what it answers from
    inside the window from what it must carry across (a Titans MAC segment, sliding-window
    attention, a landmark block)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    correct, total = _hit_counts(model, inputs, targets, n_bins=n_bins, batch_size=batch_size)
    return [int(c) / int(n) if n else None for c, n in zip(correct, total, strict=True)]
