"""Block, Bidirectional and LRModel: the generic parts around every mixer.

Mixers only mix (docs/design.md). The residual stream, norms, MLP and dropout live in ``Block``;
``LRModel`` stacks blocks between a token embedding and a task head:

    tokens (B, L) -> embed -> [Block] x n_layers -> norm -> head

``embed`` is a token embedding, or for pixel tasks (``encoder="linear"``) a linear map of the
intensity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lrm import registry
from lrm.config import ModelConfig
from lrm.nn import MLP, make_norm


class Block(nn.Module):
    """x -> x + drop(mixer(norm(x))) [-> x + drop(mlp(norm(x)))]  (pre-norm; post-norm
    applies the norm after each residual sum instead)."""

    def __init__(self, d: int, mixer: nn.Module, *, norm: str = "rmsnorm",
                 prenorm: bool = True, mlp_ratio: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.d, self.prenorm = d, prenorm
        self.mixer = mixer
        self.norm1 = make_norm(norm, d)
        self.mlp = MLP(d, mlp_ratio, dropout=dropout) if mlp_ratio > 0 else None
        self.norm2 = make_norm(norm, d) if self.mlp is not None else None
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, state: Any = None, *,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        kw = {"lengths": lengths} if isinstance(self.mixer, Bidirectional) else {}
        if self.prenorm:
            y, state = self.mixer(self.norm1(x), state, **kw)
            x = x + self.drop(y)
            if self.mlp is not None:
                x = x + self.drop(self.mlp(self.norm2(x)))
        else:
            y, state = self.mixer(x, state, **kw)
            x = self.norm1(x + self.drop(y))
            if self.mlp is not None:
                x = self.norm2(x + self.drop(self.mlp(x)))
        return x, state

    def init_state(self, batch_size: int, **kw: Any) -> Any:
        return self.mixer.init_state(batch_size, **kw)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence of x (B, L, ...) within its valid prefix; padding stays put."""
    if lengths is None:
        return x.flip(1)
    L = x.shape[1]
    t = torch.arange(L, device=x.device)
    # index[b, t] = lengths[b] - 1 - t inside the sequence, t itself in the padding
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)


class Bidirectional(nn.Module):
    """Run a causal mixer forward and a second copy on the reversed sequence; add them.

    y = fwd(x) + R(bwd(R(x))), with R the reversal of each sequence's valid prefix (so right
    padding does not flow into the backward pass first). Not causal, so no streaming state.
    """

    def __init__(self, fwd: nn.Module, bwd: nn.Module) -> None:
        super().__init__()
        self.fwd, self.bwd = fwd, bwd

    def forward(self, x: torch.Tensor, state: Any = None, *,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if state is not None:
            raise ValueError("Bidirectional mixers see the whole sequence and cannot stream; "
                             "use a causal model (bidirectional=False) for state passing.")
        y_f, _ = self.fwd(x)
        y_b, _ = self.bwd(reverse_padded(x, lengths))
        return y_f + reverse_padded(y_b, lengths), None


def build_block(name: str, d: int, mixer_kwargs: dict[str, Any] | None = None, *,
                norm: str = "rmsnorm", prenorm: bool = True, mlp_ratio: float | None = None,
                dropout: float = 0.0, bidirectional: bool = False) -> Block:
    """The one way a block is built, by :func:`lrm.build` and by every layer of ``LRModel``.

    The mixer ``name`` with ``mixer_kwargs`` (a dict, so that a mixer option may share a name
    with a block option, as S4's ``dropout`` does), a second independent copy for the reversed
    direction when ``bidirectional``, and the mixer's customary MLP ratio when ``mlp_ratio`` is
    None (4 for attention-like mixers, 0 for SSM blocks).
    """
    kw = dict(mixer_kwargs or {})
    m = registry.mixer(name, d, **kw)
    if mlp_ratio is None:
        mlp_ratio = float(getattr(m, "default_mlp_ratio", 4.0))
    if bidirectional:
        m = Bidirectional(m, registry.mixer(name, d, **kw))
    return Block(d, m, norm=norm, prenorm=prenorm, mlp_ratio=mlp_ratio, dropout=dropout)


class IntensityEncoder(nn.Module):
    """Token ids read as intensities: id -> W (2 id / (V - 1) - 1) + b, a (B, L) -> (B, L, d) map.

    S4's encoder for pixel tasks (images normalised to [-1, 1], then a linear layer): unlike
    an embedding table, nearby intensities get nearby vectors from the first step.
    """

    def __init__(self, vocab_size: int, d: int) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"encoder='linear' needs vocab_size >= 2, got {vocab_size}")
        self.scale = 2.0 / (vocab_size - 1)
        self.proj = nn.Linear(1, d)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.to(self.proj.weight.dtype) * self.scale - 1.0
        return self.proj(x[..., None])  # (B, L, 1) -> (B, L, d)


