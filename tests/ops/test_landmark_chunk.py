"""Chunked landmark retrieval (upstream's long-input evaluation): against a direct construction
written out here in float64, against the per-query retrieval at chunk = one block, against the
grouped softmax when there is no cache, its tie rule, and the mixer option."""

from __future__ import annotations

import pytest
import torch

from lrm.mixers.landmark import LandmarkAttention
from lrm.nn import rope
from lrm.ops.landmark_attn import TIE_TOL, landmark_attn_ref, landmark_retrieval_attn_ref

F64 = dict(atol=1e-10, rtol=1e-10)


def make(B=2, Tk=37, H=2, D=8, Dv=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, Tk, H, D, generator=g, dtype=torch.float64) for _ in range(2))
    return q, k, torch.randn(B, Tk, H, Dv, generator=g, dtype=torch.float64)


def direct(q, k, v, *, block_len, topk, chunk):
    """One query, head and sequence at a time, every key at an explicit virtual position:
    the cache before the query's chunk read by top-k retrieval, the chunk by the grouped
    softmax, one outer softmax over both. Returns o and the retrieved blocks."""
    B, Tq, H, D = q.shape
    Tk, P, m = k.shape[1], block_len + 1, chunk // block_len
    scale = D ** -0.5
    out = torch.zeros(B, Tq, H, v.shape[-1], dtype=q.dtype)
    chosen_all = {}

    def rot(x, p):
        return rope(x, torch.tensor(p), 10000.0)

    for i in range(Tq):
        p = Tk - Tq + i
        c, c0 = p // P, (p // (m * P)) * m
        kp = min(topk, c0)
        shift = (kp + 1) * P - c0 * P
        for b in range(B):
            for h in range(H):
                qv = rot(q[b, i, h][None], [p + shift])[0]
                chosen = []
                if kp:
                    slots = [max(0, kp + 1 - (c0 - j)) for j in range(c0)]
                    lms = rot(k[b, [j * P + P - 1 for j in range(c0)], h],
                              [s * P + P - 1 for s in slots])
                    score = (lms @ qv).tolist()
                    top = max(abs(s) for s in score)
                    score = [s + TIE_TOL * top * (j + 1) / c0 for j, s in enumerate(score)]
                    chosen = sorted(sorted(range(c0), key=lambda j: (-score[j], -j))[:kp])
                chosen_all[b, i, h] = chosen
                # groups: (logit, value of the group)
                logits, values = [], []
                blocks = [(j, r + int(j >= c0 - kp)) for r, j in enumerate(chosen)]
                blocks += [(j, None) for j in range(c0, c)]  # earlier blocks of the chunk
                for j, slot in blocks:
                    toks = list(range(j * P, j * P + P))
                    where = ([slot * P + t % P for t in toks] if slot is not None
                             else [t + shift for t in toks])
                    kt = rot(k[b, toks, h], where)
                    s = scale * kt @ qv
                    logits.append(s[-1])  # the landmark
                    values.append(torch.softmax(s[:-1], 0) @ v[b, toks[:-1], h])
                for j in range(c * P, p + 1):
                    if (j + 1) % P:
                        logits.append(scale * rot(k[b, j, h][None], [j + shift])[0] @ qv)
                        values.append(v[b, j, h])
                pi = torch.softmax(torch.stack(logits), 0)
                out[b, i, h] = sum(w * val for w, val in zip(pi, values, strict=True))
    return out, chosen_all


@pytest.mark.parametrize(("Tk", "Tq", "block_len", "topk", "chunk"), [
    (37, 37, 3, 2, 6),    # 9 blocks in chunks of 2, keep 2; the last chunk partial
    (37, 37, 3, 1, 9),    # chunks of 3 blocks, keep 1
    (46, 46, 4, 3, 8),    # more cache blocks than topk in the last chunks
    (45, 7, 3, 2, 6),     # a cache of 38 keys, then 7 queries (starting mid-chunk)
    (45, 1, 3, 2, 9),     # decoding
])
def test_chunked_retrieval_equals_the_direct_construction(Tk, Tq, block_len, topk, chunk):
    q, k, v = make(Tk=Tk)
    ref, chosen = direct(q[:, Tk - Tq:], k, v, block_len=block_len, topk=topk, chunk=chunk)
    o, blocks = landmark_retrieval_attn_ref(q[:, Tk - Tq:], k, v, block_len=block_len,
                                            topk=topk, chunk=chunk, return_blocks=True)
    torch.testing.assert_close(o, ref, **F64)
    for (b, i, h), want in chosen.items():
        got = [int(x) for x in blocks[b, i, h] if x >= 0]
        assert got == want, (b, i, h)


