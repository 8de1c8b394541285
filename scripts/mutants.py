"""Plant single-line bugs (mutants) in copies of the repository and check that the tests catch
every one of them; write the table to docs/conformance.md.

    python scripts/mutants.py                 # every mutant, 2 at a time; writes the doc
    python scripts/mutants.py -k ssd -k fox   # only mutants whose id contains one of these
    python scripts/mutants.py --list          # the mutants, without running anything

Each mutant is (id, file, original text, replacement, tests, what it breaks). The original text
must occur exactly once in the file; if it does not (the code moved on), the mutant is reported
as an error, never skipped. For each mutant the tracked files of the working tree are copied into
a temporary directory, the one edit is applied, and pytest runs the mutant's tests there, with
the copy as working directory and as PYTHONPATH, so that the copy's ``lrm`` is the one imported
(checked before the run, and by the ``sanity`` mutant, which only a copy-imported lrm can
fail). A mutant is *killed* when a test fails, and *survives* when they all pass. Before the
mutants, the unmutated copy must pass every test selection used below, or kills mean nothing.

A survivor is a missing test: add the test, do not delete the mutant. To re-target a mutant
after a refactoring, update its file and original text.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "conformance.md"
COMMAND = "python scripts/mutants.py"

# Test selections are pytest node ids, run in one pytest call per mutant, in the order given
# (it stops at the first failure, so the most telling test comes first).
EQUATIONS = {  # mixer -> the module of its paper-equation test
    "attention": "tests/mixers/test_attention_mixer.py",
    "fox": "tests/mixers/test_fox.py",
    "gated_deltanet": "tests/mixers/test_gdn.py",
    "s4d": "tests/mixers/test_s4d.py",
    "s4": "tests/mixers/test_s4.py",
    "mamba": "tests/mixers/test_mamba.py",
    "mamba2": "tests/mixers/test_mamba2.py",
    "longmamba": "tests/mixers/test_mamba.py",  # on Mamba and Mamba-2
}


def eq(mixer: str) -> str:
    """The equations test of one mixer (attention, fox, gated_deltanet, s4d, s4, mamba, ...)."""
    return f"{EQUATIONS[mixer]}::test_{mixer}_follows_the_paper"


def stream(case: str, dtype: str = "fp64") -> str:
    """full == chunked == token by token, for one contract case such as ``gdn-default``, in
    float64 by default (its tolerance, 1e-10, is the strict one; ``fp32`` is the other id)."""
    return (f"tests/test_contract.py::test_full_equals_chunked_equals_token_by_token"
            f"[{case}-{dtype}]")


CONV = "tests/ops/test_causal_conv.py::test_causal_conv_ref_equals_loop"
SCAN = "tests/ops/test_selective_scan.py::test_selective_scan_ref_equals_recurrence"
SSD = "tests/ops/test_ssd.py::test_ssd_ref_equals_recurrence"
SMALL = "tests/ops/test_selective_scan_small.py::test_small_scan_core_gradcheck"
SMALL_GROUPS = ("tests/ops/test_selective_scan_small.py::"
                "test_small_groups_equal_recurrence[fp64-shared-final_state-4-3]")
DELTA = "tests/ops/test_delta_rule.py::test_chunk_equals_recurrent"
GDN2 = "tests/ops/test_delta_rule.py::test_gdn2_chunk_equals_recurrent"
FA = "tests/ops/test_forgetting_attn.py::test_blockwise_equals_quadratic_outputs_and_gradients"
LONGMAMBA = "tests/ops/test_longmamba.py"
LMA = "tests/ops/test_landmark_attn.py::test_"
LM = "tests/mixers/test_landmark.py::test_"
LM_BLOCKWISE = f"{LMA}blockwise_equals_loop_and_quadratic_outputs_and_gradients[37-37-4-10]"
LM_RETRIEVAL = f"{LMA}retrieval_equals_its_loop[37-37-3-2-8]"
NM = "tests/ops/test_neural_memory.py::test_"
NM_PARALLEL = f"{NM}parallel_form_equals_the_loop[8-True-True-1]"  # C=8, momentum, decay, depth 1
TT = "tests/mixers/test_titans.py::test_"
OX = "tests/mixers/test_oryx.py::test_"
ATTN = "tests/ops/test_attention.py::test_three_tiers_agree"
SWA = "tests/ops/test_attention.py::test_sliding_window_attention_blockwise_equals_dense"
RESUME = "tests/lra/test_quick_resume.py::test_a_killed_run_resumes_to_the_same_weights_and_losses"
CLAIM_RESUME = ("tests/scripts/test_claims_protocol.py::"
                "test_a_check_killed_mid_run_continues_that_run_from_its_checkpoint")
S4_OPS = ("tests/ops/test_ssm_conv.py::test_vandermonde_filter_equals_recurrence",
          "tests/ops/test_ssm_conv.py::test_cauchy_filter_equals_recurrence",
          "tests/ops/test_ssm_conv.py::test_fft_conv_is_causal_convolution_without_wrap",
          "tests/ops/test_ssm_conv.py::test_dplr_step_is_the_bilinear_step")


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    what: str


M = Mutant
MUTANTS: list[Mutant] = [
    # ------------------------------------------------------------------ sanity: the copy is used
    M("sanity-copy-is-imported", "lrm/__init__.py", '__version__ = "0.1.0"',
      'raise ImportError("planted in the copy")', (eq("attention"),),
      "importing the copy's lrm fails; the repository's lrm would pass"),

    # ------------------------------------------------------------------ attention (+ RoPE)
    M("attention-not-causal", "lrm/ops/attention.py", "causal = Lq > 1 and mask is None",
      "causal = False", (eq("attention"),), "full sequence attends to the future"),
    M("attention-rope-q-offset", "lrm/mixers/attention.py",
      "q = rope(q, pos, self.rope_base)", "q = rope(q, pos + 1, self.rope_base)",
      (eq("attention"),), "queries rotated one position late (off-by-one)"),
    M("attention-rope-sign", "lrm/nn.py", "x1 * cos - x2 * sin", "x1 * cos + x2 * sin",
      (eq("attention"),), "RoPE rotation not a rotation (sign)"),
    M("attention-cache-mask", "lrm/ops/attention.py", "q0 = k0 + n_k - n_q",
      "q0 = k0 + n_k - n_q - 1", (eq("attention"), stream("attention-default"), ATTN),
      "streamed chunk: a query cannot see its own key"),
    M("attention-cache-offset", "lrm/mixers/attention.py",
      "offset = 0 if state is None else state.k.shape[2]",
      # (a shift of every position alike, from the first chunk on, is invisible to RoPE)
      "offset = 0 if state is None or not state.k.shape[2] else state.k.shape[2] + 1",
      (eq("attention"), stream("attention-default")), "RoPE positions off by one after a cache"),
    M("attn-op-window-off-by-one", "lrm/ops/attention.py", "visible &= back < window",
      "visible &= back <= window", (ATTN, SWA),
      "sliding window of w + 1 keys"),
    M("attn-op-persistent-masked", "lrm/ops/attention.py",
      "mask = F.pad(mask, (kp.shape[2], 0), value=True)",
      "mask = F.pad(mask, (kp.shape[2], 0), value=False)", (ATTN,),
      "fast path: persistent keys hidden from the queries of a chunk"),

    # ------------------------------------------------------------------ FoX
    M("fox-shift-alpha-swapped", "lrm/mixers/fox.py",
      "out = alpha * zh_prev + (1 - alpha) * zh", "out = (1 - alpha) * zh_prev + alpha * zh",
      (eq("fox"),), "KV-shift: α and 1 − α swapped"),
    M("fox-shift-reads-next-token", "lrm/mixers/fox.py", "z[:, :-1]], dim=1)",
      "z[:, 1:]], dim=1)", (eq("fox"),), "KV-shift mixes k_{t+1} instead of k_{t−1}"),
    M("fox-no-q-norm", "lrm/mixers/fox.py", "q, k = self.q_norm(q), self.k_norm(k)",
      "q, k = q, self.k_norm(k)", (eq("fox"),), "QK-norm drops the norm of q"),
    M("fox-no-output-norm", "lrm/mixers/fox.py", "o = self.output_norm(o)", "o = o",
      (eq("fox"),), "output norm dropped"),
    M("fox-gate-silu", "lrm/mixers/fox.py", "o * torch.sigmoid(self.ogate_proj(x))",
      "o * F.silu(self.ogate_proj(x))", (eq("fox"),), "output gate σ → SiLU"),
    M("fox-forget-gate-sign", "lrm/mixers/fox.py", "F.logsigmoid(upcast(self.fgate_proj(x)",
      "F.logsigmoid(-upcast(self.fgate_proj(x)", (eq("fox"),), "forget gate f → 1 − f"),

    # ------------------------------------------------------------------ Gated DeltaNet
    M("gdn-no-q-l2norm", "lrm/mixers/gated_deltanet.py",
      'q = l2norm(rearrange(q, "b l (h k) -> b l h k", h=H))',
      'q = rearrange(q, "b l (h k) -> b l h k", h=H)', (eq("gated_deltanet"),),
      "L2 norm of q dropped"),
    M("gdn-no-delta-one-minus-beta", "lrm/mixers/gated_deltanet.py",
      "beta[..., None].expand(B, L, H, V))", "(1 - beta)[..., None].expand(B, L, H, V))",
      (eq("gated_deltanet"),), "delta_rule=False writes with 1 − β"),
    M("gdn-decay-sign", "lrm/mixers/gated_deltanet.py",
      "g = -A * F.softplus(", "g = A * F.softplus(", (eq("gated_deltanet"),),
      "GDN decay α = exp(+A·softplus) > 1"),
    M("gdn2-erase-write-swapped", "lrm/mixers/gated_deltanet.py",
      "o, h = gdn2(q, k, v, g, beta_or_erase, write,",
      "o, h = gdn2(q, k, v, g, write[..., :k.shape[-1]], write,",
      (eq("gated_deltanet"),), "GDN-2 erases with the write gate"),
    M("gdn-no-output-gate", "lrm/mixers/gated_deltanet.py",
      'o = self.o_norm(o, rearrange(self.g_proj(x), "b l (h v) -> b l h v", h=H))',
      "o = self.o_norm(o)", (eq("gated_deltanet"),), "output gate SiLU(W_g x) dropped"),
    M("gdn-head-dim-fixed", "lrm/mixers/gated_deltanet.py",
      "head_dim = max(1, min(256, d // 4))", "head_dim = 256",
      ("tests/mixers/test_default_sizes.py",),
      "default head width fixed at the paper's 256 whatever d (a d = 32 layer 6x attention's)"),

    # ------------------------------------------------------------------ did-you-mean messages
    M("names-hint-dropped", "lrm/names.py",
      'said = f"unknown {kind} {show(names[0])}." + (f" Did you mean {hint}?" if hint else "")',
      'said = f"unknown {kind} {show(names[0])}."',
      ("tests/test_registry.py::test_unknown_mixer_lists_valid_names",
       "tests/test_registry.py::test_one_name_gets_its_closest_valid_names_and_the_full_list",
       "tests/test_registry.py::test_several_names_get_a_hint_each"),
      "an unknown name's closest valid names left out of the message"),

    # ------------------------------------------------------------------ S4D and S4
    M("s4-no-D-skip", "lrm/mixers/s4.py", "y = y + upcast(self.D", "y = y + 0 * upcast(self.D",
      (eq("s4"),), "the D u skip dropped (S4)"),
    M("s4d-no-D-skip", "lrm/mixers/s4d.py", "y = y + upcast(self.D", "y = y + 0 * upcast(self.D",
      (eq("s4d"),), "the D u skip dropped (S4D)"),
    M("s4d-stream-no-conjugate", "lrm/mixers/s4d.py",
      "ssm_conv(u, dA, dB, 2 * C, x0, taps=K)",
      "ssm_conv(u, dA, dB, C, x0, taps=K)", (eq("s4d"), stream("s4d-default")),
      "streaming S4D forgets the conjugate modes (factor 2)"),
    M("s4-imag-sign", "lrm/mixers/s4.py", "-upcast(self.A_imag, dtype)))",
      "upcast(self.A_imag, dtype)))", (eq("s4"),), "Im A of the wrong sign (S4)"),
    M("s4d-imag-sign", "lrm/mixers/s4d.py", "-upcast(self.A_imag, dtype))",
      "upcast(self.A_imag, dtype))", (eq("s4d"),), "Im A of the wrong sign (S4D)"),
    M("s4-ssm-copies-interleaved", "lrm/mixers/s4.py", "return z.repeat(self.d // self.n_ssm, 1)",
      "return z.repeat_interleave(self.d // self.n_ssm, 0)", (eq("s4d"), eq("s4")),
      "channel h uses copy h // (H/S) instead of h mod S"),
    M("s4-gelu-to-silu", "lrm/mixers/s4.py", "F.gelu(self._drop(y))", "F.silu(self._drop(y))",
      (eq("s4d"), eq("s4")), "block activation GELU → SiLU"),
    M("s4-ctilde-doubling-sign", "lrm/mixers/s4.py",
      'c = c + torch.einsum("hn,hnm->hm", c, Al)', 'c = c - torch.einsum("hn,hnm->hm", c, Al)',
      (eq("s4d"), eq("s4")), "S4: C̃ extended past l_max with the wrong sign"),
    M("s4-recurrent-C-sign", "lrm/mixers/s4.py",
      "I_AL = eye - torch.linalg.matrix_power(dA, self.l_max)",
      "I_AL = eye + torch.linalg.matrix_power(dA, self.l_max)",
      (stream("s4-default"), stream("s4-short_lmax")),
      "S4 streaming: C recovered from C̃ with (I + Ā^L)"),

    # ------------------------------------------------------------------ Mamba
    M("mamba-x-z-swapped", "lrm/mixers/mamba.py", "xs, z = self.in_proj(x).chunk(2, dim=-1)",
      "z, xs = self.in_proj(x).chunk(2, dim=-1)", (eq("mamba"),),
      "in_proj halves read in the wrong order"),
    M("mamba-B-C-swapped", "lrm/mixers/mamba.py",
      'rearrange(B, "b l n -> b n l"), rearrange(C, "b l n -> b n l")',
      'rearrange(C, "b l n -> b n l"), rearrange(B, "b l n -> b n l")', (eq("mamba"),),
      "B and C swapped"),
    M("mamba-conv-no-silu", "lrm/mixers/mamba.py",
      'bias=conv_bias, activation="silu")',
      'bias=conv_bias, activation=None)', (eq("mamba"),),
      "SiLU after the short conv dropped"),
    M("mamba-delta-relu", "lrm/mixers/mamba.py", "delta = F.softplus(upcast(F.linear(dt",
      "delta = F.relu(upcast(F.linear(dt", (eq("mamba"),), "Δ = relu(·) instead of softplus"),
    M("longmamba-mamba1-score", "lrm/mixers/mamba.py",
      "delta = self.longmamba(delta, decay_rate_per_channel(A))",
      "delta = self.longmamba(delta, A.amin(dim=-1))", (eq("longmamba"),),
      "LongMamba on Mamba-1 scores channels by their fastest state"),

    # ------------------------------------------------------------------ Mamba-2
    M("mamba2-no-gate", "lrm/mixers/mamba2.py", "y = self.norm(y, z)", "y = self.norm(y)",
      (eq("mamba2"),), "gated RMSNorm loses the SiLU(z) gate"),
    M("mamba2-no-norm-no-gate", "lrm/mixers/mamba2.py", "z=None if self.rmsnorm else",
      "z=None if True else", (eq("mamba2"),), "rmsnorm=False loses the SiLU(z) gate"),
    M("mamba2-dt-limit-ignored", "lrm/mixers/mamba2.py",
      "delta = delta.clamp(min=self.dt_limit[0], max=self.dt_limit[1])", "delta = delta",
      (eq("mamba2"),), "dt_limit not applied"),
    M("mamba2-D-hdim-layout", "lrm/mixers/mamba2.py", '"(h p) -> h p", p=self.head_dim',
      '"(p h) -> h p", p=self.head_dim', (eq("mamba2"),), "per-channel D read transposed"),
    M("mamba2-norm-groups-interleaved", "lrm/nn.py", '"... (g c) -> ... g c", c=self.group_size',
      '"... (c g) -> ... g c", c=self.group_size', (eq("mamba2"),),
      "grouped RMSNorm over the wrong channels"),
    M("mamba2-longmamba-skipped", "lrm/mixers/mamba2.py", "if self.longmamba is not None:",
      "if False:", (eq("longmamba"),), "LongMamba filter never applied to Mamba-2"),

    # ------------------------------------------------------------------ op: causal_conv
    M("conv-taps-reversed", "lrm/ops/causal_conv.py", "upcast(weight, dtype).unsqueeze(1)",
      "upcast(weight, dtype).flip(-1).unsqueeze(1)",
      (CONV, eq("mamba")), "conv taps in reverse order"),
    M("conv-no-bias", "lrm/ops/causal_conv.py", "unsqueeze(1), upcast(bias, dtype),",
      "unsqueeze(1), None,",
      (CONV, eq("mamba")), "conv bias dropped"),
    M("conv-state-off-by-one", "lrm/ops/causal_conv.py", "xs[..., xs.shape[-1] - (width - 1):]",
      "xs[..., xs.shape[-1] - width:-1]", (CONV, stream("mamba-small")),
      "the conv state handed on is one token stale"),

    # ------------------------------------------------------------------ op: selective_scan
    M("scan-decay-sign", "lrm/ops/selective_scan.py",
      "a = torch.exp(delta[..., None] * A[:, :, None, :])  # decay of each step",
      "a = torch.exp(-delta[..., None] * A[:, :, None, :])  # decay of each step",
      (SCAN, eq("mamba")), "decay exp(−ΔA) grows"),
    M("scan-no-delta-in-B", "lrm/ops/selective_scan.py", "b = (delta * u)[..., None] * B",
      "b = u[..., None] * B", (SCAN, eq("mamba")),
      "B̄ = B instead of ΔB"),
    M("scan-compose-wrong", "lrm/ops/selective_scan.py",
      "b[..., k:, :] + a[..., k:, :] * b[..., :-k, :]",
      "b[..., k:, :] + a[..., :-k, :] * b[..., :-k, :]",
      (SCAN, eq("mamba")),
      "Hillis–Steele step composes with the wrong decay"),
    M("scan-state-not-decayed", "lrm/ops/selective_scan.py", "h = a * h0[..., None, :] + b",
      "h = h0[..., None, :] + b", (SCAN, stream("mamba-small")),
      "the state entering a chunk is not decayed"),

    M("scan-small-reverse-off-by-one", "lrm/ops/selective_scan.py",
      "dh[t].addcmul_(a[t + 1], dh[t + 1])", "dh[t].addcmul_(a[t], dh[t + 1])",
      (SMALL,), "the reversed recurrence of ∂h decays by the step's own decay, not the next's"),
    M("scan-small-wrong-previous-state", "lrm/ops/selective_scan.py", "r[1:] *= hs[:-1]",
      "r[1:] *= hs[1:]", (SMALL,), "∂Δ and ∂A use h_t where the decay acts on h_{t-1}"),
    M("scan-small-decay-base", "lrm/ops/selective_scan.py",
      "a = torch.exp2(d[..., None] * A2)", "a = torch.exp(d[..., None] * A2)", (SMALL,),
      "the decay takes e, not 2, to the power Δ·A·log2(e)"),
    M("scan-small-shared-B-grad", "lrm/ops/selective_scan.py",
      'torch.einsum("tbgen,tbge->tbgn", X, v)', 'torch.einsum("tbgen,tbge->tbgn", X, v.abs())',
      (SMALL,), "the gradient of a B or C shared by the channels weights by |v|, not v"),
    M("scan-small-group-entering-state", "lrm/ops/selective_scan.py",
      "h_in = entering[c % M]", "h_in = entering[0]",
      (SMALL_GROUPS, SMALL), "a block inside a group of blocks recomputes from the group's first "
      "entering state, not its own"),
    M("scan-small-group-kept-every-block", "lrm/ops/selective_scan.py",
      "if c % M == 0:", "if c % M == M - 1:", (SMALL_GROUPS, SMALL),
      "the forward keeps the state entering a group's last block, not its first"),
    M("scan-lean-decay-base", "lrm/ops/selective_scan.py",
      "torch.exp2(delta[..., None] * (A * LOG2E)[:, :, None, :])",
      "torch.exp2(delta[..., None] * A[:, :, None, :])",
      ("tests/ops/test_selective_scan.py::test_selective_scan_lean_equals_ref_and_recurrence",),
      "the lean path's decay misses the factor log2(e)"),

    # ------------------------------------------------------------------ op: ssd
    M("ssd-x-not-scaled-by-dt", "lrm/ops/ssd.py",
      'xc = rearrange(xf * dt[..., None], "b (c q) (g h) p -> b c q g h p", q=Q, g=G)',
      'xc = rearrange(xf, "b (c q) (g h) p -> b c q g h p", q=Q, g=G)',
      (SSD, eq("mamba2")), "x_s not scaled by Δ_s (intra-chunk term and chunk states)"),
    M("ssd-segsum-off-by-one", "lrm/ops/ssd.py",
      "strictly_below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)",
      "strictly_below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(0)",
      (SSD, eq("mamba2")),
      "segsum includes a_j: decays off by one step"),
    M("ssd-chunk-state-not-decayed", "lrm/ops/ssd.py", "h = decay[..., None, None] * h + state",
      "h = h + state", (SSD, eq("mamba2")),
      "inter-chunk recurrence forgets the chunk's decay"),
    M("ssd-decay-to-end-off-by-one", "lrm/ops/ssd.py",
      "decay_to_end = rearrange(torch.exp(A_cum[..., -1:] - A_cum),",
      "decay_to_end = rearrange(torch.exp(A_cum[..., -1:] - A_cum + dA),",
      (SSD, eq("mamba2")),
      "chunk state decays each token by its own step too"),
    M("ssd-off-diagonal-boundary", "lrm/ops/ssd.py",
      'torch.exp(A_cum), "b g h c q -> b c q g h 1")',
      'torch.exp(A_cum - dA), "b g h c q -> b c q g h 1")',
      (SSD, eq("mamba2")),
      "state entering a chunk decayed one step short"),

    # ------------------------------------------------------------------ op: delta_rule
    # (not ".tril(-1)" -> ".tril(0)" on the UT matrix: the unitriangular solve never reads the
    # diagonal, so that mutant is equivalent and cannot be killed)
    M("delta-chunk-mask-off-by-one", "lrm/ops/delta_rule.py",
      "causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()",
      "causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)",
      (DELTA, eq("gated_deltanet")),
      "intra-chunk mask drops the diagonal: a query misses its own token"),
    M("delta-v-new-sign", "lrm/ops/delta_rule.py", "v_new = u_n - w_n @ h",
      "v_new = u_n + w_n @ h", (DELTA, stream("gdn-default")),
      "carried state added to the written values instead of erased"),
    M("delta-state-not-decayed", "lrm/ops/delta_rule.py",
      "h = d_n[..., None] * h + k_n.transpose(-1, -2) @ v_new",
      "h = h + k_n.transpose(-1, -2) @ v_new",
      (DELTA, stream("gdn-default")),
      "state crosses a chunk boundary without decay"),
    M("delta-chunk-end-off-by-one", "lrm/ops/delta_rule.py",
      "kd = kc * (gc[..., -1:] - gc).exp()[..., None]",
      "kd = kc * (gc[..., -2:-1] - gc).exp()[..., None]",
      (DELTA, stream("gdn-default")),
      "keys decayed to the chunk's second-last position"),
    M("gdn2-no-write-gate", "lrm/ops/delta_rule.py",
      "rhs = torch.cat([bk * gc.exp(), wc * vc], dim=-1)",
      "rhs = torch.cat([bk * gc.exp(), vc], dim=-1)",
      (GDN2, eq("gated_deltanet")),
      "GDN-2 write gate ignored"),

    # ------------------------------------------------------------------ op: forgetting_attn
    M("fa-decay-sign", "lrm/ops/forgetting_attn.py",
      ".add_(cq[..., :, None]).sub_(ck[..., None, :])",
      ".sub_(cq[..., :, None]).add_(ck[..., None, :])", (FA, eq("fox")),
      "decay bias c_j − c_i: the past is boosted, not forgotten"),
    M("fa-mask-diagonal", "lrm/ops/attention.py", "visible = back >= 0",
      "visible = back > 0", (FA, eq("fox")),
      "a query cannot see its own key (off-by-one)"),
    M("fa-acc-not-rescaled", "lrm/ops/forgetting_attn.py",
      "acc = acc * rescale[..., None] + p @ v[:, :, ks:ke]", "acc = acc + p @ v[:, :, ks:ke]",
      (FA, eq("fox")), "online softmax: old blocks not rescaled"),
    M("fa-sum-not-rescaled", "lrm/ops/forgetting_attn.py", "l = l * rescale + p.sum(-1)",
      "l = l + p.sum(-1)", (FA, eq("fox")),
      "online softmax: normaliser not rescaled"),

    # ------------------------------------------------------------------ op: longmamba
    M("longmamba-keeps-small-steps", "lrm/ops/longmamba.py", "(delta <= theta[:, None])",
      "(delta >= theta[:, None])", (LONGMAMBA, eq("longmamba")),
      "filter zeroes the large Δ instead of the small"),
    M("longmamba-local-channels", "lrm/ops/longmamba.py",
      "return self.score > self.config.channel_threshold",
      "return self.score < self.config.channel_threshold",
      (LONGMAMBA, eq("longmamba")), "filters the local channels"),
    M("longmamba-budget-mean", "lrm/ops/longmamba.py", "budget = delta.sum(-1)",
      "budget = delta.mean(-1)", (LONGMAMBA, eq("longmamba")),
      "decay budget S = mean Δ instead of Σ Δ"),
    M("longmamba-k-star-off-by-one", "lrm/ops/longmamba.py",
      "k_star = (above.int().argmax(-1) + 1)", "k_star = (above.int().argmax(-1))",
      (LONGMAMBA, eq("longmamba")), "θ read one index early"),

    # ------------------------------------------------------------------ op: S4/S4D kernels
    M("ssm-zoh-B", "lrm/ops/hippo.py", "return dA, (dA - 1) / A * B",
      "return dA, (dA - 1) * B", (*S4_OPS, eq("s4d")),
      "ZOH B̄ without the 1/A"),
    M("ssm-bilinear-inverted", "lrm/ops/hippo.py", "(1 + dtA / 2) / (1 - dtA / 2)",
      "(1 - dtA / 2) / (1 + dtA / 2)", (*S4_OPS, eq("s4d")),
      "bilinear Ā inverted"),
    M("ssm-s4d-kernel-no-conjugate", "lrm/ops/ssm_conv.py",
      "vandermonde(2 * C * dB, log_dA, L)", "vandermonde(C * dB, log_dA, L)",
      (*S4_OPS, eq("s4d")), "S4D kernel forgets the conjugate modes"),
    M("ssm-fft-circular", "lrm/ops/ssm_conv.py",
      "torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)",
      "torch.fft.rfft(u, n=L) * torch.fft.rfft(k, n=L), n=L)",
      (*S4_OPS, eq("s4d"), eq("s4")), "FFT convolution wraps around (not causal)"),
    M("ssm-woodbury-sign", "lrm/ops/ssm_conv.py",
      "dt * (k_CB - s * k_CP * k_QB / (1 + s * k_QP))",
      "dt * (k_CB + s * k_CP * k_QB / (1 + s * k_QP))", (*S4_OPS, eq("s4")),
      "S4 kernel: Woodbury correction of the wrong sign"),
    M("ssm-dplr-step-sign", "lrm/ops/hippo.py", "r = (2 / dt + Lam) * x - P * q(x)",
      "r = (2 / dt + Lam) * x + P * q(x)", (*S4_OPS, stream("s4-default")),
      "S4 decoding step: low-rank term of the wrong sign"),

    # ------------------------------------------------------------------ op: landmark_attn
    M("lmattn-own-token-masked", "lrm/ops/landmark_attn.py",
      "own = (blk == c) & ~lm_col & (blk * P + off <= pos)",
      "own = (blk == c) & ~lm_col & (blk * P + off < pos)", (LM_BLOCKWISE,),
      "grouped softmax: a query cannot see its own token (off-by-one)"),
    M("lmattn-inner-softmax-with-landmark", "lrm/ops/landmark_attn.py",
      "torch.softmax(s_pre[..., :P - 1], dim=-1)", "torch.softmax(s_pre, dim=-1)[..., :P - 1]",
      (LM_BLOCKWISE,), "earlier blocks: the inner softmax also normalises over the landmark"),
    M("lmattn-retrieval-slot-off-by-one", "lrm/ops/landmark_attn.py",
      "(idx >= c.view(1, 1, R, 1) - kp4).long()", "(idx > c.view(1, 1, R, 1) - kp4).long()",
      (LM_RETRIEVAL,), "retrieval: the oldest of the k' most recent blocks is not shifted"),
    M("lmattn-retrieval-ties-to-oldest", "lrm/ops/landmark_attn.py",
      "s_lm = (s_lm + TIE_TOL * ref * recency)", "s_lm = (s_lm - TIE_TOL * ref * recency)",
      (f"{LMA}retrieval_ties_go_to_the_most_recent_block",),
      "top-k ties go to the oldest block, not the most recent"),
    M("lmattn-chunk-position-shift", "lrm/ops/landmark_attn.py",
      "shift = (kp + 1) * P - lo", "shift = kp * P - lo",
      ("tests/ops/test_landmark_chunk.py::test_chunked_retrieval_equals_the_direct_construction",),
      "chunked retrieval: the chunk starts one slot early (overlaps the retrieved blocks)"),
    M("lmattn-chunk-ties-to-oldest", "lrm/ops/landmark_attn.py",
      "TIE_TOL * ref * (b_ids + 1) / c0", "TIE_TOL * ref * (c0 - b_ids) / c0",
      ("tests/ops/test_landmark_chunk.py::test_chunked_retrieval_ties_go_to_the_most_recent_block",),
      "chunked retrieval: near-ties go to the oldest cache block"),
    M("lmattn-chunk-sees-later-landmarks", "lrm/ops/landmark_attn.py",
      "lm_prev, tok_prev = lm & (ck < cq), ~lm & (ck < cq)",
      "lm_prev, tok_prev = lm & (ck <= cq), ~lm & (ck < cq)",
      ("tests/ops/test_landmark_chunk.py::test_without_a_cache_chunked_retrieval_is_the_grouped"
       "_softmax",),
      "chunked retrieval: a query's own landmark joins its outer softmax"),

    # ------------------------------------------------------------------ landmark (+ model tokens)
    M("landmark-stream-q-rope-offset", "lrm/mixers/landmark.py", "pos[offset:],",
      "pos[:T - offset],", (f"{LM}mixer_streams_exactly_in_float64[None]",),
      "streamed queries rotated from position 0 (cache length ignored)"),
    M("landmark-k-rope-off-by-one", "lrm/mixers/landmark.py",
      '"b t h e -> b h t e"), pos, self.rope_base)',
      '"b t h e -> b h t e"), pos + 1, self.rope_base)', (f"{LM}mixer_matches_the_equations",),
      "keys rotated one position late"),
    M("landmark-tokens-at-block-start", "lrm/model.py", "landmark = (e + 1) % (n + 1) == 0",
      "landmark = e % (n + 1) == 0", (f"{LM}model_inserts_landmarks_for_every_layer",),
      "model inserts the landmark before each block instead of after it"),
    M("landmark-local-path-sees-landmark", "lrm/ops/landmark_attn.py",
      'backend == "auto" and k.shape[1] <= block_len',
      'backend == "auto" and k.shape[1] <= block_len + 1',
      (f"{LM}mixer_streams_exactly_in_float64[None]",),
      "plain causal attention also once the first landmark is a key (it must not see itself)"),
    M("landmark-tokens-stream-restart", "lrm/model.py", "self.landmarks.insert(x, int(seen))",
      "self.landmarks.insert(x, 0)",
      (f"{LM}model_output_has_input_length_and_streams_like_forward[landmark-None]",),
      "step() places landmarks as if every chunk started the sequence"),

    # ------------------------------------------------------------------ op: neural_memory
    M("nmem-forget-gate-sign", "lrm/ops/neural_memory.py", "keep = 1 - _to_chunks(alpha, C)",
      "keep = 1 + _to_chunks(alpha, C)", (NM_PARALLEL,), "forgetting 1 − α → 1 + α"),
    M("nmem-no-momentum-in-chunk", "lrm/ops/neural_memory.py", "m = A_bar @ E_bar",
      "m = A_bar", (NM_PARALLEL,),
      "inside a chunk a gradient enters W once, the momentum carries it no further"),
    M("nmem-segment-product-off-by-one", "lrm/ops/neural_memory.py",
      "later = idx[:, None] > idx[None, :]", "later = idx[:, None] >= idx[None, :]",
      (NM_PARALLEL,), "Π_{l=i..t} instead of Π_{l=i+1..t}: one decay step too many"),
    M("nmem-unfinished-chunk-committed", "lrm/ops/neural_memory.py", "if n < n_full:",
      "if n <= n_full:", (NM_PARALLEL, f"{NM}streaming_equals_one_call[1]"),
      "the unfinished last chunk is folded into the state (and replayed later)"),
    M("nmem-clamp-norm-over-heads", "lrm/ops/neural_memory.py",
      "soft_clamp_factor(torch.linalg.matrix_norm(g), max_grad_norm)",
      "soft_clamp_factor(g.flatten(1).norm(dim=-1)[:, None], max_grad_norm)",
      (f"{NM}stabilisers_against_an_independent_loop[2.0-False-1]",),
      "token loop: the clamp's norm taken over all heads' gradients, not each matrix's"),
    M("nmem-clamp-norm-of-delta-only", "lrm/ops/neural_memory.py",
      "n = x_norm * torch.linalg.vector_norm(delta, dim=-1)",
      "n = torch.linalg.vector_norm(delta, dim=-1)",
      (f"{NM}stabilisers_against_an_independent_loop[2.0-False-2]",),
      "parallel form: the norm of x_i ⊗ δ_i taken as ‖δ_i‖ (‖x_i‖ dropped)"),
    M("nmem-clamp-hard-tanh", "lrm/ops/neural_memory.py", "return torch.tanh(r) / r",
      "return torch.tanh(r)", (f"{NM}stabilisers_against_an_independent_loop[2.0-False-1]",
                             f"{NM}soft_clamp_and_newton_schulz_by_themselves"),
      "soft clamp factor tanh(n/c) instead of tanh(n/c)/(n/c)"),
    M("nmem-ns-coefficient-sign", "lrm/ops/neural_memory.py",
      "NS_COEFFS = (3.4445, -4.7750, 2.0315)", "NS_COEFFS = (3.4445, 4.7750, 2.0315)",
      (f"{NM}stabilisers_against_an_independent_loop[None-True-1]",
       f"{NM}newton_schulz_is_titans_pytorchs"), "Newton–Schulz cubic coefficient's sign"),
    M("nmem-ns-closed-form-one-step-short", "lrm/ops/neural_memory.py",
      "for _ in range(NS_STEPS):", "for _ in range(NS_STEPS - 1):",
      (f"{NM}stabilisers_against_an_independent_loop[None-True-1]",),
      "parallel form: the rank-one closed form runs four Newton–Schulz steps, the loop five"),
    M("nmem-stabilised-layer2-wrong-input", "lrm/ops/neural_memory.py",
      "delta2 = transformed(torch.linalg.vector_norm(z, dim=-1), delta2)",
      "delta2 = transformed(kn_n, delta2)",
      (f"{NM}stabilisers_against_an_independent_loop[2.0-False-2]",),
      "depth 2: the second layer's gradient norm taken with ‖k_i‖ instead of ‖z_i‖"),

    # ------------------------------------------------------------------ titans
    M("titans-gate-no-sigmoid", "lrm/mixers/titans.py",
      "return self.norm_y(y) * torch.sigmoid(self.norm_m(m))",
      "return self.norm_y(y) * self.norm_m(m)",
      (f"{TT}mixer_against_the_papers_equations[mag]",), "MAG/MAC gate σ(N_m(m)) → N_m(m)"),
    M("titans-lmm-no-output-gate", "lrm/mixers/titans.py",
      '(h k)")) * F.silu(self.g_proj(x))', '(h k)"))',
      (f"{TT}mixer_against_the_papers_equations[lmm]",), "LMM output gate SiLU(W_G x) dropped"),
    M("titans-momentum-forget-swapped", "lrm/mixers/titans.py",
      "eta, alpha = torch.sigmoid(gates[1]), torch.sigmoid(gates[2])",
      "eta, alpha = torch.sigmoid(gates[2]), torch.sigmoid(gates[1])",
      (f"{TT}mixer_against_the_papers_equations[lmm]",), "η and α gates swapped"),
    M("titans-swa-band-off-by-one", "lrm/ops/attention.py",
      "band = causal_mask(w, 2 * w, q0=w, window=w, device=q.device)",
      "band = causal_mask(w, 2 * w, q0=w, window=w + 1, device=q.device)",
      (f"{SWA}[30-30-8]",),
      "sliding window of w + 1 keys"),
    M("titans-mac-causal-leak", "lrm/mixers/titans.py",
      "causal = causal_mask(L, T, device=x.device)",
      "causal = causal_mask(L, T, q0=T - L + 1, device=x.device)",
      (f"{TT}mac_segments_are_causal_inside",), "MAC: query i sees h_{i+1} and x_{i+1}"),
    M("titans-mac-reads-live-memory", "lrm/mixers/titans.py",
      "read = memory_forward(seg_w, self.memory.queries(x)",
      "read = memory_forward(s.memory.weights, self.memory.queries(x)",
      (f"{TT}streaming_is_exact_in_float64[mac]",),
      "MAC stream: a segment cut mid-way reads the memory of its chunk, not of its start"),
    M("titans-no-default-clamp", "lrm/mixers/titans.py",
      "max_grad_norm: float | None = 3.0,", "max_grad_norm: float | None = None,",
      (f"{NM}the_default_stabiliser_bounds_the_diverging_memory",),
      "the mixer's default memory update unbounded again (the MQAR divergence)"),
    M("titans-clamp-not-plumbed", "lrm/mixers/titans.py",
      "max_grad_norm=self.max_grad_norm,", "max_grad_norm=None,",
      (f"{TT}mixer_against_the_papers_equations[lmm]",),
      "the mixer's max_grad_norm never reaches the memory"),
    M("titans-normres-mac-read-bare", "lrm/mixers/titans.py",
      "norm_residual=self.memory.norm_residual)", "norm_residual=False)",
      (f"{TT}mac_against_the_papers_equations[True]",),
      "MAC's segment read skips the memory's LayerNorm + residual wrapper"),
    M("nmem-normres-ln-backward", "lrm/ops/neural_memory.py",
      "return (r - r.mean(-1, keepdim=True) - n_ * (r * n_).mean(-1, keepdim=True)) * rstd",
      "return (r - r.mean(-1, keepdim=True)) * rstd",
      (f"{NM}norm_residual_against_an_independent_loop",),
      "the surprise's LayerNorm backward without its projection term"),

    # ------------------------------------------------------------------ oryx
    M("oryx-attn-mask-diagonal", "lrm/mixers/oryx.py", "n = T + end", "n = T + end - 1",
      (f"{OX}each_position_reads_its_own_mode[every:7:2-gdn]",),
      "a later attention span: a query cannot see its own key"),
    M("oryx-gdn-decay-sign", "lrm/mixers/gated_deltanet.py", "g = -A * F.softplus(",
      "g = A * F.softplus(", (f"{OX}schedule_rec_is_the_core_recurrence[gdn]",),
      "GDN core (the gates it shares with Gated DeltaNet): decay α > 1"),
    M("oryx-gdn-gates-swapped", "lrm/mixers/oryx.py",
      "gdn_gates(self.a_proj(x), self.b_proj(x),", "gdn_gates(self.b_proj(x), self.a_proj(x),",
      (f"{OX}schedule_rec_is_the_core_recurrence[gdn]",), "GDN core: α from W_b, β from W_a"),
    M("oryx-every-window-off-by-one", "lrm/oryx_schedule.py",
      "return t % sched.n >= sched.n - sched.w", "return t % sched.n > sched.n - sched.w",
      (f"{OX}static_schedules",), "every:N:W runs W − 1 positions per period in attention"),
    M("oryx-no-output-gate", "lrm/mixers/oryx.py", "o = self.o_norm(o, g)", "o = self.o_norm(o)",
      (f"{OX}schedule_attn_is_gated_multi_head_attention[gdn]",),
      "output gate SiLU(W_g x) dropped"),
    M("oryx-mamba2-no-D", "lrm/mixers/oryx.py", "D=upcast(self.D, cd)", "D=None",
      (f"{OX}schedule_rec_is_the_core_recurrence[mamba2]",), "Mamba-2 core: D v skip dropped"),
    M("oryx-stream-mode-restarts", "lrm/mixers/oryx.py",
      ".mask(T, L, L if s is None else None)", ".mask(0, L, L if s is None else None)",
      (stream("oryx-mamba2_every"),),
      "a streamed chunk takes the modes of positions 0..L−1, not of its own"),

    # ------------------------------------------------------------------ op CPU paths by size
    M("ssd-cpu-gate-dropped", "lrm/ops/ssd.py",
      "return fn(x, dt, A, B, C, Q, D, z, dt_bias, initial_state, dt_softplus, dt_limit,",
      "return fn(x, dt, A, B, C, Q, D, None, dt_bias, initial_state, dt_softplus, dt_limit,",
      ("tests/ops/test_ssd_small.py::test_cpu_dispatch_equals_recurrence",),
      "the SSD's CPU dispatch drops the gate z"),
    M("ssd-cpu-size-test-inverted", "lrm/ops/ssd.py",
      "fn = ssd_ref if batch * H * L * Q <= SMALL_ELEMENTS else ssd_lean",
      "fn = ssd_ref if batch * H * L * Q > SMALL_ELEMENTS else ssd_lean",
      ("tests/ops/test_ssd_small.py::test_recomputation_only_beyond_the_size_limit",),
      "the SSD recomputes at small sizes and keeps everything at large ones"),
    M("delta-cpu-initial-state-dropped", "lrm/ops/delta_rule.py",
      "return gated_delta_rule_ref(q, k, v, g, beta, scale=scale, initial_state=initial_state,",
      "return gated_delta_rule_ref(q, k, v, g, beta, scale=scale, initial_state=None,",
      ("tests/ops/test_delta_rule_small.py::test_cpu_dispatch_equals_recurrence",),
      "the gated delta rule's small CPU path starts from zero, not the initial state"),
    M("delta-cpu-size-test-inverted", "lrm/ops/delta_rule.py",
      "if B * H * T * (K + v.shape[-1] + C) <= SMALL_ELEMENTS:",
      "if B * H * T * (K + v.shape[-1] + C) > SMALL_ELEMENTS:",
      ("tests/ops/test_delta_rule_small.py::test_recomputation_only_beyond_the_size_limit",),
      "the gated delta rule recomputes at small sizes and keeps everything at large ones"),

    # ------------------------------------------------------------------ resumable runs (lra)
    M("resume-batch-order-fresh", "lra/quick.py", 'g.set_state(state["generator"])',
      "g.manual_seed(seed)", (RESUME,), "a resumed run shuffles its batches afresh"),
    M("resume-global-rng-fresh", "lra/quick.py", 'torch.set_rng_state(state["torch_rng"])',
      "torch.get_rng_state()", (RESUME,),
      "a resumed run's dropout draws from whatever state the new process has"),
    M("resume-grid-ignores-seed", "lra/leaderboard/runner.py",
      '            cfg.get("seed_everything", 0))', "            0)",
      ("tests/lra/test_leaderboard_resume.py::test_a_finished_or_different_run_is_never_resumed",),
      "a killed grid run of seed 0 is resumed for the run of seed 1"),
    M("resume-last-before-validation", "lra/lightning_cli.py",
      "return on_steps or 0 < trainer.max_steps <= trainer.global_step", "return False",
      ("tests/lra/test_leaderboard_resume.py::"
       "test_a_killed_run_resumes_in_its_folder_to_the_same_result",),
      "last.ckpt of a step is written before its validation: killed then, the resumed run "
      "never validates that step"),
    M("resume-claim-fits-share-a-file", "scripts/claims/common.py", "        begun[0] += 1",
      "        pass", (CLAIM_RESUME,),
      "the fits of one claim run share one checkpoint file: the first picks up the second's"),
    M("resume-claim-no-checkpoint", "scripts/claims/common.py",
      "token = _RUN_CHECKPOINT.set((check.store.checkpoint_base(key), [0])",
      "token = _RUN_CHECKPOINT.set(None if True else (check.store.checkpoint_base(key), [0])",
      (CLAIM_RESUME,), "a claim check killed mid-run trains that run again from the start"),
]


# ----------------------------------------------------------------------------- running


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f and (ROOT / f).is_file()]


def make_copy(files: list[str]) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="lrm-mutant-"))
    for f in files:
        (tmp / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, tmp / f)
    return tmp


def run_pytest(copy: Path, tests: list[str], timeout: int) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider",
           "-p", "no:randomly", *tests]
    try:
        p = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "timed out"
    return p.returncode, p.stdout + p.stderr


def line_of(text: str, needle: str) -> int:
    return text[:text.index(needle)].count("\n") + 1


@dataclass
class Result:
    mutant: Mutant
    status: str  # killed | survived | error
    line: int | None
    detail: str


def first_failure(output: str) -> str:
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    if m:
        return m.group(1)
    m = re.search(r"^E\s+(\w*Error.*)$", output, re.M) or re.search(r"^E\s+(.+)$", output, re.M)
    return f"collection: {m.group(1)[:80]}" if m else "pytest failed"


def run_mutant(mut: Mutant, files: list[str], timeout: int) -> Result:
    src = (ROOT / mut.file)
    if not src.is_file():
        return Result(mut, "error", None, f"{mut.file} does not exist")
    text = src.read_text()
    n = text.count(mut.original)
    if n != 1:
        return Result(mut, "error", None, f"original text occurs {n} times in {mut.file}")
    line = line_of(text, mut.original)
    copy = make_copy(files)
    try:
        (copy / mut.file).write_text(text.replace(mut.original, mut.replacement))
        rc, out = run_pytest(copy, list(mut.tests), timeout)
        # 1: a test failed; 2 or 4: the mutated lrm broke collection (an import error, after
        # which pytest cannot find the node ids the unmutated copy had), also a kill
        if rc in (1, 2, 4):
            return Result(mut, "killed", line, first_failure(out))
        if rc != 0:
            return Result(mut, "error", line, f"pytest exit code {rc}")
        return Result(mut, "survived", line, "all selected tests pass")
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def baseline(files: list[str], selections: list[str], timeout: int) -> list[str]:
    """Run every selection on an unmutated copy; return the failures (must be none), after
    checking that the copy's lrm is the one imported."""
    copy = make_copy(files)
    try:
        env = {**os.environ, "PYTHONPATH": str(copy)}
        where = subprocess.run([sys.executable, "-c", "import lrm; print(lrm.__file__)"],
                               cwd=copy, env=env, capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(copy)):
            return [f"the copy imports lrm from {where!r}, not from the copy"]
        # two pytest runs side by side (never an empty one: pytest would then run everything)
        halves = [h for h in (selections[::2], selections[1::2]) if h]
        problems = []
        with ThreadPoolExecutor(2) as pool:
            for rc, out in pool.map(lambda sel: run_pytest(copy, sel, timeout), halves):
                if rc != 0:
                    problems.append(f"exit {rc}: {first_failure(out)}")
        return problems
    finally:
        shutil.rmtree(copy, ignore_errors=True)


