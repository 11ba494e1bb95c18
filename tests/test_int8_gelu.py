"""Tests for int8_gelu.py: GELU (tanh) and SwiGLU on int8 blocks against float torch."""
import pytest
import torch
import torch.nn.functional as F

from int8_gelu import (gelu_bwd, gelu_fwd, gelu_tanh, gelu_tanh_grad, silu_grad, swiglu_bwd,
                       swiglu_fwd)
from quantize import QTensor, dequantize, expand_blocks, quantize

CASES = ["randn", "outlier", "zero"]

# Round to nearest puts a value at most s/2 from where it was, stochastic rounding less than s
# (it picks the level just below or just above). The slack covers our fp32 formula differing
# from torch's by a few ulps of the block's absmax (127 s): 1e-5 * 127 s ~ 1.3e-3 s, plus an
# absolute 1e-6 for all-zero blocks (s = 0).
FP32_SLACK = 1.3e-3


def make_h(shape, qblock, case, scale=3.0):
    """Fresh pre-activations spanning GELU's curved region, optionally with one special block."""
    h = torch.randn(shape) * scale                              # (..., N)
    h2 = h.view(-1, shape[-1])                                  # (rows, N) view into h
    if case == "outlier":
        h2[:qblock, :qblock] *= 1e3                             # block (0, 0) scaled by 1e3
    elif case == "zero":
        h2[-qblock:, -qblock:] = 0                              # the last block is all zero
    return h


def assert_rounded(t, ref, fraction):
    """|dequantize(t) - ref| <= fraction * s of each element's block (+ fp32 slack)."""
    s = expand_blocks(t.s, t.qblock)[:t.rows, :t.cols].reshape(t.shape)
    err = (dequantize(t) - ref).abs()
    bound = (fraction + FP32_SLACK) * s + 1e-6
    worst = (err / bound).max().item()
    assert worst <= 1, f"max err {err.max().item():.3e}, {worst:.3f}x the rounding bound"


def autograd_grad(fn, h, dg):
    """d(sum(fn(h) * dg))/dh by torch autograd, h a float tensor."""
    h = h.clone().requires_grad_()
    fn(h).backward(dg)
    return h.grad


def torch_gelu(h):
    return F.gelu(h, approximate="tanh")


def torch_swiglu(h):
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


# ---------------------------------------------------------------------------------------------
# float helpers, float64: the analytic derivatives equal autograd

