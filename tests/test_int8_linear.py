"""The block-scaled GEMM reference and the Int8Linear layer."""
import pytest
import torch

from int8_linear import (Int8Linear, gemm, linear_dgrad, linear_dgrad_t, linear_fwd,
                         linear_wgrad, linear_wgrad_t)
from quantize import QTensor, dequantize, expand_blocks, pad_2d, quantize


def int_operand(rows, cols, qblock=32, scale=None):
    """Random int8 values as a QTensor with unit scales (or the given scale grid)."""
    v = torch.randint(-127, 128, (rows, cols)).float()
    q = pad_2d(v, qblock).to(torch.int8)
    s = torch.ones(q.shape[0] // qblock, q.shape[1] // qblock) if scale is None else scale
    return v, QTensor(q, s, torch.Size((rows, cols)), qblock)


@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("M,K,N", [(1, 32, 32), (70, 100, 50), (128, 256, 96), (5, 300, 7)])
def test_unit_scales_equal_float64_product_exactly(M, K, N, qblock):
    torch.manual_seed(M + K + N)
    a, ta = int_operand(M, K, qblock)
    b, tb = int_operand(N, K, qblock)
    c = gemm(ta, tb)
    assert torch.equal(c.double(), a.double() @ b.double().t())


@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("M,K,N", [(1, 40, 33), (70, 100, 50), (130, 256, 96)])
def test_random_scales_match_float64_of_dequantized(M, K, N, qblock):
    torch.manual_seed(7)
    x, w = torch.randn(M, K), torch.randn(N, K)
    x.reshape(-1)[0] *= 1e3                         # an outlier
    tx, tw = quantize(x, qblock), quantize(w, qblock)
    ref = dequantize(tx).double() @ dequantize(tw).double().t()
    c = gemm(tx, tw)
    # fp32 accumulation of K/QB rescaled partial sums: a few fp32 ulps of the row's magnitude
    tol = 1e-6 * (dequantize(tx).abs().double() @ dequantize(tw).abs().double().t())
    err = (c.double() - ref).abs()
    assert (err <= tol + 1e-30).all(), f"max err/tol {(err / (tol + 1e-30)).max():.3g}"


def test_int8_epilogues():
    torch.manual_seed(8)
    tx, tw = quantize(torch.randn(3, 40, 96)), quantize(torch.randn(70, 96))
    c = linear_fwd(tx, tw)                                   # float
    assert c.shape == (3, 40, 70) and c.dtype == torch.float32
    y = linear_fwd(tx, tw, out="int8")
    assert isinstance(y, QTensor) and y.shape == (3, 40, 70)
    assert torch.equal(y.q, quantize(c).q) and torch.equal(y.s, quantize(c).s)
    torch.manual_seed(9)
    ysr = linear_fwd(tx, tw, out="int8_sr")
    step = expand_blocks(ysr.s, 32)[:120, :70].reshape(3, 40, 70)
    assert ((dequantize(ysr) - c).abs() < step * (1 + 1e-5)).all()
    assert not torch.equal(ysr.q, y.q)                       # it really is stochastic
    assert linear_fwd(tx, tw, out_dtype=torch.bfloat16).dtype == torch.bfloat16
    res = torch.randn(3, 40, 70)                             # residual: res + Y, res kept
    keep = res.clone()
    assert torch.equal(linear_fwd(tx, tw, residual=res), res + c) and torch.equal(res, keep)


def test_dgrad_and_wgrad_layouts():
    torch.manual_seed(10)
    x, w, dy = torch.randn(2, 45, 64), torch.randn(96, 64), torch.randn(2, 45, 96)
    tx, tw, tdy = quantize(x), quantize(w), quantize(dy)
    X, W, DY = (dequantize(t).double() for t in (tx, tw, tdy))
    dx = linear_dgrad(tdy, tw)
    assert dx.shape == x.shape
    assert torch.allclose(dx.double(), DY @ W, rtol=1e-5, atol=1e-4)
    dw = linear_wgrad(tdy, tx)
    assert dw.shape == w.shape
    assert torch.allclose(dw.double(), DY.reshape(-1, 96).t() @ X.reshape(-1, 64),
                          rtol=1e-5, atol=1e-4)
    # the transposes given rather than made: W^T quantized as such, dY^T from with_t
    assert torch.equal(linear_dgrad_t(tdy, quantize(w, transposed=True)), dx)
    tdy2, tdyt = quantize(dy, with_t=True)
    assert torch.equal(tdy2.q, tdy.q)
    assert torch.equal(linear_wgrad_t(tdyt, quantize(x, transposed=True)), dw)


def test_gemm_errors():
    ta, tb = quantize(torch.randn(4, 64)), quantize(torch.randn(5, 32))
    with pytest.raises(ValueError, match="inner dimensions"):
        gemm(ta, tb)
    with pytest.raises(ValueError, match="block sizes"):
        gemm(ta, quantize(torch.randn(5, 64), qblock=64))
    with pytest.raises(ValueError, match="out must be"):
        gemm(ta, quantize(torch.randn(5, 64)), out="fp8")
    with pytest.raises(TypeError, match="QTensors"):
        gemm(torch.randn(4, 64), tb)
    tc = quantize(torch.randn(5, 64))
    with pytest.raises(ValueError, match="residual must hold 4x5"):
        gemm(ta, tc, residual=torch.zeros(4, 4))
    with pytest.raises(ValueError, match="residual needs out='float'"):
        gemm(ta, tc, out="int8", residual=torch.zeros(4, 5))
    with pytest.raises(ValueError, match="not both"):
        gemm(ta, tc, residual=torch.zeros(4, 5), accumulate=torch.zeros(4, 5))


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_forward_backward_close_to_float(bias):
    torch.manual_seed(11)
    lin = Int8Linear(96, 80, bias=bias)
    ref = torch.nn.Linear(96, 80, bias=bias)
    ref.load_state_dict(lin.state_dict())
    x = torch.randn(4, 33, 96, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    dout = torch.randn(4, 33, 80)
    y, y_ref = lin(x), ref(x_ref)
    (y * dout).sum().backward()
    (y_ref * dout).sum().backward()

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()
    # int8 blocks carry ~7 bits per value: output and gradients within a few percent in norm
    assert rel(y, y_ref) < 1e-2, rel(y, y_ref)
    assert rel(x.grad, x_ref.grad) < 2e-2, rel(x.grad, x_ref.grad)
    assert rel(lin.weight.grad, ref.weight.grad) < 2e-2, rel(lin.weight.grad, ref.weight.grad)
    if bias:
        assert torch.allclose(lin.bias.grad, ref.bias.grad, atol=1e-5)


def test_int8_linear_backward_is_the_int8_reference_math():
    """The gradients are exactly the block GEMMs of the saved int8 operands."""
    torch.manual_seed(12)
    lin = Int8Linear(64, 64, bias=False)
    x = torch.randn(40, 64, requires_grad=True)
    dout = torch.randn(40, 64)
    torch.manual_seed(99)
    lin(x).backward(dout)
    torch.manual_seed(99)
    tdy = quantize(dout, stochastic=True)                  # the same random draw
    assert torch.equal(x.grad, linear_dgrad(tdy, quantize(lin.weight.detach())))
    assert torch.equal(lin.weight.grad, linear_wgrad(tdy, quantize(x.detach())))


def test_int8_linear_rejects_bad_input():
    lin = Int8Linear(64, 32)
    with pytest.raises(ValueError, match="features"):
        lin(torch.randn(4, 48))
    with pytest.raises(TypeError, match="floating-point"):
        lin(torch.ones(4, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN or Inf"):
        lin(torch.full((4, 64), float("nan")))


def test_gemm_is_exact_under_autocast():
    """Under bf16 autocast a float matmul would round the int32 partial sums to 8 bits."""
    torch.manual_seed(13)
    a, ta = int_operand(64, 256)
    b, tb = int_operand(32, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = gemm(ta, tb)
    assert torch.equal(c.double(), a.double() @ b.double().t())