# ----------------------------------------------------------------------------- report


def group_of(mut: Mutant) -> str:
    parts = Path(mut.file).parts
    if parts[:2] == ("lrm", "ops"):
        return f"op `{Path(mut.file).stem}`"
    return mut.id.split("-")[0]


def md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", "⏎")


def doc_row(r: Result) -> str:
    m = r.mutant
    where = f"`{m.file}:{r.line}`" if r.line else f"`{m.file}`"
    change = f"`{md_escape(m.original)}` → `{md_escape(m.replacement)}`"
    by = f"`{md_escape(r.detail)}`" if r.status == "killed" else f"**{r.detail}**"
    return f"| {m.id} | {where} | {m.what}: {change} | {r.status} | {by} |"


def write_doc(rows: list[str], wall: float, n_selections: int) -> str:
    """The page from one row per mutant (in MUTANTS order), the full run's wall time and the
    number of test selections its baseline ran."""
    killed = sum(" | killed | " in row for row in rows)
    groups: dict[str, int] = {}
    for m in MUTANTS:
        groups[group_of(m)] = groups.get(group_of(m), 0) + 1
    counts = ", ".join(f"{g} {n}" for g, n in groups.items())
    return f"""# Planted bugs: does the test suite catch them?

Generated by `scripts/mutants.py`; reproduce it (about {round(wall / 60) or 1} min on 2 CPU
cores) with

```bash
{COMMAND}
```

Each row is one single-line mutation of the code, applied to a fresh copy of the repository's
tracked files; the tests named for it then run inside that copy (its `lrm` is the one imported:
the unmutated copy is checked to import from itself, and the `sanity` mutant breaks the copy's
`lrm` alone). A mutant is **killed** when a test fails; the first failing test is named. Every
mutant must be killed: a survivor means a missing test. A run with `-k` (some mutants only)
replaces those mutants' rows and keeps the others from the last run.

The tests that catch wrong math are mainly the equation tests in `tests/mixers/` (every mixer
against an independent loop of its paper's equations), the `_ref == _recurrent_ref` tests of
each op in `tests/ops/`, and `tests/test_contract.py` (full == chunked == token by token) for
the streaming paths.

**{killed} of {len(rows)} mutants killed** (per group: {counts}); wall time {wall:.0f} s,
2 mutants at a time, one torch thread each. The unmutated copy passed all
{n_selections} test selections first (the tests of each mutant are listed in
`scripts/mutants.py`).

| mutant | where | what changed | result | killed by |
|---|---|---|---|---|
""" + "\n".join(rows) + "\n"


