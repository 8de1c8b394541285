"""ModelConfig: everything needed to build an :class:`lrm.model.LRModel`, with strict keys."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lrm import registry
from lrm.names import unknown as unknown_names
from lrm.nn import NORMS

HEADS = ("classify", "lm", "retrieval")
ENCODERS = ("embedding", "linear")
POOLINGS = ("mean", "last")


@dataclass
class ModelConfig:
    """A stack of residual blocks between an embedding and a task head.

    Attributes:
        mixer: the mixer of every layer (see ``lrm.available()``), unless ``pattern`` is set.
        d_model: the width d.
        n_layers: the depth.
        pattern: per-layer mixer names for hybrids, e.g. ``["gdn", "gdn", "fox"]``; repeated
            cyclically to ``n_layers``, so its length must divide ``n_layers``.
        mixer_kwargs: options for the mixer. With ``pattern``, a dict from mixer name to its
            options, e.g. ``{"fox": {"pro": False}}``.
        vocab_size: number of input tokens (ids ``0..vocab_size-1``; id 0 is padding in LRA).
        n_classes: outputs of the head; defaults to ``vocab_size`` for ``head="lm"``.
        head: ``classify`` (pooled sequence -> classes), ``lm`` (a prediction per position),
            ``retrieval`` (LRA's two-tower matching head over two sequences).
        pooling: ``mean`` over valid tokens or the ``last`` valid token (classify/retrieval).
        encoder: ``embedding`` (a learned vector per token id) or ``linear``: the id is read as
            an intensity, scaled to [-1, 1] by ``2 * id / (vocab_size - 1) - 1`` and mapped by
            a linear layer (S4's encoder for pixel tasks, where 200 and 201 should be close).
        bidirectional: wrap every mixer in :class:`lrm.model.Bidirectional` (LRA encoders).
        norm: ``rmsnorm``, ``layernorm`` or ``batchnorm`` (statistics over the batch and the
            positions, as in S4's LRA recipes; classification heads only, see
            :class:`lrm.nn.SequenceBatchNorm`). prenorm: pre- (True) or post-norm residuals.
        mlp_ratio: width of the MLP after each mixer as a multiple of d; 0 for no MLP;
            None for the mixer's customary value (4 for attention, 0 for Mamba and S4).
        dropout: after the mixer and MLP in every block, and on the embeddings.
        embed_std: the standard deviation of the embedding table at initialisation; None keeps
            PyTorch's ``nn.Embedding`` default (1.0). GPT-2, mamba-ssm's language model and
            Zoology draw it from N(0, 0.02²); only with ``encoder="embedding"``.
    """

    mixer: str = "attention"
    d_model: int = 128
    n_layers: int = 2
    pattern: list[str] | None = None
    mixer_kwargs: dict[str, Any] = field(default_factory=dict)
    vocab_size: int | None = None
    n_classes: int | None = None
    head: str = "classify"
    pooling: str = "mean"
    encoder: str = "embedding"
    bidirectional: bool = False
    norm: str = "rmsnorm"
    prenorm: bool = True
    mlp_ratio: float | None = None
    dropout: float = 0.0
    embed_std: float | None = None

    def __post_init__(self) -> None:
        self.mixer = registry.canonical(self.mixer)
        if self.pattern is not None:
            if not self.pattern:
                raise ValueError("pattern must name at least one mixer (or be None)")
            self.pattern = [registry.canonical(p) for p in self.pattern]
            if self.n_layers % len(self.pattern):
                raise ValueError(f"n_layers={self.n_layers} is not a multiple of the pattern "
                                 f"length {len(self.pattern)} ({self.pattern})")
            bad = [k for k, v in self.mixer_kwargs.items()
                   if registry.canonical(k) not in self.pattern or not isinstance(v, dict)]
            if bad:
                raise ValueError(f"with a pattern, mixer_kwargs maps mixer names of the pattern "
                                 f"to option dicts; bad keys: {bad}")
        if self.d_model < 1 or self.n_layers < 1:
            raise ValueError(f"d_model and n_layers must be >= 1, got {self.d_model}, "
                             f"{self.n_layers}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.norm == "batchnorm" and self.head == "lm":
            raise ValueError("norm='batchnorm' takes its training statistics over all positions, "
                             "so a language model (head='lm') would see later tokens through "
                             "them; use 'rmsnorm' or 'layernorm' for head='lm'.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.embed_std is not None:
            if not self.embed_std > 0:
                raise ValueError(f"embed_std must be > 0 (or None for PyTorch's default), got "
                                 f"{self.embed_std}")
            if self.encoder != "embedding":
                raise ValueError(f"embed_std sets the embedding table's initialisation; "
                                 f"encoder={self.encoder!r} has no table (drop embed_std)")

    def layer_mixers(self) -> list[tuple[str, dict[str, Any]]]:
        """(mixer name, options) for each layer."""
        if self.pattern is None:
            return [(self.mixer, dict(self.mixer_kwargs))] * self.n_layers
        opts = {registry.canonical(k): v for k, v in self.mixer_kwargs.items()}
        names = self.pattern * (self.n_layers // len(self.pattern))
        return [(n, dict(opts.get(n, {}))) for n in names]

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Build from a plain dict; unknown keys are an error that lists the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(cfg) - set(valid))
        if unknown:
            raise ValueError(unknown_names("ModelConfig key", unknown, valid))
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
