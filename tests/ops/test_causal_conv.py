"""The depthwise causal conv op (lrm.ops.causal_conv): the reference against a loop and its
token-by-token oracle (float64), gradcheck, and the kernel against the reference on CUDA.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import assert_f64_close, check_grad, rand

from lrm.ops import _kernels
from lrm.ops.causal_conv import causal_conv1d, causal_conv1d_recurrent_ref, causal_conv1d_ref

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors


@pytest.mark.parametrize("width", [1, 2, 4, 5])
def test_causal_conv_ref_equals_loop(width):
    torch.manual_seed(width)
    x, w, b = torch.randn(2, 6, 11), torch.randn(6, width), torch.randn(6)
    state = torch.randn(2, 6, width - 1)
    for st in (None, state):
        y, s = causal_conv1d_ref(x, w, b, "silu", st)
        y2, s2 = causal_conv1d_recurrent_ref(x, w, b, "silu", st)
        torch.testing.assert_close(y, y2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s, s2)
    # streaming in two pieces equals one call
    y_full, s_full = causal_conv1d_ref(x, w, b, None)
    y_a, s_a = causal_conv1d_ref(x[..., :1], w, b, None)
    y_b, s_b = causal_conv1d_ref(x[..., 1:], w, b, None, s_a)
    torch.testing.assert_close(torch.cat([y_a, y_b], -1), y_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_b, s_full)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_causal_conv_kernel_matches_ref():
    if not _kernels.HAS_CAUSAL_CONV1D:
        pytest.skip("causal-conv1d is not installed")
    x, w, b = (t.cuda() for t in (torch.randn(2, 64, 300), torch.randn(64, 4), torch.randn(64)))
    y_k, s_k = causal_conv1d(x, w, b, "silu", backend="kernel")
    y_r, s_r = causal_conv1d(x, w, b, "silu", backend="ref")
    torch.testing.assert_close(y_k, y_r, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s_k, s_r)


# ----------------------------------------------------------------------------- causal conv


def test_causal_conv_ref_equals_recurrent_ref():
    x, w, b, s = rand(2, 5, 37, seed=1), rand(5, 4, seed=2), rand(5, seed=3), rand(2, 5, 3, seed=4)
    y, st = causal_conv1d_ref(x, w, b, "silu", s)
    y_ref, st_ref = causal_conv1d_recurrent_ref(x, w, b, "silu", s)
    assert_f64_close(y, y_ref)
    assert_f64_close(st, st_ref)


def test_causal_conv_gradcheck():
    def fn(x, w, b, s):
        return causal_conv1d_ref(x, w, b, "silu", s)[0]

    check_grad(fn, rand(2, 3, 7, seed=1), rand(3, 4, seed=2), rand(3, seed=3),
               rand(2, 3, 3, seed=4))