class LRModel(nn.Module):
    """Embedding -> blocks -> final norm -> head, as configured by a :class:`ModelConfig`.

    ``forward(tokens, lengths=None)`` returns logits: (B, n_classes) for ``classify``,
    (B, L, n_classes) for ``lm``. For ``retrieval`` call ``forward(tokens, lengths,
    tokens2=..., lengths2=...)``. ``step(tokens, state)`` streams a causal ``lm`` model.
    """

    def __init__(self, cfg: ModelConfig | dict[str, Any]) -> None:
        super().__init__()
        if isinstance(cfg, dict):
            cfg = ModelConfig.from_dict(cfg)
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set (the data module's "
                             "model_hints() provides it in the training harness)")
        n_out = cfg.n_classes or (cfg.vocab_size if cfg.head == "lm" else None)
        if n_out is None:
            raise ValueError(f"ModelConfig.n_classes must be set for head={cfg.head!r}")
        self.cfg = cfg
        d = cfg.d_model
        self.embed = (nn.Embedding(cfg.vocab_size, d) if cfg.encoder == "embedding"
                      else IntensityEncoder(cfg.vocab_size, d))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            build_block(name, d, kw, norm=cfg.norm, prenorm=cfg.prenorm, mlp_ratio=cfg.mlp_ratio,
                        dropout=cfg.dropout, bidirectional=cfg.bidirectional)
            for name, kw in cfg.layer_mixers())
        self.norm = make_norm(cfg.norm, d)
        if cfg.head == "retrieval":
            # LRA's dual encoder: features [u, v, u*v, u-v] -> MLP -> classes
            self.head = nn.Sequential(nn.Linear(4 * d, d), nn.GELU(), nn.Linear(d, n_out))
        else:
            self.head = nn.Linear(d, n_out)

    # -- encoding -----------------------------------------------------------------------------

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"LRModel expects integer tokens of shape (B, L); got "
                             f"{tuple(tokens.shape)} {tokens.dtype}")

    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L) -> hidden states (B, L, d) after the final norm."""
        self._check_tokens(tokens)
        x = self.drop(self.embed(tokens))
        for block in self.blocks:
            x, _ = block(x, lengths=lengths)
        return self.norm(x)

    def pool(self, h: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """(B, L, d) -> (B, d): mean over valid positions or the last valid position."""
        B, L, _ = h.shape
        if lengths is None:
            lengths = torch.full((B,), L, device=h.device, dtype=torch.long)
        if self.cfg.pooling == "last":
            return h[torch.arange(B, device=h.device), lengths.long() - 1]
        mask = (torch.arange(L, device=h.device)[None, :] < lengths[:, None]).to(h.dtype)
        return (h * mask[..., None]).sum(1) / lengths.clamp(min=1)[:, None].to(h.dtype)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None, *,
                tokens2: torch.Tensor | None = None,
                lengths2: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encode(tokens, lengths)
        if self.cfg.head == "lm":
            return self.head(h)
        u = self.pool(h, lengths)
        if self.cfg.head == "classify":
            return self.head(u)
        if tokens2 is None:
            raise ValueError("head='retrieval' needs tokens2 (the second document)")
        v = self.pool(self.encode(tokens2, lengths2), lengths2)
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))

    # -- streaming ----------------------------------------------------------------------------

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> list[Any]:
        if self.cfg.bidirectional:
            raise ValueError("a bidirectional model cannot stream")
        return [b.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks]

    def step(self, tokens: torch.Tensor, state: list[Any]) -> tuple[torch.Tensor, list[Any]]:
        """Per-position outputs for a chunk of tokens (B, l) given the state after the tokens
        before it; returns (logits (B, l, n_out), new state). Only for head='lm'."""
        if self.cfg.head != "lm":
            raise ValueError("step() streams per-position predictions; it needs head='lm'")
        self._check_tokens(tokens)
        x = self.embed(tokens)
        new_state = []
        for block, s in zip(self.blocks, state, strict=True):
            x, s = block(x, s)
            new_state.append(s)
        return self.head(self.norm(x)), new_state
