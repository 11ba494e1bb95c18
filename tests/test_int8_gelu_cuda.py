"""The CUDA kernels of int8_gelu_cuda.py against the references of int8_gelu.py (GPU only).

Tolerances: the kernels compute sigmoid with __expf and __fdividef (a few ulp), so an output
can differ from the CPU reference's int8 value by one level where it sits within a few ulp of a
rounding boundary: we allow |dq| <= 1 on at most 0.1% of the values, scales within 1e-5
relative, and every value within half a step (round to nearest) or one step (stochastic) of
the float64 result plus the usual fp32 slack.
"""
import pytest
import torch
import torch.nn.functional as F

import quantize_cuda as qc
from int8_gelu import gelu_bwd, gelu_bwd_ref, gelu_fwd, gelu_fwd_ref, swiglu_bwd, swiglu_fwd, \
    swiglu_fwd_ref
from int8_gelu_cuda import gelu_bwd_cuda, gelu_fwd_cuda, swiglu_bwd_cuda, swiglu_fwd_cuda
from quantize import QTensor, dequantize, expand_blocks, quantize

pytestmark = pytest.mark.gpu

CASES = ["randn", "outlier", "zero"]
FP32_SLACK = 1.3e-3


def poison(byte):
    torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda").fill_(byte)
    torch.cuda.synchronize()


def cpu(t):
    return QTensor(t.q.cpu(), t.s.cpu(), t.shape, t.qblock)


def make_h(shape, qblock, case, scale=3.0):
    h = torch.randn(shape, device="cuda") * scale
    h2 = h.view(-1, shape[-1])
    if case == "outlier":
        h2[:qblock, :qblock] *= 1e3
    elif case == "zero":
        h2[-qblock:, -qblock:] = 0
    return h


def assert_rounded(t, ref, fraction):
    ref = ref.double()
    s = expand_blocks(t.s.double(), t.qblock)[:t.rows, :t.cols].reshape(t.shape)
    err = (dequantize(t).double() - ref).abs()
    bound = (fraction + FP32_SLACK) * s + 1e-6
    worst = (err / bound).max().item()
    assert worst <= 1, f"max err {err.max().item():.3e}, {worst:.3f}x the rounding bound"


def assert_close_q(t, ref):
    """t (CUDA) against the reference QTensor (CPU): same grid, scales and int8 values agree."""
    assert t.shape == ref.shape and t.q.shape == ref.q.shape
    torch.testing.assert_close(t.s.cpu(), ref.s, rtol=1e-5, atol=1e-30)
    dq = (t.q.cpu().int() - ref.q.int()).abs()
    assert dq.max() <= 1 and dq.float().mean() <= 1e-3, \
        f"{(dq > 0).sum()} of {dq.numel()} int8 values differ (max {dq.max()})"


def gelu64(h):
    return F.gelu(h.double(), approximate="tanh")


def swiglu64(h):
    gate, up = h.double().chunk(2, dim=-1)
    return F.silu(gate) * up


def grad64(fn, h, dg):
    h = h.double().clone().requires_grad_()
    fn(h).backward(dg.double())
    return h.grad


GELU_SHAPES = [(1, 32), (3, 37, 70), (64, 256), (1000, 96)]


@pytest.mark.parametrize("shape", GELU_SHAPES)
@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("case", CASES)
def test_gelu(shape, qblock, case):
    torch.manual_seed(1)
    h_q = quantize(make_h(shape, qblock, case), qblock)
    poison(0x55)
    g_q = gelu_fwd_cuda(h_q)
    assert_rounded(g_q, gelu64(dequantize(h_q)), 0.5)
    assert_close_q(g_q, gelu_fwd_ref(cpu(h_q)))
    dg_q = quantize(make_h(shape, qblock, case, scale=1.0), qblock, stochastic=True)
    ref = grad64(gelu64, dequantize(h_q), dequantize(dg_q))
    poison(0xFF)
    dh_q = gelu_bwd_cuda(dg_q, h_q, stochastic=False)
    assert_rounded(dh_q, ref, 0.5)
    assert_close_q(dh_q, gelu_bwd_ref(cpu(dg_q), cpu(h_q), stochastic=False))
    poison(0x55)
    assert_rounded(gelu_bwd_cuda(dg_q, h_q), ref, 1.0)          # stochastic rounding


def swiglu_shapes():
    for qblock in (32, 64, 128):
        for lead, k in (((1,), 1), ((3, 37), 2), ((64,), 1), ((1000,), 3)):
            yield lead + (2 * k * qblock,), qblock