def update_doc(results: list[Result]) -> str:
    """The page with the rows of ``results`` replaced (a ``-k`` run): the other mutants keep
    their rows from the page, a mutant the page lacks reads "not run", and a row whose mutant
    no longer exists is dropped. The header keeps the last full run's wall time."""
    text = DOC.read_text()
    old = {line[2:].split(" | ", 1)[0]: line for line in text.splitlines()
           if line.startswith("| ") and not line.startswith("| mutant |")}
    new = {r.mutant.id: doc_row(r) for r in results}
    rows = [new.get(m.id) or old.get(m.id)
            or f"| {m.id} | `{m.file}` | {m.what} | not run | **`-k {m.id}` not run yet** |"
            for m in MUTANTS]
    wall = re.search(r"wall time (\d+) s", text)
    n_sel = re.search(r"passed all\s+(\d+) test selections", text)
    return write_doc(rows, float(wall.group(1)) if wall else 0.0,
                     int(n_sel.group(1)) if n_sel else 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("-k", action="append", default=[], help="run mutants whose id contains this")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--jobs", type=int, default=2, help="mutants run at a time")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per pytest run")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/conformance.md")
    args = ap.parse_args()

    ids = [m.id for m in MUTANTS]
    if len(set(ids)) != len(ids):
        raise SystemExit("mutant ids must be unique")
    chosen = [m for m in MUTANTS if not args.k or any(k in m.id for k in args.k)]
    if args.list:
        for m in chosen:
            print(f"{m.id:32s} {m.file}: {m.what}")
        return 0

    t0 = time.perf_counter()
    files = tracked_files()
    selections = sorted({s for m in chosen for s in m.tests})
    problems = baseline(files, selections, 2 * args.timeout)
    if problems:
        print("the unmutated copy fails its tests; fix that first:", *problems, sep="\n  ")
        return 2
    print(f"baseline: {len(selections)} test selections pass on the unmutated copy "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    def one(m: Mutant) -> Result:
        r = run_mutant(m, files, args.timeout)
        print(f"{r.status:9s} {m.id:32s} {r.detail}", flush=True)
        return r

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, chosen))
    wall = time.perf_counter() - t0
    bad = [r for r in results if r.status != "killed"]
    print(f"{len(results) - len(bad)} of {len(results)} mutants killed in {wall:.0f} s")
    if not args.no_doc:
        if args.k:  # only these mutants' rows change
            DOC.write_text(update_doc(results))
        else:
            DOC.write_text(write_doc([doc_row(r) for r in results], wall, len(selections)))
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
