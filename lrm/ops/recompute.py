"""Block recomputation: run a chunked scan block by block, and keep only what the kernels keep.

A chunked linear recurrence (SSD, the chunked delta rule, ...) maps a sequence and an entering
state h_0 to outputs and a final state, and splits exactly along time:

    (y_{[s, e)}, h_e) = step(inputs_{[s, e)}, h_s)

Left to autograd, a whole-sequence call keeps every intermediate of every chunk for the backward
pass: decay masks, scores, WY factors, chunk states, O(L·Q) and more per head. This function
keeps, like the CUDA kernels do, only

- the inputs (O(B·L·D)), and
- the state entering each block of ``block`` tokens, (L/block, *state shape),

and in the backward pass walks the blocks from last to first: it recomputes one block's forward
with autograd on, from its stored entering state, and back-propagates the block's output
gradient together with the gradient reaching its final state (from the blocks after it). The
gradient with respect to the entering state is what flows into the previous block. So at most
one block's intermediates are alive at a time; the cost is one more forward pass per block.

Symbols: L length, block the tokens per block (a multiple of the op's chunk size, so the blocks
cut the sequence where the op's own chunks end), h the recurrent state.

``step`` is the op's reference itself (e.g. :func:`lrm.ops.ssd.ssd_ref` with
``initial_state`` and ``return_final_state``), so the lean path computes the same arithmetic
as the oracle, chunk for chunk; tests check outputs and gradients against the oracles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class _BlockRecompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, step, block: int, dims: tuple[int, ...], out_dim: int, h0, *tensors):
        n_seq = len(dims)
        seqs, shared = tensors[:n_seq], tensors[n_seq:]
        L = seqs[0].shape[dims[0]]
        ys, entering = [], []
        h = h0
        for s in range(0, L, block):
            n = min(block, L - s)
            entering.append(h)
            y, h = step(*(t.narrow(d, s, n) for t, d in zip(seqs, dims, strict=True)), *shared, h)
            ys.append(y)
        ctx.step, ctx.block, ctx.dims, ctx.out_dim = step, block, dims, out_dim
        ctx.save_for_backward(*tensors, torch.stack(entering))
        return torch.cat(ys, dim=out_dim), h

    @staticmethod
    def backward(ctx, dy, dh):
        *tensors, entering = ctx.saved_tensors
        dims, block, out_dim = ctx.dims, ctx.block, ctx.out_dim
        n_seq = len(dims)
        seqs, shared = tensors[:n_seq], tensors[n_seq:]
        need = ctx.needs_input_grad[5:]  # after (step, block, dims, out_dim, h0)
        L = seqs[0].shape[dims[0]]
        shared_in = [t.detach().requires_grad_(r) for t, r in zip(shared, need[n_seq:],
                                                                  strict=True)]
        d_shared = [None] * len(shared)
        d_seq: list[list[torch.Tensor | None]] = [[] for _ in seqs]
        starts = list(range(0, L, block))
        for c in reversed(range(len(starts))):
            s = starts[c]
            n = min(block, L - s)
            with torch.enable_grad():
                seq_in = [t.narrow(d, s, n).detach().requires_grad_(r)
                          for t, d, r in zip(seqs, dims, need[:n_seq], strict=True)]
                h_in = entering[c].detach().requires_grad_(True)
                y, h = ctx.step(*seq_in, *shared_in, h_in)
            wrt = [t for t in (*seq_in, *shared_in, h_in) if t.requires_grad]
            outs, gouts = [h], [dh]
            if y.requires_grad:
                outs.append(y)
                gouts.append(dy.narrow(out_dim, s, n))
            grads = iter(torch.autograd.grad(outs, wrt, gouts, allow_unused=True))
            for i, t in enumerate(seq_in):
                g = next(grads) if t.requires_grad else None
                d_seq[i].append(torch.zeros_like(t) if g is None and t.requires_grad else g)
            for i, t in enumerate(shared_in):
                if t.requires_grad:
                    g = next(grads)
                    if g is not None:
                        d_shared[i] = g if d_shared[i] is None else d_shared[i] + g
            dh = next(grads)
            if dh is None:  # the block does not read its entering state (it cannot, but be safe)
                dh = torch.zeros_like(h_in)
        d_seq_full = [None if not r else torch.cat(g[::-1], dim=d)
                      for g, d, r in zip(d_seq, dims, need[:n_seq], strict=True)]
        return None, None, None, None, dh, *d_seq_full, *d_shared


def block_recompute(step: Callable[..., tuple[torch.Tensor, torch.Tensor]],
                    seqs: Sequence[torch.Tensor], dims: Sequence[int],
                    shared: Sequence[torch.Tensor], h0: torch.Tensor, *, block: int,
                    out_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``step(*seq_blocks, *shared, h) -> (y_block, h_next)`` over blocks of ``block``
    tokens, storing only inputs and entering states for the backward pass.

    seqs: tensors cut along time, ``dims[i]`` being the time axis of ``seqs[i]``; shared:
    tensors every block reads whole (parameters); h0: the entering state; out_dim: the time
    axis of ``y``. Returns the concatenated ``y`` and the final state.
    """
    if block < 1:
        raise ValueError(f"block must be a positive number of tokens, got {block}")
    if len(seqs) != len(dims) or not seqs:
        raise ValueError("give one time axis per sequence tensor, and at least one")
    return _BlockRecompute.apply(step, int(block), tuple(dims), out_dim, h0, *seqs, *shared)