@pytest.mark.parametrize("shape,qblock", list(swiglu_shapes()))
@pytest.mark.parametrize("case", CASES)
def test_swiglu(shape, qblock, case):
    torch.manual_seed(3)
    h_q = quantize(make_h(shape, qblock, case), qblock)
    poison(0x55)
    g_q = swiglu_fwd_cuda(h_q)
    assert g_q.shape == shape[:-1] + (shape[-1] // 2,)
    assert_rounded(g_q, swiglu64(dequantize(h_q)), 0.5)
    assert_close_q(g_q, swiglu_fwd_ref(cpu(h_q)))
    dg_q = quantize(make_h(g_q.shape, qblock, case, scale=1.0), qblock, stochastic=True)
    ref = grad64(swiglu64, dequantize(h_q), dequantize(dg_q))
    poison(0xFF)
    assert_rounded(swiglu_bwd_cuda(dg_q, h_q, stochastic=False), ref, 0.5)
    poison(0x55)
    dh_q = swiglu_bwd_cuda(dg_q, h_q)
    assert dh_q.shape == h_q.shape
    assert_rounded(dh_q, ref, 1.0)


@pytest.mark.parametrize("op", ["gelu", "swiglu"])
def test_bwd_stochastic_unbiased_on_gpu(op):
    torch.manual_seed(5)
    bwd, fn = (gelu_bwd, gelu64) if op == "gelu" else (swiglu_bwd, swiglu64)
    h_q = quantize(make_h((40, 64), 32, "randn"), 32)
    dg_q = quantize(torch.randn(40, 64 if op == "gelu" else 32, device="cuda"), 32)
    ref = grad64(fn, dequantize(h_q), dequantize(dg_q))
    n = 1000
    mean = sum(dequantize(bwd(dg_q, h_q)).double() for _ in range(n)) / n
    s = expand_blocks(bwd(dg_q, h_q).s.double(), 32)[:40, :64]
    bound = 6 * s / 2 / n ** 0.5 + 1e-6
    err = (mean - ref).abs()
    assert (err <= bound).all(), f"mean err {(err / bound).max().item():.2f}x the 6-sigma bound"


@pytest.mark.parametrize("qblock", [32, 128])
def test_bwd_at_the_block_absmax(qblock):
    """Every |dh| equal to its block's absmax (dg = +-c where gelu' = 1): round to nearest gives
    +-127 exactly and stochastic rounding +-127 or +-126, never past 127 (no clamp in the
    kernel: its multiplier is rounded down so that |y| <= 127 holds exactly)."""
    torch.manual_seed(8)
    n = 2 * qblock
    h_q = quantize(torch.full((n, n), 50.0, device="cuda"), qblock)     # gelu'(50) = 1
    sign = torch.randint(0, 2, (n, n), device="cuda", dtype=torch.int32) * 2 - 1
    dg_q = quantize(sign.float() * 0.37, qblock)
    assert torch.equal(gelu_bwd_cuda(dg_q, h_q, stochastic=False).q.int(), 127 * sign)
    for _ in range(20):
        q = gelu_bwd_cuda(dg_q, h_q).q.int()
        assert q.min() >= -127 and (q * sign).min() >= 126, f"{(q * sign).min()}"


def test_nonfinite_scale_gives_nan_block_and_flag(monkeypatch):
    """A NaN input scale (an upstream kernel met a NaN) makes the blocks that read it NaN-scaled
    (the others untouched) and sets the device flag, as quantize_cuda's kernels do."""
    torch.manual_seed(9)
    h_q = quantize(make_h((64, 128), 32, "randn"), 32)                # 2 x 4 blocks
    bad = QTensor(h_q.q, h_q.s.clone(), h_q.shape, 32)
    bad.s[1, 2] = float("nan")                                         # SwiGLU: up of block (1, 0)
    dg, dg_half = (quantize(torch.randn(64, c, device="cuda"), 32) for c in (128, 64))
    for name, run, nan_block in (("gelu fwd", lambda: gelu_fwd_cuda(bad), (1, 2)),
                                 ("gelu bwd", lambda: gelu_bwd_cuda(dg, bad), (1, 2)),
                                 ("swiglu fwd", lambda: swiglu_fwd_cuda(bad), (1, 0)),
                                 ("swiglu bwd", lambda: swiglu_bwd_cuda(dg_half, bad), (1, 0))):
        qc.nonfinite_flag(bad.device).zero_()
        s = run().s.cpu()
        expected = torch.zeros_like(s, dtype=torch.bool)
        expected[nan_block] = True
        assert torch.equal(torch.isnan(s), expected), f"{name}: NaN scales at {torch.isnan(s)}"
        with pytest.raises(ValueError, match="NaN or Inf"):
            qc.check_nonfinite()
    monkeypatch.setattr(qc, "STRICT", True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        gelu_fwd_cuda(bad)
    gelu_fwd_cuda(h_q)                                                 # flag reset: no raise


def test_public_names_dispatch_and_float_gradients():
    torch.manual_seed(6)
    h_q = quantize(make_h((64, 128), 32, "randn"), 32)
    assert_close_q(gelu_fwd(h_q), gelu_fwd_ref(cpu(h_q)))
    assert_close_q(swiglu_fwd(h_q), swiglu_fwd_ref(cpu(h_q)))
    dg = torch.randn(64, 128, device="cuda")                    # float dg: the reference path
    assert_rounded(gelu_bwd(dg, h_q), grad64(gelu64, dequantize(h_q), dg), 1.0)


def test_bad_input_raises_clearly():
    h_q = quantize(torch.randn(64, 128, device="cuda"), 32)
    with pytest.raises(AssertionError, match="CUDA tensors only"):
        gelu_fwd_cuda(cpu(h_q))
    with pytest.raises(AssertionError, match="QTensor"):
        gelu_bwd_cuda(torch.randn(64, 128, device="cuda"), h_q)
    with pytest.raises(AssertionError, match="expected"):
        gelu_bwd_cuda(quantize(torch.randn(64, 96, device="cuda"), 32), h_q)
    with pytest.raises(AssertionError, match="multiple of 32"):
        swiglu_fwd_cuda(quantize(torch.randn(64, 96, device="cuda"), 32))
    bad = QTensor(h_q.q.t(), h_q.s, h_q.shape, 32)
    with pytest.raises(AssertionError, match="contiguous"):
        gelu_fwd_cuda(bad)
