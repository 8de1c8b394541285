"""Block, Bidirectional and LRModel: the generic parts around every mixer.

Mixers only mix (docs/design.md). The residual stream, norms, MLP and dropout live in ``Block``;
``LRModel`` stacks blocks between a token embedding and a task head:

    tokens (B, L) -> embed -> [Block] x n_layers -> norm -> head

``embed`` is a token embedding, or for pixel tasks (``encoder="linear"``) a linear map of the
intensity.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from lrm import registry
from lrm.config import ModelConfig
from lrm.dtypes import compute_dtype, upcast
from lrm.nn import MLP, make_norm


def check_hidden(x: torch.Tensor, d: int, who: str) -> None:
    """Refuse what a norm or a projection would reject with a bare torch error; each message
    explains only what applies to the tensor given."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} expects a tensor x of shape (B, L, {d}); got {type(x).__name__}")
    if x.dim() == 2 and not x.is_floating_point():
        raise ValueError(f"{who}(d={d}) expects hidden states x of shape (B, L, {d}); got "
                         f"{tuple(x.shape)} {x.dtype}, which look like token ids: those go "
                         f"through LRModel (or an nn.Embedding), which embeds them.")
    if x.dim() == 2 and x.shape[-1] == d:
        raise ValueError(f"{who}(d={d}) expects x of shape (B, L, {d}); got {tuple(x.shape)}. "
                         f"A single sequence needs a batch axis: x[None].")
    if x.dim() != 3:
        raise ValueError(f"{who}(d={d}) expects x of shape (B, L, {d}); got "
                         f"{tuple(x.shape)}, {x.dim()} axes instead of 3.")
    if x.shape[-1] != d:
        raise ValueError(f"{who}(d={d}) expects x of shape (B, L, {d}); got "
                         f"{tuple(x.shape)}, width {x.shape[-1]}. Build the block with "
                         f"d={x.shape[-1]}, or project x to width {d} first.")
    if not x.is_floating_point():
        raise TypeError(f"{who} expects floating-point x (B, L, {d}); got {x.dtype}. Token ids "
                        f"go through LRModel (or an nn.Embedding) first; other integer data can "
                        f"be cast with x.to(torch.float32).")


def check_finite(x: torch.Tensor, who: str, training: bool) -> None:
    """Refuse a NaN or inf in a float input, naming the first sample and position that hold
    one (docs/design.md, "Non-finite inputs": most mixers would spread it to every position
    of that sample, earlier ones included).

    The check reads a value back, a sync on a GPU: it runs on CPU always and on other devices
    only outside training (``training`` False); it is skipped while compiling.
    """
    if (training and x.device.type != "cpu") or torch.compiler.is_compiling():
        return
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return
    where = bad.flatten(2).any(-1)  # (B, L): positions with a non-finite feature
    b, pos = (int(i) for i in where.nonzero()[0])
    value = x[b, pos][bad[b, pos]][0].item()
    samples = int(where.any(-1).sum())
    raise ValueError(
        f"{who} got a non-finite input: sample {b}, position {pos} holds {value} ({samples} of "
        f"{x.shape[0]} samples hold a NaN or inf). Mixers spread such a value to every position "
        f"of its sample, earlier ones included, so the output would be NaN throughout; "
        f"replace it first (e.g. torch.nan_to_num(x)) or find where it came from.")


class Block(nn.Module):
    """x -> x + drop(mixer(norm(x))) [-> x + drop(mlp(norm(x)))]  (pre-norm; post-norm
    applies the norm after each residual sum instead).

    A float input with a NaN or inf is refused (:func:`check_finite`: on CPU always, on a GPU
    outside training); ``check_finite = False`` turns that off. LRModel checks its embedded
    input once and turns it off on its blocks, whose inputs are hidden states.
    """

    check_finite: bool = True

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
        """x (B, L, d) -> (y (B, L, d), state); the state is None unless one was given."""
        check_hidden(x, self.d, "Block")
        if self.check_finite:
            check_finite(x, "Block", self.training)
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


