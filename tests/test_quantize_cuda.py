"""The CUDA kernels of quantize_cuda.py against the references of quantize.py (GPU only).

Round to nearest is bit exact (torch.equal on q and s, the reference run on the CPU); so are
dequantize and transpose (no rounding). Stochastic rounding cannot match torch.rand's stream,
so it is held to its definition: each value lands on one of its two neighbouring levels, and
the mean over many draws is unbiased.
"""
import pytest
import torch

import quantize_cuda as qc
from quantize import (dequantize, dequantize_ref, expand_blocks, quantize, quantize_cat,
                      quantize_ref, transpose, transpose_ref)
from quantize_cuda import dequantize_cuda, quantize_cuda, transpose_cuda

pytestmark = pytest.mark.gpu

SHAPES = [(1, 1), (1, 32), (33, 65), (70, 45), (3, 37, 70), (2, 3, 5, 40), (300, 1000)]
CASES = ["randn", "outlier", "zero"]


def poison(byte):
    """Fill the caching allocator's free memory with `byte` so torch.empty returns garbage:
    an element a kernel forgets to write then fails the comparison."""
    torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda").fill_(byte)
    torch.cuda.synchronize()


def make_x(shape, qblock, case, dtype=torch.float32):
    x = torch.randn(shape, device="cuda") * 3
    x2 = x.view(-1, shape[-1])
    if case == "outlier":
        x2[:qblock, :qblock] *= 1e3                  # block (0, 0) scaled by 1e3
    elif case == "zero":
        x2[-qblock:, -qblock:] = 0                   # the last block is all zero
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", CASES)
def test_rtn_bit_exact_with_transpose(shape, qblock, case, dtype):
    torch.manual_seed(0)
    x = make_x(shape, qblock, case, dtype)
    ref = quantize_ref(x.cpu(), qblock)
    rt = transpose_ref(ref)
    for byte, with_t in ((0x55, False), (0xFF, True)):
        poison(byte)
        out = quantize_cuda(x, qblock, with_t=with_t)
        t = out[0] if with_t else out
        assert t.shape == x.shape and t.q.shape == ref.q.shape
        assert torch.equal(t.q.cpu(), ref.q), f"{(t.q.cpu() != ref.q).sum()} int8 values differ"
        assert torch.equal(t.s.cpu(), ref.s), "scales differ"
        if with_t:
            assert out[1].shape == rt.shape
            assert torch.equal(out[1].q.cpu(), rt.q) and torch.equal(out[1].s.cpu(), rt.s)
    poison(0x33)
    tt = quantize_cuda(x, qblock, transposed=True)      # the transposed layout alone
    assert tt.shape == rt.shape and tt.q.shape == rt.q.shape
    assert torch.equal(tt.q.cpu(), rt.q) and torch.equal(tt.s.cpu(), rt.s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("shape", [(1, 128), (3, 37, 256), (300, 384)])
def test_quantize_cat_is_quantize_of_the_concatenation(shape, qblock, dtype):
    """quantize_cat reads its parts where they lie and writes what quantize(torch.cat) writes,
    both layouts, bit for bit: round to nearest, and stochastic rounding from the same seed
    (its draws are keyed by the element of the whole); 2 or 3 parts; outputs start poisoned."""
    torch.manual_seed(qblock)
    parts = [make_x(shape, qblock, case, dtype) for case in CASES]
    for n in (2, 3):
        whole = torch.cat(parts[:n], -1)
        for stochastic in (False, True):
            outs = []
            for run in (lambda g: quantize(whole, qblock, stochastic, g, with_t=True),
                        lambda g: quantize_cat(parts[:n], qblock, stochastic, g, with_t=True)):
                poison(0x80)
                g = torch.Generator()
                g.manual_seed(7)
                outs.append(run(g))
            (a, at), (b, bt) = outs
            assert b.shape == a.shape and bt.shape == at.shape
            for x, y in ((a, b), (at, bt)):
                assert torch.equal(x.q, y.q) and torch.equal(x.s, y.s), (n, stochastic)


def test_rtn_bit_exact_at_bench_size():
    torch.manual_seed(1)
    x = torch.randn(4096, 2048, device="cuda")
    x[100:130, 7:9] *= 1e3
    t, ref = quantize(x), quantize_ref(x.cpu())
    assert torch.equal(t.q.cpu(), ref.q) and torch.equal(t.s.cpu(), ref.s)


@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("shape", [(1, 1), (33, 65), (3, 37, 70), (300, 1000)])
def test_dequantize_and_transpose_exact(shape, qblock):
    torch.manual_seed(2)
    t = quantize(make_x(shape, qblock, "outlier"), qblock)
    poison(0xFF)                                     # NaN floats
    assert torch.equal(dequantize_cuda(t).cpu(), dequantize_ref(t).cpu())
    poison(0x55)
    tt, rt = transpose_cuda(t), transpose_ref(t)
    assert tt.shape == rt.shape
    assert torch.equal(tt.q, rt.q) and torch.equal(tt.s, rt.s)
    assert torch.equal(dequantize(transpose(tt)), dequantize(t).reshape(-1, shape[-1]))


@pytest.mark.parametrize("qblock", [32, 128])
def test_stochastic_rounding_is_unbiased_on_gpu(qblock):
    torch.manual_seed(3)
    x = torch.randn(130, 200, device="cuda")
    x[0, 0] = 10.0
    n = 1000
    s = expand_blocks(quantize(x, qblock).s, qblock)[:130, :200]
    acc = torch.zeros_like(x)
    for _ in range(n):
        t = quantize(x, qblock, stochastic=True)
        d = dequantize(t)
        # every draw is one of the two levels around x (q differs from x/s by less than 1)
        assert ((d - x).abs() < s * (1 + 1e-5) + 1e-30).all()
        acc += d
    mean = acc / n
    z = ((mean - x) / (s / (2 * n ** 0.5))).abs()   # in standard errors of the mean
    assert z.max() < 6.0, f"max |bias| {z.max():.2f} standard errors"
    rtn_err = (dequantize(quantize(x, qblock)) - x).abs().mean()
    assert (mean - x).abs().mean() < rtn_err / 4


def test_stochastic_rounding_seeding():
    x = torch.randn(64, 96, device="cuda")
    torch.manual_seed(7)
    a = quantize(x, stochastic=True)
    b = quantize(x, stochastic=True)
    torch.manual_seed(7)
    c = quantize(x, stochastic=True)
    assert torch.equal(a.q, c.q), "torch.manual_seed must make stochastic rounding reproducible"
    assert not torch.equal(a.q, b.q), "two calls must draw different random numbers"
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(quantize(x, stochastic=True, generator=g1).q,
                       quantize(x, stochastic=True, generator=g2).q)
    # the same draws in every layout (the model's gradients come with_t; the key is the position)
    g1.manual_seed(2), g2.manual_seed(2)
    t, tt = quantize(x, stochastic=True, generator=g1, with_t=True)
    assert torch.equal(t.q, quantize(x, stochastic=True, generator=g2).q)
    assert torch.equal(tt.q, transpose(t).q) and torch.equal(tt.s, transpose(t).s)
    # identical blocks get different random numbers (the counter includes the position)
    y = x[:32, :32].repeat(2, 3).contiguous()
    t = quantize(y, stochastic=True)
    assert not torch.equal(t.q[:32, :32], t.q[32:, 32:64])


def test_zero_input_and_one_row():
    z = quantize(torch.zeros(5, 7, device="cuda"), stochastic=True)
    assert z.s.abs().sum() == 0 and z.q.abs().sum() == 0
    x = torch.randn(1, 100, device="cuda")
    assert torch.equal(quantize(x).q.cpu(), quantize_ref(x.cpu()).q)


def test_nonfinite_input(monkeypatch):
    x = torch.randn(64, 64, device="cuda")
    x[3, 40] = float("nan")
    qc.nonfinite_flag(x.device).zero_()              # clear anything left by earlier tests
    t = quantize(x)                                  # default: no sync, NaN scale for the block
    assert torch.isnan(t.s[0, 1]) and torch.isfinite(t.s[:, 0]).all()
    with pytest.raises(ValueError, match="NaN or Inf"):
        qc.check_nonfinite()
    monkeypatch.setattr(qc, "STRICT", True)
    x[3, 40] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(x)
    quantize(torch.randn(64, 64, device="cuda"))     # the flag was reset: no raise


def test_bad_inputs_raise_clearly():
    x = torch.randn(64, 64, device="cuda")
    with pytest.raises(AssertionError, match="CUDA tensors only"):
        quantize_cuda(x.cpu())
    with pytest.raises(AssertionError, match="must be one of"):
        quantize_cuda(x.half())
    with pytest.raises(AssertionError, match="contiguous"):
        quantize_cuda(x.t())
    with pytest.raises(AssertionError, match="QTensor"):
        dequantize_cuda(x)
    with pytest.raises(AssertionError, match="CUDA tensors only"):
        transpose_cuda(quantize_ref(x.cpu()))
    # the public names take what the reference takes (fp16, non-contiguous) and agree with it
    assert torch.equal(quantize(x.t()).q.cpu(), quantize_ref(x.t().cpu()).q)
    assert torch.equal(quantize(x.half()).q.cpu(), quantize_ref(x.half().cpu()).q)
