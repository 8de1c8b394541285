"""Starting a run from a pretrained encoder: ``LRAModule(init_from=PATH)`` (``lra fit
--model.init_from PATH``).

The encoder of an :class:`lrm.LRModel` is every weight before the head: the input encoder
(embedding, or the linear pixel encoder), the landmark token of a landmark-attention model, all
blocks and the final norm. :func:`load_encoder` copies these from a checkpoint (one of ``lra
pretrain``, :mod:`lra.pretrain`, or any run of the same encoder) and leaves the head as it is.
A checkpoint of another encoder (another mixer, width, depth, vocabulary, ...; the fields in
``ENCODER_FIELDS``) is refused with the difference named, and so is one whose weights do not
have this model's names and shapes. The task head, number of classes, pooling and dropout may
differ: they are not part of the encoder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lrm import LRModel, ModelConfig

# ModelConfig fields that decide the shape or meaning of an encoder weight; the rest (head,
# classes, pooling, dropout) may differ between pretraining and fine-tuning
ENCODER_FIELDS = ("mixer", "d_model", "n_layers", "pattern", "mixer_kwargs", "vocab_size",
                  "encoder", "bidirectional", "norm", "prenorm", "mlp_ratio")
# (landmarks.: the learned landmark token of a landmark-attention model, an input like embed)
ENCODER_PREFIXES = ("embed.", "landmarks.", "blocks.", "norm.")


def load_encoder(model: LRModel, path: str | Path) -> list[str]:
    """Copy the encoder weights (embedding, blocks, final norm) of a pretraining checkpoint
    into ``model``; the head is left as it is. Returns the names of the copied weights.

    Raises a ValueError naming the difference when the checkpoint's encoder was built with
    another configuration (mixer, width, depth, vocabulary, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no checkpoint at {path}; run `lra pretrain` with "
                                f"the same task and model configs first")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt)
    theirs = (ckpt.get("hyper_parameters") or {}).get("model")
    if theirs is not None:
        mine = model.cfg.to_dict()
        theirs = ModelConfig.from_dict(theirs).to_dict()
        diff = [f"{k}: checkpoint {theirs[k]!r}, this model {mine[k]!r}"
                for k in ENCODER_FIELDS if theirs[k] != mine[k]]
        if diff:
            raise ValueError(f"init_from {path} holds another encoder ({'; '.join(diff)}); "
                             f"pretrain with the same task and model configs as this run")
    enc = {k[len("model."):]: v for k, v in state.items()
           if k.startswith("model.") and k[len("model."):].startswith(ENCODER_PREFIXES)}
    want = {k: v for k, v in model.state_dict().items() if k.startswith(ENCODER_PREFIXES)}
    missing, extra = sorted(set(want) - set(enc)), sorted(set(enc) - set(want))
    shapes = [f"{k} {tuple(enc[k].shape)} vs {tuple(v.shape)}" for k, v in want.items()
              if k in enc and enc[k].shape != v.shape]
    if missing or extra or shapes:
        raise ValueError(f"init_from {path} does not fit this model's encoder: missing "
                         f"{missing[:5]}, unexpected {extra[:5]}, shapes {shapes[:5]}; pretrain "
                         f"with the same task and model configs as this run")
    model.load_state_dict(enc, strict=False)
    return sorted(enc)
