# Device-check helper (not part of lrm): JIT-build causal-conv1d's CUDA extension for sm_90 only
# (its setup.py builds ten architectures; PyPI has no wheel), as the module causal_conv1d_cuda.
import os
import sys
import time

from torch.utils.cpp_extension import load

src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "causal_conv1d-1.7.0")
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
t0 = time.time()
load("causal_conv1d_cuda",
     [os.path.join(src, "csrc", f) for f in ("causal_conv1d.cpp", "causal_conv1d_fwd.cu",
                                              "causal_conv1d_bwd.cu", "causal_conv1d_update.cu")],
     build_directory=out, extra_cflags=["-O3"],
     extra_cuda_cflags=["-O3", "-gencode", "arch=compute_90,code=sm_90",
                        "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                        "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                        "-U__CUDA_NO_BFLOAT162_OPERATORS__",
                        "-U__CUDA_NO_BFLOAT162_CONVERSIONS__", "--expt-relaxed-constexpr",
                        "--expt-extended-lambda", "--use_fast_math"],
     verbose=True)
print(f"built causal_conv1d_cuda in {time.time() - t0:.0f} s", flush=True)
