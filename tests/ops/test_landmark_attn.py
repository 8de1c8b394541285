"""Landmark attention (lrm.ops.landmark_attn): the grouped softmax and retrieval against their
loops and the quadratic form, gradcheck, memory, dispatch and errors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import LargestTensor

from lrm.nn import rope
from lrm.ops.landmark_attn import (
    landmark_attn,
    landmark_attn_quadratic_ref,
    landmark_attn_recurrent_ref,
    landmark_attn_ref,
    landmark_retrieval_attn_ref,
    landmark_retrieval_recurrent_ref,
)

F64 = dict(atol=1e-10, rtol=1e-10)


def make(B=2, Tk=37, H=2, D=8, Dv=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, Tk, H, D, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, Tk, H, Dv or D, generator=g, dtype=dtype)
    return q, k, v


def outputs_and_grads(fn, q, k, v, Tq=None, **kw):
    Tq = q.shape[1] if Tq is None else Tq
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    q_, k_, v_ = leaves
    o = fn(q_[:, q_.shape[1] - Tq:], k_, v_, **kw)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(123), dtype=o.dtype)
    return o, torch.autograd.grad((o * do).sum(), leaves)


def rotated(q, k):
    """q, k (B, T, H, D) rotated at their absolute positions 0..T-1 (training mode's RoPE)."""
    pos = torch.arange(k.shape[1])
    return (rope(t.transpose(1, 2), pos).transpose(1, 2) for t in (q, k))


# ----------------------------------------------------------------------------- grouped softmax


@pytest.mark.parametrize(("Tk", "Tq", "block_len", "block_q"), [
    (37, 37, 4, 10),   # 7 blocks and 2 tokens; T not a multiple of block_len + 1
    (37, 37, 4, 128),  # one chunk
    (41, 41, 1, 6),    # every other token a landmark
    (37, 15, 4, 10),   # a cache of 22 keys (ending mid-block), then 15 queries
    (29, 1, 3, 8),     # decoding one token
])
def test_blockwise_equals_loop_and_quadratic_outputs_and_gradients(Tk, Tq, block_len, block_q):
    q, k, v = make(Tk=Tk, Dv=6)
    o_loop, g_loop = outputs_and_grads(landmark_attn_recurrent_ref, q, k, v, Tq,
                                       block_len=block_len)
    o_quad, g_quad = outputs_and_grads(landmark_attn_quadratic_ref, q, k, v, Tq,
                                       block_len=block_len)
    o, g = outputs_and_grads(landmark_attn_ref, q, k, v, Tq, block_len=block_len,
                             block_q=block_q)
    torch.testing.assert_close(o_quad, o_loop, **F64)
    torch.testing.assert_close(o, o_loop, **F64)
    for name, a, b, c in zip("qkv", g, g_loop, g_quad, strict=True):
        torch.testing.assert_close(a, b, **F64, msg=lambda s, n=name: f"d{n}: {s}")
        torch.testing.assert_close(c, b, **F64, msg=lambda s, n=name: f"d{n} (quad): {s}")


def test_fp32_agrees_and_keeps_the_input_dtype():
    q, k, v = make(Tk=37, dtype=torch.float32)
    o = landmark_attn_ref(q, k, v, block_len=4, block_q=10)
    assert o.dtype == torch.float32
    torch.testing.assert_close(o, landmark_attn_recurrent_ref(q, k, v, block_len=4), atol=1e-5,
                               rtol=1e-5)
    ob = landmark_attn_ref(*(t.bfloat16() for t in (q, k, v)), block_len=4)
    assert ob.dtype == torch.bfloat16


@pytest.mark.parametrize(("T", "block_len"), [(8, 8), (5, 8), (1, 3)])
def test_no_landmark_is_causal_softmax_attention(T, block_len):
    q, k, v = make(Tk=T)
    sdpa = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)),
                                          is_causal=True).transpose(1, 2)
    torch.testing.assert_close(landmark_attn_ref(q, k, v, block_len=block_len), sdpa, **F64)
    torch.testing.assert_close(landmark_attn_quadratic_ref(q, k, v, block_len=block_len), sdpa,
                               **F64)


def test_landmarks_carry_no_value_and_route_through_their_key():
    q, k, v = make(Tk=23)
    bl = 4  # landmarks at 4, 9, 14, 19
    o = landmark_attn_ref(q, k, v, block_len=bl)
    v2 = v.clone()
    v2[:, bl::bl + 1] += 100.0
    torch.testing.assert_close(landmark_attn_ref(q, k, v2, block_len=bl), o, **F64)
    k2 = k.clone()
    k2[:, bl] += 1.0  # the first landmark's key moves the weight of block 0 for later queries
    o2 = landmark_attn_ref(q, k2, v, block_len=bl)
    torch.testing.assert_close(o2[:, :bl + 1], o[:, :bl + 1], **F64)  # not for its own block
    assert (o2[:, bl + 1:] - o[:, bl + 1:]).abs().amin(dim=(0, 2, 3)).gt(1e-6).all()


