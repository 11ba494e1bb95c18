"""The tensor-core GEMM kernel (int8_gemm.gemm_cuda) against the reference, on a CUDA device."""
import functools
import math

import pytest
import torch

import int8_gemm
import int8_gemm_sm90_plane
from fallback import quantize_fallback
from int8_gemm import gemm, gemm_cuda, gemm_planes, gemm_ref, plane_kernel
from int8_linear import Int8Linear, linear_dgrad, linear_wgrad
from quantize import QTensor, dequantize, pad_2d, quantize, quantize_ref
from tolerances import bound, magic_slack

pytestmark = pytest.mark.gpu
DEV = "cuda"


@pytest.fixture(autouse=True, params=["mma", "wgmma", "wgmma_exact", "wgmma_pp"])
def kernel(request, monkeypatch):
    """Every test runs on every kernel: gemm_cuda's kernel='auto' (and so gemm() and the layer)
    resolves to the parameter. The wgmma kernels need sm_90."""
    if request.param != "mma" and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the wgmma kernel needs an sm_90 GPU")
    monkeypatch.setattr(int8_gemm, "_auto_kernel", lambda device_index: request.param)
    return request.param


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every kernel output starts as NaN (floats) or -128 (int8, a value quantize never makes),
    so an element the kernel fails to write fails the comparisons."""
    def empty(shape, dtype, device):
        fill = -128 if dtype == torch.int8 else float("nan")
        return torch.full(shape, fill, dtype=dtype, device=device)
    monkeypatch.setattr(int8_gemm, "_empty", empty)


def int_operand(rows, cols, qblock):
    """Random int8 values as a CUDA QTensor with unit scales."""
    v = torch.randint(-127, 128, (rows, cols)).float()
    q = pad_2d(v, qblock).to(torch.int8)
    s = torch.ones(q.shape[0] // qblock, q.shape[1] // qblock)
    return v, QTensor(q.to(DEV), s.to(DEV), torch.Size((rows, cols)), qblock)


def operand(rows, cols, qblock, outlier=True, zero_block=True):
    """A random float tensor quantized on the GPU, with a 1e3x block and an all-zero block."""
    x = torch.randn(rows, cols, device=DEV)
    if outlier:
        x[:qblock, :qblock] *= 1e3
    if zero_block and rows > qblock and cols > qblock:
        x[-1:, -1:] = 0
        x[qblock:2 * qblock, qblock:2 * qblock] = 0
    return quantize(x, qblock)


@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("M,K,N", [(1, 32, 32), (70, 100, 50), (130, 256, 96), (5, 300, 7),
                                   (1000, 512, 384), (257, 96, 260)])
def test_unit_scales_exact(M, K, N, qblock):
    """Integer path: with unit scales the kernel is the float64 product bit for bit
    (K <= 512 keeps every fp32 partial sum below 2^24)."""
    torch.manual_seed(M * 7 + K + N)
    a, ta = int_operand(M, K, qblock)
    b, tb = int_operand(N, K, qblock)
    c = gemm_cuda(ta, tb)
    assert c.shape == (M, N) and c.dtype == torch.float32
    assert torch.equal(c.cpu().double(), a.double() @ b.double().t())


@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("M,K,N", [(1, 64, 96), (33, 160, 224), (200, 1024, 352),
                                   (16384, 256, 384), (2048, 2080, 1056)])
def test_random_scales_match_reference(M, K, N, qblock, kernel):
    torch.manual_seed(M + K + N + qblock)
    ta, tb = operand(M, K, qblock), operand(N, K, qblock)
    c = gemm_cuda(ta, tb)
    ref = gemm_ref(ta, tb)
    # both accumulate K/QB rescaled exact partial sums in fp32, in a different rounding order
    # (FFMA vs multiply-then-add): a few fp32 ulps of sum |a||b|
    err = (c.double() - ref.double()).abs()
    tol = 2e-6 * bound(ta, tb)[:M, :N] + magic_slack(ta, tb, kernel)
    assert torch.isfinite(c).all()
    assert (err <= tol + 1e-30).all(), f"max err/tol {(err / (tol + 1e-30)).max():.3g}"
    assert torch.equal(c, gemm_cuda(ta, tb)), "not deterministic: a race?"


@pytest.mark.parametrize("qblock", [32, 64, 128])
def test_float_epilogues(qblock):
    torch.manual_seed(qblock)
    ta, tb = operand(300, 192, qblock), operand(190, 192, qblock)
    c = gemm_cuda(ta, tb)
    cb = gemm_cuda(ta, tb, out_dtype=torch.bfloat16, shape=(3, 100, 190))
    assert cb.dtype == torch.bfloat16 and cb.shape == (3, 100, 190)
    assert torch.equal(cb.reshape(300, 190), c.to(torch.bfloat16))   # same sums, RNE to bf16
    base = torch.randn(300, 190, device=DEV)
    acc = base.clone()
    out = gemm_cuda(ta, tb, accumulate=acc)
    assert out is acc and torch.equal(acc, base + c)
    tb_odd = operand(37, 192, qblock)
    c_odd = gemm_cuda(ta, tb_odd)                                       # odd N: scalar stores
    assert torch.isfinite(c_odd).all() and c_odd.shape == (300, 37)
    # residual: the same fp32 add into a new tensor of the residual's shape; the residual kept
    res = torch.randn(3, 100, 190, device=DEV)
    keep = res.clone()
    out = gemm_cuda(ta, tb, residual=res)
    assert out.shape == res.shape and out.data_ptr() != res.data_ptr()
    assert torch.equal(out, res + c.reshape(res.shape)) and torch.equal(res, keep)
    res_odd = torch.randn(300, 37, device=DEV)                          # scalar loads and stores
    assert torch.equal(gemm_cuda(ta, tb_odd, residual=res_odd), res_odd + c_odd)


@pytest.mark.parametrize("qblock", [32, 128])
@pytest.mark.parametrize("plane", [False, True])
def test_split_k_accumulates_in_a_fixed_order(qblock, plane, kernel, monkeypatch):
    """Accumulating into a float output of few tiles with a long K (a weight gradient into
    .grad), each tile runs in K splits that add into C one after another
    (int8_gemm_sm90.split_k): base + the unsplit sums to fp32 rounding, the same bits at every
    run; with a fallback plane on B (the wgrad's activation), whose stages go with split 0. A
    fresh output is not split: the unsplit kernel's sums, as the other epilogues write them."""
    if kernel == "mma":
        pytest.skip("split-K is the wgmma kernel's")
    import int8_gemm_sm90 as sm90
    torch.manual_seed(qblock + plane)
    M, K, N = 384, 8192, 200                 # 3 x 2 tiles, 64 stages of 128 of K
    ta = operand(M, K, qblock)
    x = torch.randn(N, K, device=DEV)
    tb = quantize_fallback(x, qblock, "topk", 0.05)[0] if plane else quantize(x, qblock)
    launch, chosen = sm90.launch_float, []

    def spy(a, b, c, M, N, add=None, **kw):          # the splits each launch runs with
        fits = sm90.out_mode(c, add, N) == sm90.OUT_ACCUMULATE
        chosen.append(sm90._splits(a, b, kw.get("exact", False), kw.get("source")) if fits else 1)
        return launch(a, b, c, M, N, add, **kw)
    monkeypatch.setattr(sm90, "launch_float", spy)
    c = gemm_cuda(ta, tb)
    base = torch.randn(M, N, device=DEV)
    acc, acc2 = base.clone(), base.clone()
    gemm_cuda(ta, tb, accumulate=acc)
    gemm_cuda(ta, tb, accumulate=acc2)
    assert chosen[0] == 1 and chosen[1] > 1
    monkeypatch.setattr(sm90, "launch_float", functools.partial(launch, splits=1))
    assert torch.equal(gemm_cuda(ta, tb), c)
    whole = base.clone()
    gemm_cuda(ta, tb, accumulate=whole)
    assert torch.equal(whole, base + c)
    assert torch.equal(acc, acc2), "split-K added in another order"
    err = (acc.double() - whole.double()).abs()
    tol = 4e-6 * (bound(ta, tb)[:M, :N] + base.abs().double()) + 2 * magic_slack(ta, tb, kernel)
    assert (err <= tol + 1e-30).all(), f"max err/tol {(err / (tol + 1e-30)).max():.3g}"


@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("M,K,N", [(2100, 256, 1096), (300, 192, 40), (1, 64, 8)])
def test_tma_float_epilogues_match_register_stores(M, K, N, qblock, kernel, monkeypatch):
    """The wgmma float kernel writes C through shared memory and TMA where rows are 16-byte
    aligned (int8_gemm_sm90.out_mode): stores of fp32 and bf16, the accumulate add, the residual
    loaded by TMA. Bit for bit what the register stores write, on tiles cut by M and N (some of a
    tile's boxes wholly past N) and with more tiles than SMs (the C tile and its barrier reused)."""
    if kernel == "mma":
        pytest.skip("the mma kernel stores from the registers only")
    import int8_gemm_sm90 as sm90
    torch.manual_seed(M + N + qblock)
    ta, tb = operand(M, K, qblock), operand(N, K, qblock)
    base, res = torch.randn(M, N, device=DEV), torch.randn(M, N, device=DEV)
    results, launch = {}, sm90.launch_float
    for tma_out in (True, False):
        monkeypatch.setattr(sm90, "launch_float", functools.partial(launch, tma_out=tma_out))
        acc = base.clone()
        assert sm90.out_mode(acc, acc, N, tma_out) == (sm90.OUT_ACCUMULATE if tma_out
                                                       else sm90.OUT_REGS)
        results[tma_out] = (gemm_cuda(ta, tb), gemm_cuda(ta, tb, out_dtype=torch.bfloat16),
                            gemm_cuda(ta, tb, accumulate=acc), gemm_cuda(ta, tb, residual=res))
    for name, t, r in zip(("fp32", "bf16", "accumulate", "residual"), *results.values()):
        assert torch.equal(t, r), f"{name}: TMA and register stores differ"
    assert torch.equal(results[True][2], base + results[True][0])


@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("M,K,N", [(1, 64, 64), (300, 192, 190), (300, 512, 190), (1030, 640, 1056)])
def test_int8_rtn_epilogue(M, K, N, qblock, kernel):
    torch.manual_seed(M + qblock)
    ta, tb = operand(M, K, qblock), operand(N, K, qblock)
    y = gemm_cuda(ta, tb, out="int8", shape=(M, N))
    c = gemm_cuda(ta, tb)
    # the kernel re-quantizes exactly the fp32 sums its float epilogue writes: q bit exact; s
    # within 1 ulp (torch on CUDA divides by the scalar 127 as a multiply by its reciprocal,
    # the kernel divides correctly rounded, as quantize.py documents)
    mine = quantize_ref(c, qblock)
    assert torch.equal(y.q, mine.q)
    assert torch.allclose(y.s, mine.s, rtol=2.5e-7, atol=0)
    # against the reference GEMM's int8 output: its fp32 sums differ in the last bits, so a
    # value that lands within a few ulps of a rounding boundary may round the other way (more
    # often after the magic-number promotion, whose sums differ by ~1e-5 relative: < 1%)
    ref = gemm_ref(ta, tb, out="int8")
    dq = (y.q.int() - ref.q.int()).abs()
    flips = 1e-2 if kernel == "wgmma" else 1e-3
    assert dq.max() <= 1 and (dq > 0).float().mean() < flips, f"{(dq > 0).sum()} differ"
    assert torch.allclose(y.s, ref.s, rtol=1e-5 if kernel != "wgmma" else 2e-4, atol=0)


@pytest.mark.parametrize("qblock", [32, 64, 128])
def test_int8_sr_epilogue(qblock):
    torch.manual_seed(qblock)
    M, K, N = 96, 256, 160
    ta = operand(M, K, qblock, outlier=False, zero_block=False)
    tb = operand(N, K, qblock, outlier=False, zero_block=False)
    c = gemm_cuda(ta, tb)
    rtn = gemm_cuda(ta, tb, out="int8")
    step = rtn.s.repeat_interleave(qblock, 0).repeat_interleave(qblock, 1)[:M, :N]
    torch.manual_seed(5)
    y1 = gemm_cuda(ta, tb, out="int8_sr")
    torch.manual_seed(5)
    y2 = gemm_cuda(ta, tb, out="int8_sr")
    assert torch.equal(y1.q, y2.q), "torch.manual_seed must make the rounding reproducible"
    assert torch.equal(y1.s, rtn.s)                            # same block absmax
    n, total = 256, torch.zeros(M, N, dtype=torch.float64, device=DEV)
    for _ in range(n):
        y = gemm_cuda(ta, tb, out="int8_sr")
        d = dequantize(y)
        assert ((d - c).abs() < step * (1 + 1e-5)).all()      # within one step
        total += d.double()
    assert not torch.equal(y.q, y1.q)
    mean_err = (total / n - c.double()) / step.double()
    # each rounding has std <= 1/2 step, so the mean of n draws is within 5 * 0.5/sqrt(n) steps
    assert mean_err.abs().max() < 5 * 0.5 / n ** 0.5, mean_err.abs().max().item()
    assert abs(mean_err.mean().item()) < 0.01                  # and no bias overall


def test_dispatch_and_layouts():
    torch.manual_seed(3)
    x, w, dy = (torch.randn(2, 45, 64, device=DEV), torch.randn(96, 64, device=DEV),
                torch.randn(2, 45, 96, device=DEV))
    tx, tw, tdy = quantize(x), quantize(w), quantize(dy)
    dx = linear_dgrad(tdy, tw)
    assert dx.shape == x.shape and dx.is_cuda
    assert torch.allclose(dx, gemm_ref(tdy, tw.t(), shape=x.shape), rtol=1e-5, atol=1e-4)
    dw = linear_wgrad(tdy, tx)
    assert torch.allclose(dw, gemm_ref(tdy.t(), tx.t()), rtol=1e-5, atol=1e-4)


def test_errors():
    ta, tb = operand(64, 64, 32), operand(32, 64, 32)
    cpu = QTensor(ta.q.cpu(), ta.s.cpu(), ta.shape, 32)
    with pytest.raises(ValueError, match="CUDA"):
        gemm_cuda(cpu, QTensor(tb.q.cpu(), tb.s.cpu(), tb.shape, 32))
    with pytest.raises(TypeError, match="int8"):
        gemm_cuda(QTensor(ta.q.short(), ta.s, ta.shape, 32), tb)
    with pytest.raises(ValueError, match="inner dimensions"):
        gemm_cuda(ta, operand(32, 96, 32))
    with pytest.raises(ValueError, match="contiguous"):
        gemm_cuda(QTensor(ta.q.t(), ta.s.t(), ta.shape, 32), tb)
    with pytest.raises(ValueError, match="one scale per block"):
        gemm_cuda(QTensor(ta.q, ta.s[:1], ta.shape, 32), tb)
    with pytest.raises(ValueError, match="accumulate"):
        gemm_cuda(ta, tb, accumulate=torch.zeros(3, device=DEV))
    with pytest.raises(ValueError, match="residual"):
        gemm_cuda(ta, tb, residual=torch.zeros(64, 32, device=DEV, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="contiguous"):
        gemm_cuda(ta, tb, residual=torch.zeros(32, 64, device=DEV).t())
    with pytest.raises(ValueError, match="not both"):
        gemm_cuda(ta, tb, residual=torch.zeros(64, 32, device=DEV),
                  accumulate=torch.zeros(64, 32, device=DEV))


@pytest.mark.parametrize("qblock", [32, 128])
def test_int8_linear_cuda_matches_reference(qblock):
    torch.manual_seed(11)
    lin = Int8Linear(192, 160, qblock=qblock).to(DEV)
    x = torch.randn(4, 33, 192, device=DEV, requires_grad=True)
    dout = torch.randn(4, 33, 160, device=DEV)
    # forward: the same quantized operands through the reference on the CPU
    y = lin(x)
    tx, tw = quantize(x.detach(), qblock), quantize(lin.weight.detach(), qblock)
    y_ref = gemm_ref(QTensor(tx.q.cpu(), tx.s.cpu(), tx.shape, qblock),
                     QTensor(tw.q.cpu(), tw.s.cpu(), tw.shape, qblock)).reshape(y.shape)
    y_ref = y_ref + lin.bias.detach().cpu()
    assert torch.allclose(y.detach().cpu(), y_ref, rtol=1e-5, atol=1e-4)
    # backward: the same stochastic draw of dY, then the reference GEMMs
    torch.manual_seed(99)
    (y * dout).sum().backward()
    torch.manual_seed(99)
    tdy = quantize(dout, qblock, stochastic=True)
    assert torch.allclose(x.grad, gemm_ref(tdy, tw.t(), shape=x.shape), rtol=1e-5, atol=1e-4)
    assert torch.allclose(lin.weight.grad, gemm_ref(tdy.t(), tx.t()), rtol=1e-5, atol=1e-4)
    # and the whole layer stays close to the float layer
    ref = torch.nn.functional.linear(x.detach(), lin.weight.detach(), lin.bias.detach())
    assert ((y.detach() - ref).norm() / ref.norm()).item() < 2e-2


def fallback_operand(rows, cols, qblock, threshold=2.5, seed=0):
    """GLU-like activations (sparse 300-600x outliers in ~5% of blocks) with a second plane."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    mask = torch.rand(rows, cols, generator=g) < 0.05 / qblock ** 2
    x = torch.where(mask, x.sign() * 300 * (1 + torch.rand(rows, cols, generator=g)), x)
    x[rows // 2, cols // 3] = 500.0                  # at least one, even with few big blocks
    t, frac = quantize_fallback(x.to(DEV), qblock, "median", threshold)
    return t, frac


@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("M,K,N", [(300, 256, 190), (1030, 640, 1056), (64, 2080, 96)])
def test_fallback_gemm_matches_plane_sum(M, K, N, qblock, kernel):
    """gemm() with a fallback plane on A (forward layout) or on B (wgrad layout), fused into one
    kernel (wgmma, or mma.sync built with its plane stages), against the reference."""
    ta, frac = fallback_operand(M, K, qblock, seed=M + qblock)
    assert 0 < frac < 0.5
    tb = operand(N, K, qblock, outlier=False)
    for a, b in ((ta, tb), (tb, ta)):                   # plane on A, then on B
        check_plane_gemm(a, b, kernel)
    res = torch.randn(M, N, device=DEV)                 # the residual epilogue with a plane
    assert torch.equal(gemm(ta, tb, residual=res), res + gemm(ta, tb))
    # the int8 epilogue re-quantizes the same sums the float one writes (its 127 / absmax is
    # correctly rounded, torch's a reciprocal times 127: a value exactly at a rounding boundary
    # may round the other way, as in test_int8_rtn_epilogue)
    y = gemm(ta, tb, out="int8")
    mine = quantize_ref(gemm(ta, tb), qblock)
    dq = (y.q.int() - mine.q.int()).abs()
    assert dq.max() <= 1 and (dq > 0).float().mean() < 1e-4, f"{(dq > 0).sum()} differ"
    assert torch.allclose(y.s, mine.s, rtol=2.5e-7, atol=0)


def random_plane(t, density, seed, shuffle=True, spare=3):
    """t with a second plane on a random `density` of its blocks (at least one): random q2 / s2,
    the slots in a random order with `spare` unused blocks in q2 (the kernel must follow the
    slots, not assume fallback.py's row-major order)."""
    g = torch.Generator().manual_seed(seed)
    QB, (Rb, Cb) = t.qblock, t.s.shape
    flags = torch.rand(Rb, Cb, generator=g) < density
    flags[Rb // 2, Cb // 3] = True
    n = int(flags.sum())
    slots = torch.randperm(n + spare, generator=g)[:n] if shuffle else torch.arange(n)
    slot = torch.full((Rb, Cb), -1, dtype=torch.int32)
    slot[flags] = slots.int()
    q2 = torch.randint(-127, 128, (n + spare, QB, QB), generator=g).to(torch.int8)
    s2 = torch.rand(n + spare, generator=g) * t.s.max().item() / 127
    return QTensor(t.q, t.s, t.shape, QB, slot.to(DEV), q2.to(DEV), s2.to(DEV))


def check_plane_gemm(a, b, kernel):
    """gemm() of operands with a plane against the reference sum over plane pairs. The plane's
    K-blocks promote exactly, the plain ones as the kernel gemm() picks does (plane_kernel: the
    magic-number promotion for a small plane on 'wgmma', so its slack over their scales)."""
    c = gemm(a, b)
    ref = gemm_planes(a, b, "float", torch.float32, None, None, None, gemm_ref)
    err = (c.double() - ref.double()).abs()
    tol = 2e-6 * bound(a, b)
    tol += magic_slack(a, b, plane_kernel(a, b, kernel))     # (the plain K-blocks' scales)
    assert (err <= tol + 1e-30).all(), f"max err/tol {(err / (tol + 1e-30)).max():.3g}"
    return c


@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("M,K,N", [(200, 416, 136), (1000, 1184, 72), (33, 96, 300)])
@pytest.mark.parametrize("density", [0.02, 0.3, 1.0])
def test_fallback_gemm_random_planes(M, K, N, qblock, density, kernel):
    """The fused kernel reads the compact plane (slot -> q2 block) itself: random flag patterns
    and slot orders, planes on A and on B, tiles and K-stages cut by M, N, K, all block sizes."""
    ta = random_plane(operand(M, K, qblock), density, seed=M + K + qblock)
    tb = operand(N, K, qblock, outlier=False)
    check_plane_gemm(ta, tb, kernel)
    check_plane_gemm(tb, ta, kernel)


@pytest.mark.parametrize("qblock", [32, 128])
def test_fallback_gemm_planes_in_runs_of_rows(qblock, kernel):
    """Flags in a few 128-row tiles alone (as at a sequence's first tokens): the wgmma kernel's
    CTAs take those tiles first (plane_lists' order), the rest after; more tiles than CTAs, so
    that CTAs take several. Plane on A and on B."""
    M, K, N = 4096, 512, 1280                            # 32 x 10 tiles of 128 x 128
    t = operand(M, K, qblock)
    per = 128 // qblock
    dense = random_plane(t, 1.0, seed=11)
    keep = torch.zeros(M // qblock, dtype=torch.bool)
    for tile in (0, 9, 16, 31):                          # whole tiles, unordered runs
        keep[tile * per:(tile + 1) * per] = True
    slot = torch.where(keep.to(DEV)[:, None], dense.slot, -1)
    ta = QTensor(t.q, t.s, t.shape, qblock, slot, dense.q2, dense.s2)
    tb = operand(N, K, qblock, outlier=False)
    check_plane_gemm(ta, tb, kernel)
    check_plane_gemm(tb, ta, kernel)


@pytest.mark.parametrize("qblock", [32, 128])
def test_fallback_plane_layouts(qblock, kernel, monkeypatch):
    """The plane on A with K-block lists per tile and per consumer half (wgmma; mma.sync lists per
    tile whatever _halves says). A plane whose q2 / s2
    / slot are not contiguous, or whose q2 is not 16-byte aligned, gives the contiguous plane's
    result; a slot past q2 reads as no plane (never out of bounds); a plane that does not match
    its operand's block grid is refused."""
    M, K, N = 160, 320, 96
    t = random_plane(operand(M, K, qblock), 0.2, seed=5, spare=0)
    tb = operand(N, K, qblock, outlier=False)
    want = check_plane_gemm(t, tb, kernel)
    for halves in (1, 2) if qblock <= 64 else (1,):      # K-block lists per tile, per half
        with monkeypatch.context() as m:
            m.setattr(int8_gemm_sm90_plane, "_halves", lambda plane, on_a: halves if on_a else 1)
            check_plane_gemm(t, tb, kernel)
    n, QB = t.q2.shape[0], qblock
    q2_t = t.q2.transpose(1, 2).contiguous().transpose(1, 2)               # strided view
    s2_s = torch.stack([t.s2, t.s2], 1)[:, 0]                              # stride 2
    slot_t = t.slot.t().contiguous().t()
    raw = torch.empty(n * QB * QB + 1, dtype=torch.int8, device=DEV)
    q2_odd = raw[1:].view(n, QB, QB)                                       # 1 byte off
    q2_odd.copy_(t.q2)
    for slot, q2, s2 in ((slot_t, q2_t, s2_s), (t.slot, q2_odd, t.s2)):
        assert torch.equal(gemm(QTensor(t.q, t.s, t.shape, QB, slot, q2, s2), tb), want)
    bad, plain_slot = t.slot.clone(), t.slot.clone()
    i = (t.slot.view(-1) >= 0).nonzero()[0, 0]
    bad.view(-1)[i], plain_slot.view(-1)[i] = n + 7, -1
    assert torch.equal(gemm(QTensor(t.q, t.s, t.shape, QB, bad, t.q2, t.s2), tb),
                       gemm(QTensor(t.q, t.s, t.shape, QB, plain_slot, t.q2, t.s2), tb))
    with pytest.raises(ValueError, match="slot"):
        gemm(QTensor(t.q, t.s, t.shape, QB, t.slot[:1], t.q2, t.s2), tb)
    with pytest.raises(ValueError, match="q2"):
        gemm(QTensor(t.q, t.s, t.shape, QB, t.slot, t.q2.view(n, QB * QB, 1), t.s2), tb)
    with pytest.raises(ValueError, match="s2"):
        gemm(QTensor(t.q, t.s, t.shape, QB, t.slot, t.q2, t.s2.double()), tb)


@pytest.mark.parametrize("qblock", [32, 64, 128])
def test_fallback_gemm_limits(qblock, kernel):
    """Threshold inf: no plane, exactly the plain GEMM. Threshold 0: every nonzero block has a
    plane, and the GEMM matches the float product of the inputs to ~1e-4 (on 'wgmma' too: a
    plane that large gets the exact promotion, plane_kernel)."""
    M, K, N = 256, 512, 192
    plain_x = fallback_operand(M, K, qblock, threshold=math.inf)[0]
    tb = operand(N, K, qblock, outlier=False)
    assert torch.equal(gemm(plain_x, tb), gemm_cuda(QTensor(plain_x.q, plain_x.s, plain_x.shape,
                                                            qblock), tb))
    t0, frac = fallback_operand(M, K, qblock, threshold=0.0)
    assert frac == 1.0
    x = dequantize(t0)                              # ~15-bit values; compare to its float GEMM
    c = gemm(t0, tb)
    ref = x.double() @ dequantize(tb).double().t()
    assert plane_kernel(t0, tb, kernel) != "wgmma"
    assert ((c.double() - ref).norm() / ref.norm()).item() < 1e-5
