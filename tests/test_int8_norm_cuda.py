"""The CUDA kernels of int8_norm_cuda.py and int8_norm_bwd_cuda.py against the references of
int8_norm.py (GPU only).

Tolerances: the kernels sum rows in another order than torch, so mean and rstd differ by an ulp
or so (rstd: rtol 1e-5), and an int8 value may differ by one level where y or xhat sits within a
few ulp of a rounding boundary: |dq| <= 1 on at most 0.1% of the values, scales within 1e-5.
Backward: dx, dweight, dbias against the same formula in float64 on the same int8 inputs, to
fp32 accuracy (relative error of the norm <= 1e-5).
"""
import pytest
import torch

import quantize_cuda
from int8_norm import (layernorm_bwd, layernorm_bwd_ref, layernorm_fwd, layernorm_fwd_ref,
                       rmsnorm_bwd, rmsnorm_bwd_ref, rmsnorm_fwd, rmsnorm_fwd_ref)
from int8_norm_bwd_cuda import norm_bwd_cuda
import int8_norm_cuda
from int8_norm_cuda import fwd_config, norm_fwd_cuda
from quantize import QTensor, quantize

pytestmark = pytest.mark.gpu

CASES = ["randn", "outlier", "zero"]
SHAPES = [(1, 48), (3, 37, 70), (64, 96), (33, 2048), (100, 4096), (257, 1000)]


def poison(byte):
    torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda").fill_(byte)
    torch.cuda.synchronize()


def cpu(t):
    return QTensor(t.q.cpu(), t.s.cpu(), t.shape, t.qblock)


def make_x(shape, qblock, case):
    x = torch.randn(shape, device="cuda") * 2 + 0.5
    x2 = x.view(-1, shape[-1])
    if case == "outlier":
        x2[:qblock, :qblock] *= 1e3
    elif case == "zero":
        x2[:qblock] = 0                              # whole rows of zeros: rstd = 1/sqrt(eps)
    return x


def make_params(C, bias=True):
    w = torch.randn(C, device="cuda") * 0.5 + 1
    return w, (torch.randn(C, device="cuda") * 0.1 if bias else None)


def assert_close_q(t, ref):
    assert t.shape == ref.shape and t.q.shape == ref.q.shape and t.s.shape == ref.s.shape
    torch.testing.assert_close(t.s.cpu(), ref.s, rtol=1e-5, atol=1e-30)
    dq = (t.q.cpu().int() - ref.q.int()).abs()
    assert dq.max() <= 1 and dq.float().mean() <= 1e-3, \
        f"{(dq > 0).sum()} of {dq.numel()} int8 values differ (max {dq.max()})"


