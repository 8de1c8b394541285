# Device-check hook (not part of lrm): mamba-ssm publishes no wheel and its package __init__
# imports the compiled selective-scan extension. Its Triton kernels (SSD, state update) need
# no compilation, so register the unpacked package without running its __init__.
import os
import sys
import types

_src = os.environ.get("MAMBA_TRITON_SRC")
if _src and "mamba_ssm" not in sys.modules:
    _m = types.ModuleType("mamba_ssm")
    _m.__path__ = [os.path.join(_src, "mamba_ssm")]
    _m.__version__ = "2.3.2.post1 (Triton ops only, __init__ skipped)"
    sys.modules["mamba_ssm"] = _m
