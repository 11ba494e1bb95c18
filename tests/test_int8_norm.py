"""Tests for int8_norm.py: LayerNorm / RMSNorm with int8 output against float torch."""
import pytest
import torch
import torch.nn.functional as F

from int8_norm import (Int8LayerNorm, Int8RMSNorm, layernorm_bwd, layernorm_fwd, rmsnorm_bwd,
                       rmsnorm_fwd)
from quantize import QTensor, dequantize, expand_blocks, quantize

SHAPES = [(1, 48), (3, 37, 70), (64, 96)]
CASES = ["randn", "outlier", "zero"]

# Rounding a value to nearest puts it at most s/2 from where it was (s = its block's scale).
# The fp32 slack covers our fp32 y differing from torch's fp32 y by a few ulps of the block's
# absmax (127 s): 1e-5 * 127 s ~ 1.3e-3 s, plus an absolute 1e-6 for all-zero blocks (s = 0).
FP32_SLACK = 1.3e-3
# Against pure float autograd the gradient differs because xhat (and dy, where quantized) is
# rounded to int8. One RTN rounding of normal data costs ~0.8% rms (s/sqrt(12), s ~ 3.3/127),
# a stochastic one ~1.1% (s/sqrt(6)). Float dy: dweight = sum dy*xhat carries xhat's ~0.8%
# (measured max 1.1%); dx only ~0.2%, as xhat enters it only through mean(g*xhat). Rounded dy
# adds its own ~1.1%: measured max 1.4% (dx), 1.9% (dweight). The bounds leave >= 1.5x headroom.
REL_FLOAT_DY = 2e-2
REL_QUANT_DY = 3e-2


def rms_norm(x, weight, eps):
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def make_x(shape, qblock, case):
    """Fresh random residual-stream data (non-zero mean), optionally with one special block."""
    x = torch.randn(shape) * 2 + 0.5                            # (..., C)
    x2 = x.view(-1, shape[-1])                                  # (rows, C) view into x
    if case == "outlier":
        x2[:qblock, :qblock] *= 1e3                             # block (0, 0) scaled by 1e3
    elif case == "zero":
        x2[:qblock] = 0                                         # a whole row block: rows are 0
    return x


def make_params(C, bias=True):
    w = torch.randn(C) * 0.5 + 1
    return w, (torch.randn(C) * 0.1 if bias else None)


def assert_rounded(t, ref, fraction=0.5):
    """|dequantize(t) - ref| <= fraction * s of each element's block (+ fp32 slack)."""
    s = expand_blocks(t.s, t.qblock)[:t.rows, :t.cols].reshape(t.shape)
    err = (dequantize(t) - ref).abs()
    bound = (fraction + FP32_SLACK) * s + 1e-6
    worst = (err / bound).max().item()
    assert worst <= 1, f"max err {err.max().item():.3e}, {worst:.3f}x the rounding bound"


def rel_err(got, ref):
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def bwd64(dy, xhat, rstd, w, rms=False):
    """The norm backward in float64, written out from the formula (test-side reference)."""
    C = xhat.shape[-1]
    dy, xhat = dy.double().reshape(-1, C), xhat.double().reshape(-1, C)
    g = dy * w.double()
    mean_g = 0 if rms else g.mean(1, keepdim=True)
    dx = rstd.double()[:, None] * (g - mean_g - xhat * (g * xhat).mean(1, keepdim=True))
    return dx, (dy * xhat).sum(0), dy.sum(0)