def build(name: str, d: int, *, norm: str = "rmsnorm", prenorm: bool = True,
          mlp_ratio: float | None = None, dropout: float = 0.0, bidirectional: bool = False,
          **kwargs: Any) -> Block:
    """``lrm.build``: a residual :class:`Block` around the mixer ``name``.

    Block options are ``norm``, ``prenorm``, ``mlp_ratio`` (None: the mixer's customary
    value, e.g. 4 for attention and 0 for Mamba), ``dropout`` and ``bidirectional``; every
    other keyword goes to the mixer. ``LRModel`` builds its layers the same way
    (:func:`build_block`).
    """
    return build_block(name, d, kwargs, norm=norm, prenorm=prenorm, mlp_ratio=mlp_ratio,
                       dropout=dropout, bidirectional=bidirectional)


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


class LandmarkTokens(nn.Module):
    """The landmark tokens of landmark attention, owned by the model (docs/design.md, "Tokens
    inserted at the model level").

    A mixer that needs them sets ``landmark_every = n``; one learned embedding is inserted after
    every n real tokens, at extended position e = t + t // n for real token t, so a landmark's
    place depends only on the absolute position and a stream cut anywhere inserts the same
    ones (a landmark is inserted with the real token that completes its block). Every layer
    runs on the extended sequence; ``strip`` removes the landmarks before the head.
    """

    def __init__(self, every: int, d: int) -> None:
        super().__init__()
        self.every = every
        self.embedding = nn.Parameter(torch.randn(d))  # N(0, 1), as nn.Embedding rows

    @staticmethod
    def declared(blocks: nn.ModuleList, bidirectional: bool) -> int | None:
        """The ``landmark_every`` that the layers' mixers declare (they must agree), or None."""
        found = {getattr(b.mixer.fwd if isinstance(b.mixer, Bidirectional) else b.mixer,
                         "landmark_every", None) for b in blocks} - {None}
        if len(found) > 1:
            raise ValueError(f"layers declare different landmark_every values {sorted(found)}; "
                             "give every landmark layer the same block_len")
        if found and bidirectional:
            raise ValueError("landmark tokens need a causal model: a landmark summarises the "
                             "block before it, which the reversed copy of a bidirectional "
                             "layer would see after it; use bidirectional=False")
        return found.pop() if found else None

    def insert(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, d): the real tokens start..start+L-1 -> (extended x (B, L', d), a (L',)
        mask of the landmark positions)."""
        n, L = self.every, x.shape[1]
        e = torch.arange(start + start // n, start + L + (start + L) // n, device=x.device)
        landmark = (e + 1) % (n + 1) == 0
        real = (e - e // (n + 1) - start).clamp(0, L - 1)  # real index of each ext position
        return torch.where(landmark[:, None], self.embedding.to(x.dtype), x[:, real]), landmark

    @staticmethod
    def strip(h: torch.Tensor, landmark: torch.Tensor) -> torch.Tensor:
        return h[:, ~landmark]

    def extend_lengths(self, lengths: torch.Tensor | None) -> torch.Tensor | None:
        return None if lengths is None else lengths + lengths // self.every


class LRModel(nn.Module):
    """Embedding -> blocks -> final norm -> head, as configured by a :class:`ModelConfig`.

    ``forward(tokens, lengths=None)`` returns logits: (B, n_classes) for ``classify``,
    (B, L, n_classes) for ``lm``. For ``retrieval`` call ``forward(tokens, lengths,
    tokens2=..., lengths2=...)``. ``step(tokens, state)`` streams a causal ``lm`` model.
    With landmark layers (a mixer with ``landmark_every``), landmark tokens are inserted after
    the embedding and removed before the head: outputs have the input's length.
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
        if cfg.embed_std is not None:  # e.g. 0.02, the GPT-2 / mamba-ssm / Zoology table
            # nn.Embedding draws N(0, 1): scaling it draws no random numbers, so a model with
            # embed_std and one without, from the same seed, differ in the table's scale only
            with torch.no_grad():
                self.embed.weight.mul_(cfg.embed_std)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            build_block(name, d, kw, norm=cfg.norm, prenorm=cfg.prenorm, mlp_ratio=cfg.mlp_ratio,
                        dropout=cfg.dropout, bidirectional=cfg.bidirectional)
            for name, kw in cfg.layer_mixers())
        for block in self.blocks:  # the embedded input is checked once, in encode and step
            block.check_finite = False
        every = LandmarkTokens.declared(self.blocks, cfg.bidirectional)
        self.landmarks = LandmarkTokens(every, d) if every else None
        self.norm = make_norm(cfg.norm, d)
        if cfg.head == "retrieval":
            # LRA's dual encoder: features [u, v, u*v, u-v] -> MLP -> classes
            self.head = nn.Sequential(nn.Linear(4 * d, d), nn.GELU(), nn.Linear(d, n_out))
        else:
            self.head = nn.Linear(d, n_out)

    # -- encoding -----------------------------------------------------------------------------

    def _check_tokens(self, tokens: torch.Tensor, what: str = "tokens") -> None:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"LRModel expects {what} as an integer tensor (B, L); got "
                            f"{type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32):
            hint = (" (hidden states go to the blocks: model.blocks[i](x))"
                    if tokens.is_floating_point() else "")
            raise TypeError(f"LRModel expects integer token ids {what} (B, L); got "
                            f"{tokens.dtype}{hint}. Cast ids with {what}.long().")
        if tokens.dim() != 2:
            raise ValueError(f"LRModel expects {what} of shape (B, L); got "
                             f"{tuple(tokens.shape)}. A single sequence needs a batch axis "
                             f"({what}[None]).")
        # the range check reads values back (a graph break under torch.compile, a sync on a
        # GPU); a compiled model skips it, and an id out of range fails in the embedding lookup
        if torch.compiler.is_compiling():
            return
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size):
            raise ValueError(f"{what} must lie in [0, vocab_size={self.cfg.vocab_size}); got "
                             f"values in [{int(tokens.min())}, {int(tokens.max())}]. Raise "
                             f"ModelConfig.vocab_size or fix the tokenizer.")

    def encode(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L) -> hidden states (B, L, d) after the final norm."""
        self._check_tokens(tokens)
        x = self.embed(tokens)
        check_finite(x, "LRModel (its embedded input)", self.training)
        x = self.drop(x)
        if self.landmarks is not None:  # landmark tokens in, for every layer
            x, landmark = self.landmarks.insert(x, 0)
            lengths = self.landmarks.extend_lengths(lengths)
        for block in self.blocks:
            x, _ = block(x, lengths=lengths)
        x = self.norm(x)
        return x if self.landmarks is None else self.landmarks.strip(x, landmark)

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
        self._check_tokens(tokens2, "tokens2")
        v = self.pool(self.encode(tokens2, lengths2), lengths2)
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))

    # -- for pretraining: another head, a transformed input -----------------------------------

    def replace_head(self, head: nn.Module) -> nn.Module:
        """Put ``head`` in the place of the output head; returns the old one.

        ``forward`` and ``step`` then end in ``head``, which receives what the old head did:
        the hidden states (B, L, d) for ``head="lm"``, the pooled features for ``classify``
        and ``retrieval``. Self-pretraining (lra.pretrain) trains a token head this way while
        the task's head waits; the encoder weights do not change.
        """
        if not isinstance(head, nn.Module):
            raise TypeError(f"replace_head expects an nn.Module (e.g. nn.Linear(d_model, "
                            f"n_out)); got {type(head).__name__}")
        old, self.head = self.head, head
        return old

    @contextlib.contextmanager
    def input_transform(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Inside the ``with`` block, every embedding of tokens (in :meth:`encode`, so in
        ``forward``, and in ``step``) passes through ``fn``.

        ``fn`` receives the input encoder's output x (B, L, d), before dropout and before any
        landmark token is inserted, and returns what goes on in its place (same shape).
        Masked denoising replaces the masked positions by a learned vector m this way::

            with model.input_transform(lambda x: torch.where(mask[..., None], m, x)):
                h = model.encode(tokens, lengths)

        Outside the block the model is untouched.
        """
        handle = self.embed.register_forward_hook(lambda module, args, out: fn(out))
        try:
            yield
        finally:
            handle.remove()

    # -- streaming ----------------------------------------------------------------------------

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> list[Any]:
        if self.cfg.bidirectional:
            raise ValueError("a bidirectional model cannot stream")
        states = [b.init_state(batch_size, device=device, dtype=dtype) for b in self.blocks]
        if self.landmarks is not None:  # and the count of real tokens streamed so far
            states.append(torch.zeros((), dtype=torch.long, device=device))
        return states

    def step(self, tokens: torch.Tensor, state: list[Any]) -> tuple[torch.Tensor, list[Any]]:
        """Per-position outputs for a chunk of tokens (B, l) given the state after the tokens
        before it; returns (logits (B, l, n_out), new state). Only for head='lm'."""
        if self.cfg.head != "lm":
            raise ValueError("step() streams per-position predictions; it needs head='lm'")
        self._check_tokens(tokens)
        x = self.embed(tokens)
        check_finite(x, "LRModel (its embedded input)", self.training)
        if self.landmarks is not None:  # the last state entry counts the real tokens seen
            *state, seen = state
            x, landmark = self.landmarks.insert(x, int(seen))
        new_state = []
        for block, s in zip(self.blocks, state, strict=True):
            x, s = block(x, s)
            new_state.append(s)
        x = self.norm(x)
        if self.landmarks is not None:
            x = self.landmarks.strip(x, landmark)
            new_state.append(seen + tokens.shape[1])
        return self.head(x), new_state

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue ``prompt`` (B, L0) by ``max_new_tokens`` tokens; returns (B, L0 + new).

        The prompt goes through :meth:`step` in one chunk (the prefill), then each new token
        is one more ``step`` with the state: a KV cache for attention, a fixed-size state for
        the recurrent mixers. ``temperature=0`` is greedy decoding; otherwise the next token
        is drawn from softmax(logits / temperature), restricted to the ``top_k`` most likely
        tokens if given. Call ``model.eval()`` first if the model has dropout.
        """
        if self.cfg.head != "lm" or self.cfg.bidirectional:
            raise ValueError("generate() needs a causal language model: head='lm' and "
                             "bidirectional=False")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        self._check_tokens(prompt, "prompt")
        if prompt.shape[1] == 0:
            raise ValueError("generate() needs a prompt of at least one token")
        state = self.init_state(prompt.shape[0], device=prompt.device,
                                dtype=self.head.weight.dtype)
        logits, state = self.step(prompt, state)  # prefill: (B, L0, V)
        out = [prompt]
        for i in range(max_new_tokens):
            # sample in the compute dtype: a bf16 softmax over a large vocabulary is coarse
            last = upcast(logits[:, -1], compute_dtype(logits))  # (B, V)
            if temperature == 0:
                nxt = last.argmax(-1)
            else:
                last = last / temperature
                if top_k is not None and top_k < last.shape[-1]:
                    kth = last.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
                    last = last.masked_fill(last < kth, float("-inf"))
                nxt = torch.multinomial(last.softmax(-1), 1, generator=generator)[:, 0]
            out.append(nxt[:, None])
            if i + 1 < max_new_tokens:  # the last token needs no logits of its own
                logits, state = self.step(nxt[:, None], state)
        return torch.cat(out, dim=1)
