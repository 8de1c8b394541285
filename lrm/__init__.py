"""lrm: a readable, faithful PyTorch model zoo of efficient long-sequence architectures.

    import lrm
    block = lrm.build("fox", d=512)           # a residual Block around the mixer
    mixer = lrm.mixer("mamba", d=512)         # the bare mixer: x (B, L, d) -> (y, state)
    model = lrm.LRModel(lrm.ModelConfig(mixer="gdn", vocab_size=256, n_classes=10))
    lrm.available()                           # every registered mixer name

lrm imports torch and einops only; the training harness lives in the separate ``lra`` package.
"""

from lrm.config import ModelConfig
from lrm.model import Bidirectional, Block, LRModel, build
from lrm.registry import available, mixer

__all__ = ["Bidirectional", "Block", "LRModel", "ModelConfig", "available", "build", "mixer"]
__version__ = "0.1.0"