def test_float_helpers():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(1000, dtype=torch.float64) * 4,
                   torch.tensor([0.0, -1e3, 1e3, -30.0, 30.0], dtype=torch.float64)])
    torch.testing.assert_close(gelu_tanh(x), torch_gelu(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gelu_tanh_grad(x), autograd_grad(torch_gelu, x, torch.ones_like(x)),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(silu_grad(x), autograd_grad(F.silu, x, torch.ones_like(x)),
                               rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# GELU

@pytest.mark.parametrize("shape", [(1, 32), (3, 37, 70), (64, 256)])
@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("case", CASES)
def test_gelu_fwd(shape, qblock, case):
    torch.manual_seed(1)
    h_q = quantize(make_h(shape, qblock, case), qblock)
    g_q = gelu_fwd(h_q)
    assert isinstance(g_q, QTensor) and g_q.shape == h_q.shape and g_q.qblock == qblock
    # the input is what the int8 tensor holds: compare on dequantize(h_q), not on h
    assert_rounded(g_q, torch_gelu(dequantize(h_q)), 0.5)


@pytest.mark.parametrize("shape", [(1, 32), (3, 37, 70), (64, 256)])
@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dg_kind", ["float", "int8"])
@pytest.mark.parametrize("stochastic", [False, True], ids=["rtn", "sr"])
def test_gelu_bwd(shape, qblock, case, dg_kind, stochastic):
    torch.manual_seed(2)
    h_q = quantize(make_h(shape, qblock, case), qblock)
    dg = make_h(shape, qblock, case, scale=1.0)                 # (..., N) upstream gradient
    dg_in = quantize(dg, qblock, stochastic=True) if dg_kind == "int8" else dg
    dh_q = gelu_bwd(dg_in, h_q, stochastic=stochastic)
    assert isinstance(dh_q, QTensor) and dh_q.shape == h_q.shape
    dg_f = dequantize(dg_in) if dg_kind == "int8" else dg
    ref = autograd_grad(torch_gelu, dequantize(h_q), dg_f)
    assert_rounded(dh_q, ref, 1.0 if stochastic else 0.5)


# ---------------------------------------------------------------------------------------------
# SwiGLU: h = [gate | up], each half a multiple of qblock wide

def swiglu_shapes():
    for qblock in (32, 64, 128):
        for lead, k in (((1,), 1), ((3, 37), 2), ((64,), 1)):
            yield lead + (2 * k * qblock,), qblock


@pytest.mark.parametrize("shape,qblock", list(swiglu_shapes()))
@pytest.mark.parametrize("case", CASES)
def test_swiglu_fwd(shape, qblock, case):
    torch.manual_seed(3)
    h_q = quantize(make_h(shape, qblock, case), qblock)
    g_q = swiglu_fwd(h_q)
    assert isinstance(g_q, QTensor) and g_q.shape == shape[:-1] + (shape[-1] // 2,)
    assert_rounded(g_q, torch_swiglu(dequantize(h_q)), 0.5)


@pytest.mark.parametrize("shape,qblock", list(swiglu_shapes()))
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dg_kind", ["float", "int8"])
@pytest.mark.parametrize("stochastic", [False, True], ids=["rtn", "sr"])
def test_swiglu_bwd(shape, qblock, case, dg_kind, stochastic):
    torch.manual_seed(4)
    h_q = quantize(make_h(shape, qblock, case), qblock)
    dg = make_h(shape[:-1] + (shape[-1] // 2,), qblock, case, scale=1.0)   # (..., H)
    dg_in = quantize(dg, qblock, stochastic=True) if dg_kind == "int8" else dg
    dh_q = swiglu_bwd(dg_in, h_q, stochastic=stochastic)
    assert isinstance(dh_q, QTensor) and dh_q.shape == h_q.shape
    dg_f = dequantize(dg_in) if dg_kind == "int8" else dg
    ref = autograd_grad(torch_swiglu, dequantize(h_q), dg_f)
    assert_rounded(dh_q, ref, 1.0 if stochastic else 0.5)


# ---------------------------------------------------------------------------------------------
# stochastic rounding of the gradient: reproducible with a generator, unbiased on average

@pytest.mark.parametrize("op", ["gelu", "swiglu"])
def test_bwd_stochastic_unbiased(op):
    torch.manual_seed(5)
    bwd, fn = (gelu_bwd, torch_gelu) if op == "gelu" else (swiglu_bwd, torch_swiglu)
    h_q = quantize(make_h((40, 64), 32, "randn"), 32)
    dg = torch.randn(40, 64 if op == "gelu" else 32)
    ref = autograd_grad(fn, dequantize(h_q), dg)                # (40, 64) fp32
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(bwd(dg, h_q, generator=gen_a).q, bwd(dg, h_q, generator=gen_b).q)
    n = 400
    samples = [bwd(dg, h_q, generator=gen_a) for _ in range(n)]
    mean = torch.stack([dequantize(t) for t in samples]).mean(0)
    # every sample has the same scales (they come from the unrounded dh); one sample lies within
    # s of ref with variance <= s^2/4, so the mean of n has std <= s/2/sqrt(n). Allow 6 of those
    # per element (2560 elements: a false alarm has odds ~1e-5).
    s = expand_blocks(samples[0].s, 32)[:40, :64]
    err = (mean - ref).abs()
    bound = 6 * s / 2 / n ** 0.5 + 1e-6
    assert (err <= bound).all(), f"mean err {(err / bound).max().item():.2f}x the 6-sigma bound"


# ---------------------------------------------------------------------------------------------
# bad input

def test_bad_input():
    torch.manual_seed(6)
    h = torch.randn(4, 64)
    h_q = quantize(h, 32)
    with pytest.raises(TypeError, match="h_q must be a QTensor"):
        gelu_fwd(h)
    with pytest.raises(TypeError, match="h_q must be a QTensor"):
        swiglu_bwd(torch.randn(4, 32), h)
    with pytest.raises(ValueError, match="multiple of qblock=32"):
        swiglu_fwd(quantize(torch.randn(4, 96), 32))            # H = 48
    with pytest.raises(ValueError, match="multiple of qblock=64"):
        swiglu_bwd(torch.randn(4, 32), quantize(h, 64))         # H = 32 < 64
    with pytest.raises(ValueError, match="dg has shape"):
        gelu_bwd(torch.randn(4, 63), h_q)
    with pytest.raises(ValueError, match="dg has shape"):
        swiglu_bwd(torch.randn(4, 64), h_q)                     # dg must be (4, 32)
    with pytest.raises(TypeError, match="floating-point"):
        gelu_bwd(torch.randint(0, 5, (4, 64)), h_q)
    with pytest.raises(ValueError, match="NaN or Inf"):
        gelu_bwd(torch.full((4, 64), float("nan")), h_q)