# ---------------------------------------------------------------------------------------------
# forward

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("case", CASES)
def test_layernorm_fwd(shape, qblock, case):
    torch.manual_seed(0)
    x = make_x(shape, qblock, case)
    w, b = make_params(shape[-1])
    y_q, xhat_q, rstd = layernorm_fwd(x, w, b, qblock)
    assert y_q.shape == x.shape and xhat_q.shape == x.shape and y_q.qblock == qblock
    assert_rounded(y_q, F.layer_norm(x, (shape[-1],), w, b, 1e-5))
    assert_rounded(xhat_q, F.layer_norm(x, (shape[-1],), None, None, 1e-5))
    var = x.reshape(-1, shape[-1]).var(1, unbiased=False)
    torch.testing.assert_close(rstd, torch.rsqrt(var + 1e-5), rtol=1e-5, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("case", CASES)
def test_rmsnorm_fwd(shape, qblock, case):
    torch.manual_seed(1)
    x = make_x(shape, qblock, case)
    w, _ = make_params(shape[-1])
    y_q, xhat_q, rstd = rmsnorm_fwd(x, w, qblock)
    assert y_q.shape == x.shape and xhat_q.shape == x.shape
    assert_rounded(y_q, rms_norm(x, w, 1e-6))
    assert_rounded(xhat_q, rms_norm(x, None, 1e-6))
    ms = x.reshape(-1, shape[-1]).pow(2).mean(1)
    torch.testing.assert_close(rstd, torch.rsqrt(ms + 1e-6), rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------
# backward

def test_bwd_formula_is_autograd():
    """The test-side formula equals float64 autograd when xhat is exact (checks bwd64 itself)."""
    torch.manual_seed(2)
    x = make_x((5, 40), 32, "randn").double().requires_grad_()
    w, b = (p.double().requires_grad_() for p in make_params(40))
    dy = torch.randn(5, 40, dtype=torch.float64)
    for rms in (False, True):
        y = rms_norm(x, w, 1e-6) if rms else F.layer_norm(x, (40,), w, b, 1e-5)
        dx, dw = torch.autograd.grad(y, (x, w), dy)
        var = x.detach().pow(2).mean(1) if rms else x.detach().var(1, unbiased=False)
        rstd = torch.rsqrt(var + (1e-6 if rms else 1e-5))
        mu = 0 if rms else x.detach().mean(1, keepdim=True)
        xhat = (x.detach() - mu) * rstd[:, None]
        dx64, dw64, _ = bwd64(dy, xhat, rstd, w.detach(), rms)
        torch.testing.assert_close(dx64, dx, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(dw64, dw, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
@pytest.mark.parametrize("dy_kind", ["float", "int8"])
def test_norm_bwd(shape, qblock, case, rms, dy_kind):
    torch.manual_seed(3)
    C = shape[-1]
    x = make_x(shape, qblock, case)
    w, b = make_params(C, bias=not rms)
    dy = torch.randn(shape)                                     # (..., C)
    if case == "outlier":
        dy.view(-1, C)[-qblock:, -qblock:] *= 1e3               # an outlier block in dy too
    if rms:
        _, xhat_q, rstd = rmsnorm_fwd(x, w, qblock)
    else:
        _, xhat_q, rstd = layernorm_fwd(x, w, b, qblock)
    dy_in = quantize(dy, qblock, stochastic=True) if dy_kind == "int8" else dy
    if rms:
        (dx, dw), db = rmsnorm_bwd(dy_in, xhat_q, rstd, w), None
    else:
        dx, dw, db = layernorm_bwd(dy_in, xhat_q, rstd, w, has_bias=True)
    assert dx.shape == x.shape and dx.dtype == torch.float32 and dw.shape == (C,)

    # exact: the same math in float64 on the int8 values we actually hold (fp32 tolerance)
    dy_f = dequantize(dy_in) if dy_kind == "int8" else dy
    dx64, dw64, db64 = bwd64(dy_f, dequantize(xhat_q), rstd, w, rms)
    for got, ref in ((dx, dx64), (dw, dw64)) + (() if rms else ((db, db64),)):
        ref = ref.reshape(got.shape).float()
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())

    # approximate: pure float autograd on the unrounded input
    xr = x.clone().requires_grad_()
    wr, br = w.clone().requires_grad_(), (None if rms else b.clone().requires_grad_())
    y = rms_norm(xr, wr, 1e-6) if rms else F.layer_norm(xr, (C,), wr, br, 1e-5)
    y.backward(dy)
    tol = REL_QUANT_DY if dy_kind == "int8" else REL_FLOAT_DY
    pairs = [("dx", dx, xr.grad), ("dweight", dw, wr.grad)]
    if not rms:
        assert db is not None
        pairs.append(("dbias", db, br.grad))
    for name, got, ref in pairs:
        e = rel_err(got, ref)
        assert e < tol, f"{name}: ||err||/||ref|| = {e:.3e} >= {tol}"


def test_layernorm_bwd_no_bias():
    torch.manual_seed(4)
    x, (w, _) = make_x((4, 64), 32, "randn"), make_params(64)
    _, xhat_q, rstd = layernorm_fwd(x, w, None)
    _, _, db = layernorm_bwd(torch.randn(4, 64), xhat_q, rstd, w, has_bias=False)
    assert db is None


@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
def test_bwd_adds_the_residual_gradient(rms):
    """dres (the residual branch's gradient) comes back added to dx, nothing else changed."""
    torch.manual_seed(6)
    x, (w, b) = make_x((2, 40, 96), 32, "randn"), make_params(96)
    fwd = rmsnorm_fwd(x, w) if rms else layernorm_fwd(x, w, b)
    dy_q, dres = quantize(torch.randn(2, 40, 96), stochastic=True), torch.randn(2, 40, 96)
    bwd = (lambda **k: rmsnorm_bwd(dy_q, fwd[1], fwd[2], w, **k)) if rms else \
        (lambda **k: layernorm_bwd(dy_q, fwd[1], fwd[2], w, **k))
    plain, added = bwd(), bwd(dres=dres.clone())
    assert torch.equal(added[0], plain[0] + dres)
    for p, a in zip(plain[1:], added[1:]):
        assert torch.equal(p, a)
    with pytest.raises(ValueError, match="dres must have"):
        bwd(dres=torch.randn(2, 40, 95))


# ---------------------------------------------------------------------------------------------
# modules: (out * dout).sum().backward() against nn.LayerNorm / float RMSNorm

@pytest.mark.parametrize("qblock", [32, 128])
@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
def test_module_grad(qblock, rms):
    torch.manual_seed(5)
    shape, C = (3, 37, 70), 70
    x = make_x(shape, qblock, "randn")
    if rms:
        mod, ref_w = Int8RMSNorm(C, qblock=qblock), torch.nn.Parameter(torch.ones(C))
        ref = lambda t: rms_norm(t, ref_w, 1e-6)               # noqa: E731
        ref_params, params = [ref_w], [mod.weight]
    else:
        mod, ref_mod = Int8LayerNorm(C, qblock=qblock), torch.nn.LayerNorm(C)
        ref, ref_params, params = ref_mod, [ref_mod.weight, ref_mod.bias], [mod.weight, mod.bias]
    assert torch.equal(params[0].detach(), torch.ones(C))
    with torch.no_grad():                                       # random affine, same in both
        for p, rp in zip(params, ref_params):
            p.copy_(torch.randn(C) * 0.5 + 1)
            rp.copy_(p)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, out_ref = mod(xa), ref(xb)
    assert out.shape == x.shape and out.dtype == torch.float32
    e = rel_err(out, out_ref)                                   # one RTN rounding: ~1% rms
    assert e < REL_FLOAT_DY, f"forward: ||err||/||ref|| = {e:.3e}"
    dout = torch.randn(shape)
    (out * dout).sum().backward()
    (out_ref * dout).sum().backward()
    for name, got, want in [("x", xa.grad, xb.grad)] + [
            (f"param{i}", p.grad, rp.grad) for i, (p, rp) in enumerate(zip(params, ref_params))]:
        e = rel_err(got, want)
        assert e < REL_QUANT_DY, f"grad of {name}: ||err||/||ref|| = {e:.3e}"


# ---------------------------------------------------------------------------------------------
# bad input

def test_bad_input():
    torch.manual_seed(6)
    x, (w, b) = torch.randn(4, 64), make_params(64)
    with pytest.raises(TypeError, match="floating-point"):
        layernorm_fwd(torch.randint(0, 5, (4, 64)), w, b)
    with pytest.raises(ValueError, match="NaN or Inf"):
        layernorm_fwd(x.index_fill(1, torch.tensor([3]), float("nan")), w, b)
    with pytest.raises(ValueError, match=r"weight must have shape \(64,\)"):
        layernorm_fwd(x, torch.ones(63), b)
    with pytest.raises(ValueError, match=r"bias must have shape \(64,\)"):
        layernorm_fwd(x, w, torch.zeros(65))
    with pytest.raises(ValueError, match="qblock must be one of"):
        rmsnorm_fwd(x, w, qblock=16)
    with pytest.raises(ValueError, match="at least 2 dims"):
        rmsnorm_fwd(torch.randn(64), w)
    with pytest.raises(ValueError, match="NaN or Inf"):
        rmsnorm_fwd(x, w.clone().fill_(float("inf")))
    _, xhat_q, rstd = layernorm_fwd(x, w, b)
    with pytest.raises(ValueError, match="dy has shape"):
        layernorm_bwd(torch.randn(4, 63), xhat_q, rstd, w)
    with pytest.raises(TypeError, match="xhat_q must be a QTensor"):
        rmsnorm_bwd(torch.randn(4, 64), x, rstd, w)
    with pytest.raises(ValueError, match="rstd must have shape"):
        rmsnorm_bwd(torch.randn(4, 64), xhat_q, rstd[:2], w)
    assert isinstance(xhat_q, QTensor)
