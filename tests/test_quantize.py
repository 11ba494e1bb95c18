"""The block format: rounding bounds, transpose, padding, zero blocks, stochastic rounding, errors."""
import pytest
import torch

from quantize import QTensor, dequantize, expand_blocks, pad_2d, quantize, quantize_cat, transpose

SHAPES = [(1, 1), (1, 32), (32, 32), (33, 65), (70, 45), (3, 37, 70), (2, 3, 5, 40)]


def with_outlier_block(x, qblock):
    """Scale the first block by 1e3: a block-local outlier must not hurt other blocks."""
    x = x.clone()
    x2 = x.reshape(-1, x.shape[-1])
    x2[:qblock, :qblock] *= 1e3
    return x


@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("shape", SHAPES)
def test_rtn_error_at_most_half_a_step(shape, qblock):
    torch.manual_seed(0)
    x = with_outlier_block(torch.randn(shape), qblock)
    t = quantize(x, qblock)
    assert t.q.dtype == torch.int8 and t.s.dtype == torch.float32
    assert t.q.shape[0] % qblock == 0 and t.q.shape[1] % qblock == 0
    assert t.shape == x.shape
    err = (dequantize(t) - x).abs().reshape(-1, x.shape[-1])
    step = expand_blocks(t.s, qblock)[:err.shape[0], :err.shape[1]]
    # x * (127/amax) rounds once in fp32 before rint, so allow 1 fp32 ulp of the block max
    bound = step / 2 + step * 127 * 2 ** -23
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3g}"
    assert t.q.abs().max() <= 127


def test_rtn_is_round_half_to_even_and_hits_127():
    x = torch.zeros(32, 32)
    x[0, 0] = 127.0          # absmax 127: s = 1, values land on exact halves
    x[0, 1:5] = torch.tensor([0.5, 1.5, 2.5, -2.5])
    t = quantize(x)
    assert t.s[0, 0] == 1.0
    assert t.q[0, :5].tolist() == [127, 0, 2, 2, -2]


@pytest.mark.parametrize("shape", [(70, 45), (64, 128), (3, 37, 70)])
def test_transpose_commutes_with_dequantize_exactly(shape):
    torch.manual_seed(1)
    t = quantize(torch.randn(shape) * 5)
    x2 = dequantize(t).reshape(-1, shape[-1])
    assert torch.equal(dequantize(transpose(t)), x2.t())
    assert torch.equal(dequantize(t.t().t()), x2)


def test_padding_is_invisible():
    torch.manual_seed(2)
    x = torch.randn(33, 65)
    t = quantize(x)
    # the padded area holds zeros and does not change the scales of the blocks it touches
    assert t.q[33:].abs().sum() == 0 and t.q[:, 65:].abs().sum() == 0
    xp = pad_2d(x, 32)
    assert torch.equal(quantize(xp).s, t.s)
    assert torch.equal(quantize(xp).q, t.q)


def test_all_zero_blocks_have_zero_scale_and_values():
    x = torch.randn(64, 64)
    x[:32, 32:] = 0
    t = quantize(x)
    assert t.s[0, 1] == 0 and t.q[:32, 32:].abs().sum() == 0
    assert torch.isfinite(dequantize(t)).all()
    z = quantize(torch.zeros(5, 7), stochastic=True)
    assert z.s.abs().sum() == 0 and z.q.abs().sum() == 0


def test_stochastic_rounding_is_unbiased():
    torch.manual_seed(3)
    x = torch.randn(64, 64)
    x[0, 0] = 10.0                       # fix the scale of block (0, 0) well above the rest
    n = 2000
    g = torch.Generator().manual_seed(0)
    mean = sum(dequantize(quantize(x, stochastic=True, generator=g)) for _ in range(n)) / n
    s = expand_blocks(quantize(x).s, 32)
    # each sample's error is in (-s, s) with variance <= s^2/4: the mean's std <= s / (2 sqrt(n))
    z = ((mean - x) / (s / (2 * n ** 0.5))).abs()
    assert z.max() < 5.5, f"max |bias| in standard errors: {z.max():.2f}"
    rtn_err = (dequantize(quantize(x)) - x).abs().mean()
    assert (mean - x).abs().mean() < rtn_err / 4


def test_stochastic_rounding_stays_within_one_step():
    torch.manual_seed(4)
    x = torch.randn(40, 50)
    t = quantize(x, stochastic=True)
    step = expand_blocks(t.s, 32)[:40, :50]
    assert ((dequantize(t) - x).abs() < step * (1 + 1e-5)).all()
    assert t.q.abs().max() <= 127


def test_qtensor_roundtrip_through_saved_tensors():
    t = quantize(torch.randn(3, 40, 50))
    u = QTensor.from_tensors(t.tensors(), t.shape, t.qblock)
    assert torch.equal(dequantize(u), dequantize(t))
    assert t.nbytes() == t.q.numel() + 4 * t.s.numel()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(TypeError, match="floating-point"):
        quantize(torch.ones(4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="qblock must be one of"):
        quantize(torch.randn(4, 4), qblock=16)
    with pytest.raises(ValueError, match="non-empty"):
        quantize(torch.randn(0, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        quantize([[1.0, 2.0]])
    with pytest.raises(ValueError, match="pick one"):
        quantize(torch.randn(4, 4), with_t=True, transposed=True)


def test_quantize_cat_is_quantize_of_the_concatenation():
    torch.manual_seed(4)
    parts = [torch.randn(3, 40, 64) * (1 + i) for i in range(3)]
    t, tt = quantize_cat(parts, 32, with_t=True)
    ref = quantize(torch.cat(parts, -1), 32)
    assert t.shape == (3, 40, 192) and tt.shape == (192, 120)
    assert torch.equal(t.q, ref.q) and torch.equal(t.s, ref.s)
    assert torch.equal(tt.q, ref.q.t()) and torch.equal(tt.s, ref.s.t())


def test_transposed_layouts_are_the_transpose():
    torch.manual_seed(3)
    x = torch.randn(3, 37, 70)
    t = quantize(x)
    t2, tt = quantize(x, with_t=True)
    only = quantize(x, transposed=True)
    for u in (tt, only):
        assert u.shape == (70, 111)
        assert torch.equal(u.q, transpose(t).q) and torch.equal(u.s, transpose(t).s)
    assert torch.equal(t2.q, t.q) and torch.equal(t2.s, t.s)


def test_bf16_input_matches_fp32_of_same_values():
    torch.manual_seed(5)
    x = torch.randn(40, 70).bfloat16()
    a, b = quantize(x), quantize(x.float())
    assert torch.equal(a.q, b.q) and torch.equal(a.s, b.s)
