"""LongMamba (Ye et al., ICLR 2025): training-free receptive-field enlargement by token filtering.

The observation: a Mamba channel (a Mamba-1 inner channel, a Mamba-2 head) forgets its state at
the rate exp(Δ_t·a) per token. Over the training length T_tr the total forgetting of channel c
is exp(a_c · Σ_{t≤T_tr} Δ_t,c). Channels where this is still large (> c_thr, 0.05 in the paper
and code) are *global*: they carry information across the whole training context. On longer
inputs they keep decaying at the same per-token rate, so their memory covers a smaller and
smaller fraction of the prompt. LongMamba zeroes Δ for the unimportant tokens of global
channels, so that the kept tokens' cumulative decay matches what the channel saw in training
(Δ_t = 0 means: no decay and no write at step t).

Calibration (``LongMambaFilter.record`` + ``finish_calibration``, driven by
``lrm.longmamba.calibrate``), on samples of exactly the training length T_tr, per sample and
channel:
    1. clamp Δ at its top-``clamp_top`` quantile (one outlier token must not set the budget);
    2. budget S_c = Σ_t Δ_t,c; receptive-field score r_c = exp(a_c · S_c);
    3. for each target length T in ``length_factors`` · T_tr: sort Δ descending, stretch that
       profile linearly to T points (the expected Δ profile of a T-token input), and take the
       Δ at the first index where the running sum exceeds S_c: θ_c(T).
Scores and thresholds are averaged (``reduce="mean"``) or maxed over samples and stored as
registered buffers (``train_len``, ``score``, ``theta``), so they live in checkpoints.

Inference (``LongMambaFilter.forward``), on a prefill of length L > T_tr: take θ(T) for the
stored T nearest to L (as the upstream code does), scaled by ``threshold_scale``; in global
channels (r_c > ``channel_threshold``) set Δ_t,c ← 0 wherever Δ_t,c ≤ θ_c. Local channels,
calls with L ≤ T_tr and one-token decoding are untouched.

Symbols: Δ the step size after softplus, (B, C, L); a_c the channel's decay rate (Mamba-2: the
head's scalar A; Mamba-1: max_n A[c, n], the channel's slowest state, which sets how far back
it can remember); T_tr the calibration (training) length.

Streaming. Given θ, the filter is elementwise in time, so it commutes with chunking: what
breaks "full == chunked == token by token" is only that θ is chosen from the length L of each
call. We keep the paper's rule (a single prefill call of length L > T_tr is filtered with
θ(L); shorter calls, chunks and decode steps are not), so a calibrated model streaming a long
prompt in short chunks computes the *unfiltered* model. To stream a long prompt in chunks with
the filter, pin the prompt length with ``lrm.longmamba.prefill_length(model, T)``: every call
inside the context, whatever its length (single tokens included), uses θ(T), and chunked
streaming then equals the one-call prefill exactly; leave the context before decoding. The
conformance suite (L = 37) runs the LongMamba cases uncalibrated, where the filter is the
identity; ``tests/ops/test_longmamba.py`` checks the pinned and unpinned cases with a calibration
at T_tr = 8.

Simplified vs the LongMamba code: thresholds are computed in memory from batches you pass
(no artifact files); the length grid is relative to T_tr; the public code covers Mamba-2 only,
so the Mamba-1 channel score (slowest state) is our reading of the paper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lrm.dtypes import compute_dtype, upcast

# The upstream code calibrates lengths from 3k to 192k for a 2k training length.
DEFAULT_LENGTH_FACTORS = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0)


@dataclass(frozen=True)
class LongMambaConfig:
    """Options of the LongMamba filter (defaults from the paper and its code).

    Attributes:
        channel_threshold: c; a channel is global when exp(a·ΣΔ) over T_tr exceeds it (5e-2).
        clamp_top: the fraction of the largest Δ of each calibration sample clamped to the
            smallest of them before the statistics (the code sweeps 0.10, 0.15, 0.20).
        length_factors: the target lengths T / T_tr at which θ(T) is calibrated.
        threshold_scale: b, a multiplier on θ at inference (1.0).
        reduce: aggregate the per-sample statistics by ``"mean"`` or ``"max"``.
    """

    channel_threshold: float = 5e-2
    clamp_top: float = 0.10
    length_factors: tuple[float, ...] = DEFAULT_LENGTH_FACTORS
    threshold_scale: float = 1.0
    reduce: str = "mean"

    def __post_init__(self) -> None:
        if not 0.0 <= self.clamp_top < 1.0:
            raise ValueError(f"clamp_top must be in [0, 1), got {self.clamp_top}")
        if not self.length_factors or min(self.length_factors) <= 1.0:
            raise ValueError(f"length_factors must be > 1 (targets longer than the training "
                             f"length), got {self.length_factors}")
        if self.reduce not in ("mean", "max"):
            raise ValueError(f"reduce must be 'mean' or 'max', got {self.reduce!r}")
        object.__setattr__(self, "length_factors", tuple(float(f) for f in self.length_factors))

    @classmethod
    def from_option(cls, option: LongMambaConfig | dict | bool | None) -> LongMambaConfig | None:
        """The mixer option: a config, a dict of its fields (YAML), True (defaults) or None."""
        if option is None or option is False:
            return None
        if option is True:
            return cls()
        if isinstance(option, cls):
            return option
        if isinstance(option, dict):
            return cls(**option)
        raise TypeError(f"longmamba must be a LongMambaConfig, a dict, a bool or None; "
                        f"got {type(option).__name__}")

    def to_dict(self) -> dict:
        return asdict(self)


def channel_statistics(delta: torch.Tensor, a: torch.Tensor, clamp_top: float,
                       target_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """LongMamba's statistics of one calibration sample.

    delta: (C, T_tr) step sizes after softplus; a: (C,) decay rates (negative).
    Returns the receptive-field score exp(a·ΣΔ) (C,) and θ (len(target_lens), C).
    """
    dtype = compute_dtype(delta, a)
    delta = upcast(delta, dtype)
    T_tr = delta.shape[-1]
    if clamp_top > 0:
        k = max(1, int(T_tr * clamp_top))
        ceiling = delta.topk(k, dim=-1).values.min(dim=-1, keepdim=True).values
        delta = torch.minimum(delta, ceiling)
    budget = delta.sum(-1)  # S_c, (C,)
    score = torch.exp(upcast(a, dtype) * budget)
    profile = delta.sort(dim=-1, descending=True).values  # (C, T_tr)
    thetas = []
    for T in target_lens:
        # the sorted profile stretched to T tokens; its running sum passes S_c at k*
        stretched = F.interpolate(profile[:, None], size=T, mode="linear",
                                  align_corners=False)[:, 0]
        above = stretched.cumsum(-1) > budget[:, None]
        k_star = (above.int().argmax(-1) + 1).clamp(max=T - 1)
        thetas.append(stretched.gather(1, k_star[:, None])[:, 0])
    return score, torch.stack(thetas)


class LongMambaFilter(nn.Module):
    """The per-layer filter: holds the calibration as buffers and zeroes Δ at long prefills.

    ``forward(delta (B, C, L), a (C,)) -> delta``. Identity until calibrated.
    """

    def __init__(self, channels: int, config: LongMambaConfig) -> None:
        super().__init__()
        self.channels, self.config = channels, config
        K = len(config.length_factors)
        self.register_buffer("train_len", torch.zeros((), dtype=torch.long))  # 0: uncalibrated
        self.register_buffer("score", torch.zeros(channels))
        self.register_buffer("theta", torch.zeros(K, channels))
        # Not saved: the pinned prefill length (see prefill_length), an on/off switch for
        # comparisons and the per-sample statistics while calibrating.
        self.prefill_len: int | None = None
        self.enabled = True
        self._samples: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._calib_len = 0

    @property
    def calibrated(self) -> bool:
        return int(self.train_len) > 0

    def target_lens(self, train_len: int | None = None) -> list[int]:
        T_tr = int(self.train_len) if train_len is None else train_len
        return [round(f * T_tr) for f in self.config.length_factors]

    def global_channels(self) -> torch.Tensor:
        """(C,) bool: the channels whose receptive field spans the training length."""
        if not self.calibrated:
            return torch.zeros_like(self.score, dtype=torch.bool)
        return self.score > self.config.channel_threshold

    def threshold(self, length: int) -> torch.Tensor:
        """θ (C,) for an input of ``length`` tokens: the stored target length nearest to it."""
        lens = self.target_lens()
        k = min(range(len(lens)), key=lambda i: abs(lens[i] - length))  # first of ties
        return self.theta[k] * self.config.threshold_scale

    def active(self, length: int) -> bool:
        if not (self.enabled and self.calibrated) or self._samples is not None:
            return False
        return (self.prefill_len if self.prefill_len is not None else length) > int(
            self.train_len)

    def forward(self, delta: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if self._samples is not None:
            self._record(delta, a)
            return delta
        L = delta.shape[-1]
        if not self.active(L):
            return delta
        T = self.prefill_len if self.prefill_len is not None else L
        theta = self.threshold(T).to(delta.dtype)
        drop = self.global_channels()[:, None] & (delta <= theta[:, None])  # (C, L) per batch
        return delta.masked_fill(drop, 0.0)

    # -- calibration ------------------------------------------------------------------------

    def start_calibration(self, train_len: int) -> None:
        if train_len < 2:
            raise ValueError(f"train_len must be >= 2, got {train_len}")
        self._samples, self._calib_len = [], int(train_len)

    def _record(self, delta: torch.Tensor, a: torch.Tensor) -> None:
        if delta.shape[-1] != self._calib_len:
            raise ValueError(f"LongMamba calibrates on samples of the training length "
                             f"{self._calib_len}; got a call of length {delta.shape[-1]}")
        lens = self.target_lens(self._calib_len)
        for sample in delta.detach():
            self._samples.append(channel_statistics(sample, a.detach(), self.config.clamp_top,
                                                    lens))

    def finish_calibration(self) -> None:
        samples, self._samples = self._samples, None
        if not samples:
            raise ValueError("no calibration sample reached this layer")
        scores = torch.stack([s for s, _ in samples])
        thetas = torch.stack([t for _, t in samples])
        if self.config.reduce == "mean":
            score, theta = scores.mean(0), thetas.mean(0)
        else:
            score, theta = scores.amax(0), thetas.amax(0)
        self.score.copy_(score)
        self.theta.copy_(theta)
        self.train_len.fill_(self._calib_len)

    def abort_calibration(self) -> None:
        self._samples = None

    def extra_repr(self) -> str:
        state = (f"train_len={int(self.train_len)}, global={int(self.global_channels().sum())}"
                 if self.calibrated else "uncalibrated")
        return f"channels={self.channels}, {state}, c={self.config.channel_threshold}"


def decay_rate_per_channel(A: torch.Tensor) -> torch.Tensor:
    """a_c for the receptive-field score: A itself for Mamba-2's (H,) scalars, the slowest
    state max_n A[c, n] for Mamba-1's (D, N)."""
    return A if A.dim() == 1 else A.amax(dim=-1)


__all__ = ["DEFAULT_LENGTH_FACTORS", "LongMambaConfig", "LongMambaFilter", "channel_statistics",
           "decay_rate_per_channel"]
