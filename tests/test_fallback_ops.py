"""The norm and activation ops with a fallback output: on CUDA the kernel writes the plain int8
output and attach_plane adds the second plane from its scales and a recompute of the flagged
blocks alone. On the CPU that path is run with the references standing in for the kernels and
must give the reference's planes bit for bit; on the GPU it must match the reference closely."""
import math

import pytest
import torch

import int8_gelu
import int8_gelu_cuda
import int8_norm
import int8_norm_cuda
from fallback import flagged_fraction, scale_flags
from int8_gelu import gelu_fwd, gelu_fwd_ref, swiglu_fwd, swiglu_fwd_ref
from int8_norm import layernorm_fwd, layernorm_fwd_ref, rmsnorm_fwd, rmsnorm_fwd_ref
from quantize import dequantize, quantize


def outliers(rows, cols, seed, scale=1.0):
    """Gaussian with sparse 50-300x outliers: some blocks get flagged, most do not."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * scale
    mask = torch.rand(rows, cols, generator=g) < 0.0005
    return torch.where(mask, x * (50 + 250 * torch.rand(rows, cols, generator=g)), x)


def same_planes(a, b):
    for name in ("q", "s", "slot", "q2", "s2"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.fixture
def kernels_on_cpu(monkeypatch):
    """Route the public ops through their CUDA branch with the references as the 'kernels'."""
    monkeypatch.setattr(int8_gelu, "_plain_cuda", lambda *ts: True)
    monkeypatch.setattr(int8_gelu_cuda, "gelu_fwd_cuda", lambda h: gelu_fwd_ref(h))
    monkeypatch.setattr(int8_gelu_cuda, "swiglu_fwd_cuda", lambda h: swiglu_fwd_ref(h))
    monkeypatch.setattr(int8_norm, "_fwd_on_cuda", lambda x, w, b, fb: fb[0] != "crest")

    def norm_fwd(x, w, b, qblock, eps, layernorm, mean=None):
        if layernorm:
            return layernorm_fwd_ref(x, w, b, qblock, eps)
        return rmsnorm_fwd_ref(x, w, qblock, eps)
    monkeypatch.setattr(int8_norm_cuda, "norm_fwd_cuda", norm_fwd)


@pytest.mark.parametrize("rule,threshold", [("median", 2.5), ("topk", 0.05), ("median", 0.0)])
@pytest.mark.parametrize("rows", [256, 100])             # 100: padding rows
def test_attached_plane_is_the_reference_plane(kernels_on_cpu, rule, threshold, rows):
    fb = (rule, threshold)
    h_q = quantize(outliers(rows, 192, seed=1, scale=3.0))
    same_planes(gelu_fwd(h_q, fallback=fb), gelu_fwd_ref(h_q, fallback=fb))
    same_planes(swiglu_fwd(h_q, fallback=fb), swiglu_fwd_ref(h_q, fallback=fb))
    x = outliers(rows, 160, seed=2) + 0.3
    w, b = torch.rand(160) + 0.5, torch.randn(160) * 0.1
    got, ref = layernorm_fwd(x, w, b, fallback=fb), layernorm_fwd_ref(x, w, b, fallback=fb)
    same_planes(got[0], ref[0])
    got, ref = rmsnorm_fwd(x, w, fallback=fb), rmsnorm_fwd_ref(x, w, fallback=fb)
    same_planes(got[0], ref[0])
    assert 0 < flagged_fraction(got[0]) <= 1


def test_threshold_inf_attaches_nothing(kernels_on_cpu):
    h_q = quantize(outliers(128, 128, seed=3))
    g = gelu_fwd(h_q, fallback=("median", math.inf))
    assert flagged_fraction(g) == 0.0 and torch.equal(g.q, gelu_fwd_ref(h_q).q)


def test_scale_flags_refuse_crest():
    with pytest.raises(ValueError, match="crest"):
        scale_flags(torch.ones(2, 2), "crest", 3.0)


@pytest.mark.gpu
@pytest.mark.parametrize("rule,threshold", [("median", 2.5), ("topk", 0.05)])
def test_fallback_ops_on_cuda_match_reference(rule, threshold):
    fb = (rule, threshold)
    h_q = quantize(outliers(300, 256, seed=4, scale=3.0).cuda())
    x = (outliers(300, 256, seed=5) + 0.3).cuda()
    w, b = (torch.rand(256) + 0.5).cuda(), (torch.randn(256) * 0.1).cuda()
    pairs = [(gelu_fwd(h_q, fallback=fb), gelu_fwd_ref(h_q, fallback=fb)),
             (swiglu_fwd(h_q, fallback=fb), swiglu_fwd_ref(h_q, fallback=fb)),
             (layernorm_fwd(x, w, b, fallback=fb)[0], layernorm_fwd_ref(x, w, b, fallback=fb)[0]),
             (rmsnorm_fwd(x, w, fallback=fb)[0], rmsnorm_fwd_ref(x, w, fallback=fb)[0])]
    for got, ref in pairs:
        assert got.has_plane and got.q2.shape[0] > 0
        # the kernels' fp32 arithmetic may move a score across the threshold in rare blocks
        assert (got.slot >= 0).ne(ref.slot >= 0).float().mean().item() < 0.01
        err = (dequantize(got) - dequantize(ref)).norm() / dequantize(ref).norm()
        assert err.item() < 2e-3