def test_chunked_retrieval_gradients_equal_the_direct_construction():
    q, k, v = make(B=1, Tk=26, H=1)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    g_op = torch.autograd.grad(landmark_retrieval_attn_ref(
        *leaves, block_len=3, topk=1, chunk=6).sum(), leaves)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    g_ref = torch.autograd.grad(direct(*leaves, block_len=3, topk=1, chunk=6)[0].sum(), leaves)
    for a, b in zip(g_op, g_ref, strict=True):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize(("Tk", "Tq"), [(37, 37), (45, 7), (45, 1)])
def test_chunk_of_one_block_is_per_query_retrieval(Tk, Tq):
    q, k, v = make(Tk=Tk)
    o1, b1 = landmark_retrieval_attn_ref(q[:, Tk - Tq:], k, v, block_len=3, topk=2,
                                         return_blocks=True)
    o2, b2 = landmark_retrieval_attn_ref(q[:, Tk - Tq:], k, v, block_len=3, topk=2, chunk=3,
                                         return_blocks=True)
    torch.testing.assert_close(o2, o1, **F64)
    assert torch.equal(b1, b2)


def test_without_a_cache_chunked_retrieval_is_the_grouped_softmax():
    """One chunk covers every key: nothing to retrieve, the grouped softmax at true relative
    positions (RoPE rotated at the absolute positions)."""
    q, k, v = make(Tk=37)
    pos = torch.arange(37)
    qr, kr = (rope(t.transpose(1, 2), pos).transpose(1, 2) for t in (q, k))
    want = landmark_attn_ref(qr, kr, v, block_len=3)
    got = landmark_retrieval_attn_ref(q, k, v, block_len=3, topk=2, chunk=30)  # 10 blocks
    torch.testing.assert_close(got, want, **F64)


def test_chunked_retrieval_ties_go_to_the_most_recent_block():
    """Every landmark the same key, as in layer one: the cache's older landmarks tie at the
    farthest slot, so the query (block 9, chunk from block 8, k = 2) retrieves among blocks 6
    and 7 (scored at their own distance) and 5 (the most recent of the tied); a near-tie
    (keys off in their last bits) goes the same way."""
    bl, P = 3, 4
    q, k, v = make(B=1, Tk=40, H=1)
    k[:, P - 1::P] = k[:, P - 1:P]
    _, blk = landmark_retrieval_attn_ref(q[:, -1:], k, v, block_len=bl, topk=2, chunk=6,
                                         return_blocks=True)
    assert set(blk[0, 0, 0].tolist()) <= {5, 6, 7}
    for seed in range(5):
        noisy = k.clone()
        g = torch.Generator().manual_seed(seed)
        noisy[:, P - 1::P] += 1e-6 * torch.randn(noisy[:, P - 1::P].shape, generator=g,
                                                 dtype=k.dtype)
        _, blk_noisy = landmark_retrieval_attn_ref(q[:, -1:], noisy, v, block_len=bl, topk=2,
                                                   chunk=6, return_blocks=True)
        assert torch.equal(blk_noisy, blk)


def test_chunk_must_be_whole_blocks():
    q, k, v = make(Tk=9)
    with pytest.raises(ValueError, match="multiple of block_len"):
        landmark_retrieval_attn_ref(q, k, v, block_len=3, topk=1, chunk=4)
    with pytest.raises(ValueError, match="retrieval_chunk"):
        LandmarkAttention(32, block_len=4, retrieval_topk=1, retrieval_chunk=6)
    with pytest.raises(ValueError, match="retrieval_chunk"):
        LandmarkAttention(32, block_len=4, retrieval_chunk=8)  # needs retrieval_topk


def test_mixer_chunked_retrieval_streams_and_reduces_to_per_query():
    torch.manual_seed(0)
    m = LandmarkAttention(32, n_heads=2, block_len=3, retrieval_topk=2,
                          retrieval_chunk=6).double().eval()
    x = torch.randn(2, 30, 32, dtype=torch.float64)
    with torch.no_grad():
        y, _ = m(x)
        st = m.init_state(2, dtype=torch.float64)
        y1, st = m(x[:, :11], st)
        y2, _ = m(x[:, 11:], st)
        torch.testing.assert_close(torch.cat([y1, y2], 1), y, **F64)
        m.retrieval_chunk = 3
        y_block, _ = m(x)
        m.retrieval_chunk = None
        torch.testing.assert_close(y_block, m(x)[0], **F64)