def test_a_block_is_weighted_by_its_landmark_probability():
    """Hand-built case: one head, one earlier block; its weight is π(ℓ_0) and inside it the
    tokens get a softmax of their own."""
    bl, D = 2, 2
    q = torch.zeros(1, 5, 1, D, dtype=torch.float64)
    k = torch.zeros_like(q)
    v = torch.zeros_like(q)
    q[0, 4, 0] = torch.tensor([1.0, 0.0])
    k[0, :, 0] = torch.tensor([[1.0, 0], [0, 0], [2.0, 0], [0.5, 0], [0, 0]])
    v[0, :, 0] = torch.tensor([[1.0, 0], [0, 1.0], [7.0, 7], [0, 0], [3.0, -3]])
    s = lambda j: k[0, j, 0, 0].item() / math.sqrt(D)  # noqa: E731  q_4·k_j·scale
    # query 4 is in block 1 (positions 3, 4, landmark 5): G = {3, 4, ℓ_0 = 2}
    z = math.exp(s(3)) + math.exp(s(4)) + math.exp(s(2))
    inner = torch.softmax(torch.tensor([s(0), s(1)], dtype=torch.float64), 0)
    want = (math.exp(s(2)) / z) * (inner[0] * v[0, 0, 0] + inner[1] * v[0, 1, 0]) + (
        math.exp(s(4)) / z) * v[0, 4, 0]  # v_3 = 0
    torch.testing.assert_close(landmark_attn_ref(q, k, v, block_len=bl)[0, 4, 0], want, **F64)


def test_gradcheck():
    q, k, v = (t[:1, :11, :1, :4].clone().requires_grad_(True) for t in make())
    assert torch.autograd.gradcheck(
        lambda a, b, c: landmark_attn_ref(a, b, c, block_len=2, block_q=3), (q, k, v))
    assert torch.autograd.gradcheck(
        lambda a, b, c: landmark_retrieval_attn_ref(a, b, c, block_len=2, topk=1, block_q=3),
        (q, k, v))


def test_blockwise_ref_never_materialises_T_by_T():
    T, bl = 1024, 15
    q, k, v = (t.float().requires_grad_(True) for t in make(B=1, Tk=T, H=1, D=16))
    with LargestTensor() as mode:
        o = landmark_attn_ref(q, k, v, block_len=bl, block_q=64)
        o.square().sum().backward()
    # a chunk of 64 rows holds 64 x T scores (padded to whole blocks); T x T is 1,048,576
    assert mode.largest <= 64 * (T + bl + 1), mode.largest
    with LargestTensor() as mode:
        landmark_attn_quadratic_ref(q, k, v, block_len=bl)
    assert mode.largest >= T * T  # the check above can see a (T, T) tensor


def test_dispatch_and_errors():
    q, k, v = make(Tk=9)
    torch.testing.assert_close(landmark_attn(q, k, v, block_len=3),
                               landmark_attn_ref(q, k, v, block_len=3))
    with pytest.raises(RuntimeError, match="no kernel package"):
        landmark_attn(q, k, v, block_len=3, backend="kernel")
    with pytest.raises(ValueError, match="block_len"):
        landmark_attn_ref(q, k, v, block_len=0)
    with pytest.raises(ValueError, match="Tq <= Tk"):
        landmark_attn_ref(k, q[:, :3], v[:, :3], block_len=3)
    with pytest.raises(ValueError, match="topk"):
        landmark_retrieval_attn_ref(q, k, v, block_len=3, topk=0)


def test_rope_positions_broadcast():
    """Retrieval rotates with grids of positions: a grid equals the positions row by row."""
    x = torch.randn(2, 3, 11, 8)
    pos = torch.arange(5, 16)
    rows = torch.stack([rope(x[:, :, t], pos[t]) for t in range(11)], dim=2)
    torch.testing.assert_close(rope(x, pos), rows, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rope(x, pos.expand(2, 3, 11)), rope(x, pos), atol=0, rtol=0)


# ----------------------------------------------------------------------------- retrieval