def rel(got, ref):
    got, ref = got.double().cpu(), ref.double().cpu()
    return ((got - ref).norm() / ref.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
@pytest.mark.parametrize("path", ["auto", "wide"])
def test_norm_fwd_bwd(shape, qblock, case, rms, path, monkeypatch):
    """path 'auto': the cluster kernel where the row fits one cluster, else the wide path;
    'wide': the wide path's two kernels at every width."""
    if path == "wide":
        if int8_norm_cuda.fwd_config(shape[-1], qblock) is None:
            pytest.skip("'auto' takes the wide path at this width already")
        monkeypatch.setattr(int8_norm_cuda, "fwd_config", lambda C, qblock: None)
    torch.manual_seed(0)
    C = shape[-1]
    x = make_x(shape, qblock, case)
    w, b = make_params(C, bias=not rms)
    poison(0x55)
    y_q, xhat_q, rstd = norm_fwd_cuda(x, w, b, qblock, 1e-6 if rms else 1e-5, not rms)
    if rms:
        ry, rx, rr = rmsnorm_fwd_ref(x.cpu(), w.cpu(), qblock)
    else:
        ry, rx, rr = layernorm_fwd_ref(x.cpu(), w.cpu(), b.cpu(), qblock)
    torch.testing.assert_close(rstd.cpu(), rr, rtol=1e-5, atol=0)
    assert_close_q(y_q, ry)
    assert_close_q(xhat_q, rx)
    if not rms:     # the row means, for a fallback plane's recompute: the outputs do not change
        mean = torch.full((x.numel() // C,), float("nan"), device="cuda")
        y2, x2, r2 = norm_fwd_cuda(x, w, b, qblock, 1e-5, True, mean=mean)
        assert all(torch.equal(u, v) for u, v in ((y2.q, y_q.q), (y2.s, y_q.s), (x2.q, xhat_q.q),
                                                   (r2, rstd)))
        x64 = x.view(-1, C).double()                  # fp32 sums: error ~ eps x row absmax
        err = (mean.double() - x64.mean(1)).abs() / x64.abs().amax(1).clamp_min(1e-30)
        assert err.max().item() < 1e-5

    dy = torch.randn(shape, device="cuda")
    if case == "outlier":
        dy.view(-1, C)[-qblock:, -qblock:] *= 1e3
    dy_q = quantize(dy, qblock, stochastic=True)
    poison(0xFF)
    dx, dw, db = norm_bwd_cuda(dy_q, xhat_q, rstd, w, not rms)
    if rms:
        (rdx, rdw), rdb = rmsnorm_bwd_ref(cpu(dy_q), cpu(xhat_q), rstd.cpu(), w.cpu()), None
    else:
        rdx, rdw, rdb = layernorm_bwd_ref(cpu(dy_q), cpu(xhat_q), rstd.cpu(), w.cpu())
    assert dx.shape == x.shape and dx.dtype == torch.float32 and dw.shape == (C,)
    for name, got, ref in (("dx", dx, rdx), ("dweight", dw, rdw), ("dbias", db, rdb)):
        if ref is not None:
            assert torch.isfinite(got).all(), f"{name} has non-finite values (unwritten?)"
            e = rel(got, ref)
            assert e < 1e-5, f"{name}: ||err||/||ref|| = {e:.3e}"
    assert (db is None) == rms
    # dres: the residual's gradient added on the way out, the same fp32 add as dx + dres
    dres = torch.randn(shape, device="cuda")
    poison(0x77)
    dx2, dw2, _ = norm_bwd_cuda(dy_q, xhat_q, rstd, w, not rms, dres)
    assert torch.equal(dx2, dx + dres) and torch.equal(dw2, dw)


@pytest.mark.parametrize("shape, qblock", [((8192, 1024), 32), ((2000, 4096), 32),
                                           ((4100, 2048), 64), ((3000, 1024), 128),
                                           ((4100, 6144), 128)])
@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
def test_many_strips_per_cluster(shape, qblock, rms):
    """Tall inputs: every cluster walks many strips, so the forward's ring slots, mailbox
    parities and barrier phases wrap around, and the backward's CTAs run many batches (the last
    case is too wide for a cluster: the wide path, with a grid of 33 x 48 CTAs)."""
    torch.manual_seed(2)
    C = shape[-1]
    x = make_x(shape, qblock, "outlier")
    w, b = make_params(C, bias=not rms)
    y_q, xhat_q, rstd = norm_fwd_cuda(x, w, b, qblock, 1e-6 if rms else 1e-5, not rms)
    ref = (rmsnorm_fwd_ref(x.cpu(), w.cpu(), qblock) if rms
           else layernorm_fwd_ref(x.cpu(), w.cpu(), b.cpu(), qblock))
    torch.testing.assert_close(rstd.cpu(), ref[2], rtol=1e-5, atol=0)
    assert_close_q(y_q, ref[0])
    assert_close_q(xhat_q, ref[1])
    dy_q = quantize(torch.randn(shape, device="cuda"), qblock, stochastic=True)
    dx, dw, db = norm_bwd_cuda(dy_q, xhat_q, rstd, w, not rms)
    if rms:
        (rdx, rdw), rdb = rmsnorm_bwd_ref(cpu(dy_q), cpu(xhat_q), rstd.cpu(), w.cpu()), None
    else:
        rdx, rdw, rdb = layernorm_bwd_ref(cpu(dy_q), cpu(xhat_q), rstd.cpu(), w.cpu())
    for name, got, want in (("dx", dx, rdx), ("dweight", dw, rdw), ("dbias", db, rdb)):
        if want is not None:
            assert rel(got, want) < 1e-5, f"{name}: ||err||/||ref|| = {rel(got, want):.3e}"


def test_public_names_dispatch():
    torch.manual_seed(1)
    x = make_x((4, 64, 768), 32, "randn")
    w, b = make_params(768)
    y_q, xhat_q, rstd = layernorm_fwd(x, w, b)
    assert_close_q(y_q, layernorm_fwd_ref(x.cpu(), w.cpu(), b.cpu())[0])
    dy_q = quantize(torch.randn_like(x), stochastic=True)
    dx, dw, db = layernorm_bwd(dy_q, xhat_q, rstd, w, has_bias=False)
    assert db is None and rel(dw, layernorm_bwd_ref(cpu(dy_q), cpu(xhat_q), rstd.cpu(),
                                                    w.cpu())[1]) < 1e-5
    y_q, xhat_q, rstd = rmsnorm_fwd(x, w)
    assert_close_q(y_q, rmsnorm_fwd_ref(x.cpu(), w.cpu())[0])
    dx, dw = rmsnorm_bwd(dy_q, xhat_q, rstd, w)
    assert rel(dx, rmsnorm_bwd_ref(cpu(dy_q), cpu(xhat_q), rstd.cpu(), w.cpu())[0]) < 1e-5
    # too wide for the cluster kernel at qblock 128: the wide path's kernels, as fast as a
    # copy of x would be, not the reference's dozen torch kernels
    assert fwd_config(4096, 128) is None
    wide = make_x((40, 4096), 128, "randn")
    w1 = torch.ones(4096, device="cuda")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        y_q, _, _ = rmsnorm_fwd(wide, w1, qblock=128)
        torch.cuda.synchronize()
    kernels = {e.key for e in prof.key_averages()       # (INT8_STRICT=1 adds a flag read)
               if e.device_type == torch.autograd.DeviceType.CUDA and not e.key.startswith("Memcpy")}
    assert kernels == {"norm_stats_kernel", "norm_quant_kernel"}, kernels
    assert_close_q(y_q, rmsnorm_fwd_ref(wide.cpu(), w1.cpu(), 128)[0])


def test_nonfinite_and_bad_input(monkeypatch):
    monkeypatch.setattr(quantize_cuda, "STRICT", False)    # (INT8_STRICT=1 would raise at once)
    x = make_x((64, 256), 32, "randn")
    w, b = make_params(256)
    quantize_cuda.nonfinite_flag(x.device).zero_()
    x[5, 3] = float("nan")
    y_q, _, _ = norm_fwd_cuda(x, w, b, 32, 1e-5, True)
    assert torch.isnan(y_q.s[0]).all() and torch.isfinite(y_q.s[1]).all()
    wide = torch.randn(256, 10240, device="cuda")           # the wide path
    wide[5, 3] = float("nan")
    y_q, _, _ = norm_fwd_cuda(wide, torch.ones(10240, device="cuda"), None, 128, 1e-6, False)
    assert torch.isnan(y_q.s[0]).all() and torch.isfinite(y_q.s[1]).all()
    monkeypatch.setattr(quantize_cuda, "STRICT", True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        layernorm_fwd(x, w, b)
    x[5, 3] = 0.0
    with pytest.raises(AssertionError, match="CUDA tensors only"):
        norm_fwd_cuda(x.cpu(), w, b, 32, 1e-5, True)
    with pytest.raises(AssertionError, match="must be one of"):
        norm_fwd_cuda(x.bfloat16(), w, b, 32, 1e-5, True)
    with pytest.raises(AssertionError, match="contiguous"):
        norm_fwd_cuda(x.t(), w, b, 32, 1e-5, True)
    with pytest.raises(AssertionError, match="weight must have shape"):
        norm_fwd_cuda(x, w[:100], b, 32, 1e-5, True)
    _, xhat_q, rstd = norm_fwd_cuda(x, w, b, 32, 1e-5, True)
    with pytest.raises(AssertionError, match="must match xhat_q"):
        norm_bwd_cuda(quantize(torch.randn(64, 200, device="cuda")), xhat_q, rstd, w, True)
    with pytest.raises(AssertionError, match="QTensor"):
        norm_bwd_cuda(torch.randn(64, 256, device="cuda"), xhat_q, rstd, w, True)