@pytest.mark.parametrize(("Tk", "Tq", "block_len", "topk", "block_q"), [
    (37, 37, 3, 2, 8),   # 9 blocks, keep 2
    (37, 37, 4, 1, 5),   # keep 1
    (41, 41, 2, 3, 128),
    (45, 7, 3, 2, 8),    # with a cache
    (45, 1, 3, 3, 8),    # decoding
])
def test_retrieval_equals_its_loop(Tk, Tq, block_len, topk, block_q):
    q, k, v = make(Tk=Tk, Dv=6)
    o_loop = landmark_retrieval_recurrent_ref(q[:, Tk - Tq:], k, v, block_len=block_len,
                                              topk=topk)
    o, blocks = landmark_retrieval_attn_ref(q[:, Tk - Tq:], k, v, block_len=block_len,
                                            topk=topk, block_q=block_q, return_blocks=True)
    torch.testing.assert_close(o, o_loop, **F64)
    P = block_len + 1
    c = (torch.arange(Tk - Tq, Tk) // P).view(1, Tq, 1, 1)
    used = blocks >= 0
    assert (used.sum(-1) == c.clamp(max=topk).squeeze(-1)).all()  # k' = min(k, n) blocks
    assert (blocks[used.expand_as(blocks)] < c.expand_as(blocks)[used]).all()  # earlier only
    diffs = blocks.diff(dim=-1)
    assert (diffs[used[..., 1:]] > 0).all()  # in original order


def test_retrieval_with_every_block_equals_the_grouped_softmax():
    """k >= the number of earlier blocks: every block is retrieved at its true relative position,
    so retrieval is the grouped softmax (up to rounding of the rotations)."""
    q, k, v = make(Tk=37, Dv=6)
    bl = 3  # the last query has 9 earlier blocks
    o_ret, g_ret = outputs_and_grads(landmark_retrieval_attn_ref, q, k, v, block_len=bl, topk=9)

    def grouped(q, k, v):
        return landmark_attn_ref(*rotated(q, k), v, block_len=bl)

    o_grp, g_grp = outputs_and_grads(grouped, q, k, v)
    torch.testing.assert_close(o_ret, o_grp, **F64)
    for a, b in zip(g_ret, g_grp, strict=True):
        torch.testing.assert_close(a, b, **F64)
    # fewer blocks: the queries with more than k earlier blocks differ, the others do not
    o_k2 = landmark_retrieval_attn_ref(q, k, v, block_len=bl, topk=2)
    n_before = torch.arange(37) // (bl + 1)
    torch.testing.assert_close(o_k2[:, n_before <= 2], o_grp[:, n_before <= 2], **F64)
    assert ((o_k2 - o_grp).abs().amax(dim=(0, 2, 3))[n_before > 2] > 1e-6).all()


def test_retrieval_keeps_rope_distances_bounded():
    """Positions depend only on block distances, clamped at k' + 1: a query with 1000 identical
    old blocks behind it sees what it sees with one of them, however far they are."""
    bl, P = 3, 4
    q, k, v = make(B=1, Tk=P * 1002 + 2, H=2, D=8)
    for t in (k, v):  # blocks 0..999 are copies of block 0; blocks 1000, 1001 and the tail differ
        t[:, :1000 * P] = t[:, :P].repeat(1, 1000, 1, 1)
    keep = torch.cat([torch.arange(P), torch.arange(1000 * P, k.shape[1])])
    for topk in (1, 2):
        o_far = landmark_retrieval_attn_ref(q[:, -1:], k, v, block_len=bl, topk=topk)
        o_near = landmark_retrieval_attn_ref(q[:, -1:], k[:, keep], v[:, keep], block_len=bl,
                                             topk=topk)
        if topk == 1:  # one old copy or one of the two recent blocks, either way the same keys
            torch.testing.assert_close(o_far, o_near, **F64)
    # with RoPE at true positions (training mode) the distance would matter
    g_far = landmark_attn_ref(*rotated(q, k), v, block_len=bl)[:, -1:]
    g_near = landmark_attn_ref(*rotated(q[:, keep], k[:, keep]), v[:, keep], block_len=bl)
    assert (g_far - g_near[:, -1:]).abs().max() > 1e-6


def test_retrieval_ties_go_to_the_most_recent_block():
    bl = 2
    q, k, v = make(B=1, Tk=16, H=1)
    k[:, bl::bl + 1] = k[:, bl:bl + 1]  # every landmark has the same key, as in layer one
    _, blk = landmark_retrieval_attn_ref(q[:, -1:], k, v, block_len=bl, topk=1,
                                         return_blocks=True)
    # all older landmarks tie at the farthest slot; the nearest one (block 4) is scored at its
    # own distance, so the choice is block 4 or the most recent of the tied ones (block 3)
    assert blk.item() in (3, 4)
    _, blk_tok = landmark_retrieval_attn_ref(q[:, -1:], k, v, block_len=bl, topk=1,
                                             block_q=1, return_blocks=True)
    assert torch.equal(blk, blk_tok)
    # keys computed in different chunks of a stream differ in their last bits: a near-tie
    # (within TIE_TOL) must go the same way as the exact one
    for seed in range(5):
        noisy = k.clone()
        g = torch.Generator().manual_seed(seed)
        noisy[:, bl::bl + 1] += 1e-6 * torch.randn(noisy[:, bl::bl + 1].shape, generator=g)
        _, blk_noisy = landmark_retrieval_attn_ref(q[:, -1:], noisy, v, block_len=bl, topk=1,
                                                   return_blocks=True)
        assert torch.equal(blk_noisy, blk)
