"""
LayerNorm and RMSNorm with an int8 output, forward and backward.

In the INT8 data flow (Jetfire, Xi et al. 2024, arXiv 2403.12422, Sec. 5) a norm reads the fp32
residual stream and writes int8 blocks, because its output is the input of the next GEMM (c_attn
or c_fc, or the gate/up projection of a Llama MLP). Per row of the 2-D view x (rows, C):

    LayerNorm                                   RMSNorm
    mu    = mean(x)                             -
    rstd  = 1 / sqrt(mean((x - mu)^2) + eps)    rstd = 1 / sqrt(mean(x^2) + eps)
    xhat  = (x - mu) * rstd                     xhat = x * rstd
    y     = xhat * w + b                        y    = xhat * w

Backward, with g = dy * w (the gradient with respect to xhat) and means taken over the C
channels of one row:

    LayerNorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    RMSNorm:   dx = rstd * (g - xhat * mean(g * xhat))
    dw = sum over rows of dy * xhat,   db = sum over rows of dy

Layouts (QB = qblock, the 2-D view padded to multiples of QB inside the QTensors):

    x       (rows, C)             fp32 (or bf16/fp16/fp64, computed in fp32)
    w, b    (C,)                  fp32
    y_q     (rows, C) int8   + y_s    (rows/QB, C/QB) fp32   -> the next GEMM, round to nearest
    xhat_q  (rows, C) int8   + xhat_s (rows/QB, C/QB) fp32   -> saved for backward
    rstd    (rows,)               fp32                       -> saved for backward
    dy      (rows, C) int8 QTensor (the int8 gradient from the GEMM's dgrad) or a float tensor
    dx      (rows, C)             fp32, added to the fp32 residual gradient: `dres`, if given,
                                  is added by the backward kernel itself (dx + dres), the add
                                  of the residual branch's gradient without a pass of its own

What is saved for backward, and why: the backward needs xhat and rstd only (mu is inside xhat).
We save xhat as int8 blocks (1 byte per element instead of the 4 of the fp32 residual, which is
where the memory saving of the data flow comes from). Normalised rows have mean 0 and unit
variance, so their blocks are well conditioned: rounding costs ~0.8% of the rms per element
(s/sqrt(12) with s = absmax/127 ~ 3.3/127 for a block of 1024 normal values).
Recovering xhat from the saved y_q would be cheaper still, but it divides by w, which is
ill-conditioned wherever a weight drifts near zero. rstd is one fp32 per row: negligible.

The references here are plain torch; the public names (`layernorm_fwd`, ...) run the CUDA
kernels of int8_norm_cuda.py (forward) and int8_norm_bwd_cuda.py (backward) on CUDA tensors.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from fallback import attach_plane, on_kernels, plane_from_scales, plane_from_source, quantize_out
from quantize import (QTensor, as_2d, check_finite, check_float, check_qblock, dequantize,
                      load_q, on_cuda, pad_2d, quantize, save_q)

# ---------------------------------------------------------------------------------------------
# input checks


def _check_x(x, weight, bias, qblock):
    check_qblock(qblock)
    check_float(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dims (rows, C), got shape {tuple(x.shape)}")
    check_finite(x, "x")
    _check_param(weight, "weight", x.shape[-1], x.device)
    if bias is not None:
        _check_param(bias, "bias", x.shape[-1], x.device)


def _check_param(p, name, C, device):
    check_float(p, name)
    if p.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},) to match the last dim of x, "
                         f"got {tuple(p.shape)}")
    if p.device != device:
        raise ValueError(f"{name} is on {p.device} but x is on {device}")
    check_finite(p, name)


def _check_bwd(dy, xhat_q, rstd, weight):
    if not isinstance(xhat_q, QTensor):
        raise TypeError(f"xhat_q must be a QTensor (from the forward), got {type(xhat_q).__name__}")
    C = xhat_q.cols
    _check_param(weight, "weight", C, xhat_q.device)
    if not isinstance(rstd, torch.Tensor) or rstd.shape != (xhat_q.rows,):
        got = tuple(rstd.shape) if isinstance(rstd, torch.Tensor) else type(rstd).__name__
        raise ValueError(f"rstd must have shape ({xhat_q.rows},), one per row, got {got}")
    if isinstance(dy, QTensor):
        shape = dy.shape
    else:
        check_float(dy, "dy")
        check_finite(dy, "dy")
        shape = dy.shape
    if shape != xhat_q.shape:
        raise ValueError(f"dy has shape {tuple(shape)} but the forward input had "
                         f"{tuple(xhat_q.shape)}")


def _check_dres(dres, xhat_q):
    if dres is None:
        return
    check_float(dres, "dres")
    if dres.shape != xhat_q.shape or dres.device != xhat_q.device:
        raise ValueError(f"dres must have the forward input's shape {tuple(xhat_q.shape)} on "
                         f"{xhat_q.device}, got {tuple(dres.shape)} on {dres.device}")


def _with_dres(dx, dres):
    """The reference's dx + dres (fp32), as the kernel adds it."""
    return dx if dres is None else dx.add_(dres.float())


def _as_float(dy):
    """The gradient as an fp32 tensor: dequantized if it arrives as int8 blocks."""
    return dequantize(dy) if isinstance(dy, QTensor) else dy.float()


# ---------------------------------------------------------------------------------------------
# references (plain torch; CPU or GPU)

def layernorm_fwd_ref(x, weight, bias, qblock=32, eps=1e-5, fallback=None):
    """x (..., C) float -> (y_q, xhat_q, rstd): y_q, xhat_q QTensors of x's shape, rstd (rows,)."""
    _check_x(x, weight, bias, qblock)
    x2 = as_2d(x).float()                                      # (rows, C) fp32
    mu = x2.mean(dim=1, keepdim=True)                          # (rows, 1)
    xc = x2 - mu                                               # (rows, C)
    rstd = torch.rsqrt((xc * xc).mean(dim=1) + eps)            # (rows,) biased variance, as torch
    xhat = xc * rstd[:, None]                                  # (rows, C)
    y = xhat * weight.float()                                  # (rows, C)
    if bias is not None:
        y = y + bias.float()
    y_q = quantize_out(y.reshape(x.shape), qblock, fallback)   # (rows, C) int8, RTN
    xhat_q = quantize(xhat.reshape(x.shape), qblock)           # (rows, C) int8, RTN
    return y_q, xhat_q, rstd


def layernorm_bwd_ref(dy, xhat_q, rstd, weight, has_bias=True):
    """dy (QTensor or float, x's shape) -> (dx fp32 of x's shape, dweight (C,), dbias or None)."""
    _check_bwd(dy, xhat_q, rstd, weight)
    xhat = as_2d(dequantize(xhat_q))                           # (rows, C) fp32
    dy2 = as_2d(_as_float(dy))                                 # (rows, C) fp32
    g = dy2 * weight.float()                                   # (rows, C) d loss / d xhat
    mean_g = g.mean(dim=1, keepdim=True)                       # (rows, 1)
    mean_gx = (g * xhat).mean(dim=1, keepdim=True)             # (rows, 1)
    dx = rstd[:, None] * (g - mean_g - xhat * mean_gx)         # (rows, C)
    dweight = (dy2 * xhat).sum(dim=0)                          # (C,)
    dbias = dy2.sum(dim=0) if has_bias else None               # (C,)
    return dx.reshape(xhat_q.shape), dweight, dbias


def rmsnorm_fwd_ref(x, weight, qblock=32, eps=1e-6, fallback=None):
    """x (..., C) float -> (y_q, xhat_q, rstd): y_q, xhat_q QTensors of x's shape, rstd (rows,)."""
    _check_x(x, weight, None, qblock)
    x2 = as_2d(x).float()                                      # (rows, C) fp32
    rstd = torch.rsqrt((x2 * x2).mean(dim=1) + eps)            # (rows,)
    xhat = x2 * rstd[:, None]                                  # (rows, C)
    y = xhat * weight.float()                                  # (rows, C)
    y_q = quantize_out(y.reshape(x.shape), qblock, fallback)   # (rows, C) int8, RTN
    xhat_q = quantize(xhat.reshape(x.shape), qblock)           # (rows, C) int8, RTN
    return y_q, xhat_q, rstd


def rmsnorm_bwd_ref(dy, xhat_q, rstd, weight):
    """dy (QTensor or float, x's shape) -> (dx fp32 of x's shape, dweight (C,))."""
    _check_bwd(dy, xhat_q, rstd, weight)
    xhat = as_2d(dequantize(xhat_q))                           # (rows, C) fp32
    dy2 = as_2d(_as_float(dy))                                 # (rows, C) fp32
    g = dy2 * weight.float()                                   # (rows, C)
    mean_gx = (g * xhat).mean(dim=1, keepdim=True)             # (rows, 1)
    dx = rstd[:, None] * (g - xhat * mean_gx)                  # (rows, C)
    dweight = (dy2 * xhat).sum(dim=0)                          # (C,)
    return dx.reshape(xhat_q.shape), dweight


def norm_blocks(x, weight, bias, rstd, qblock, layernorm):
    """The fallback plane's blocks_of (fallback.attach_plane) for a norm's output y: y of the
    blocks (bi, bj) alone, recomputed from x, the per-row rstd and, for LayerNorm, the row mean
    (one pass over x); the same operations in the same order as the references above."""
    x2 = as_2d(x)                                              # (rows, C)
    rows, QB = x2.shape[0], qblock
    xp = pad_2d(x2, QB)                                        # (R, Cp), a view if aligned
    view = xp.reshape(xp.shape[0] // QB, QB, xp.shape[1] // QB, QB)
    pad_r, pad_c = xp.shape[0] - rows, xp.shape[1] - x2.shape[1]
    mu = F.pad(x2.float().mean(dim=1), (0, pad_r)) if layernorm else None      # (R,)
    rstd, w = F.pad(rstd.float(), (0, pad_r)), F.pad(weight.float(), (0, pad_c))
    b = F.pad(bias.float(), (0, pad_c)) if bias is not None else None
    ar = torch.arange(QB, device=x.device)

    def blocks_of(bi, bj):
        r, c = bi[:, None] * QB + ar, bj[:, None] * QB + ar   # (n, QB) rows, columns
        xb = view[bi, :, bj, :].float()                        # (n, QB, QB)
        if layernorm:
            xb = xb - mu[r][:, :, None]
        y = xb * rstd[r][:, :, None] * w[c][:, None, :]
        if b is not None:
            y = y + b[c][:, None, :]
        return y * (r < rows)[:, :, None]                      # zero in the padding rows
    return blocks_of


# ---------------------------------------------------------------------------------------------
# public API: CUDA tensors go to int8_norm_cuda.py (forward) and int8_norm_bwd_cuda.py, the rest
# to the reference. The CUDA path skips the host-side NaN/Inf check (a sync per call; the kernel
# flags non-finite values itself, see quantize_cuda.py); a fallback plane is attached to the
# kernel's int8 output from its scales and a recompute of the flagged blocks alone (the
# residual kernel of fallback_cuda.py; norm_blocks where the plane is built by torch ops).

def _fwd_on_cuda(x, weight, bias, fallback):
    if not plane_from_scales(fallback) or not isinstance(x, torch.Tensor) or x.dim() < 2:
        return False
    params = (weight,) if bias is None else (weight, bias)
    return on_cuda(x, *params) and all(p.shape == (x.shape[-1],) for p in params)


def _norm_fwd(x, weight, bias, qblock, eps, layernorm, fallback):
    check_qblock(qblock)
    check_float(x, "x")
    from int8_norm_cuda import norm_fwd_cuda
    x = x.float().contiguous()
    w = weight.float().contiguous()
    b = None if bias is None else bias.float().contiguous()
    # the residual kernel recomputes y from x, rstd and (LayerNorm) the kernel's own row means
    mean = (torch.empty(x.numel() // x.shape[-1], dtype=torch.float32, device=x.device)
            if fallback is not None and layernorm else None)
    out = norm_fwd_cuda(x, w, b, qblock, eps, layernorm, mean=mean)
    if fallback is not None and on_kernels(out[0], fallback):
        plane_from_source(out[0], fallback, "layernorm" if layernorm else "rmsnorm", x=as_2d(x),
                          mean=mean, rstd=out[2], w=w, b=b)
    elif fallback is not None:
        attach_plane(out[0], fallback, norm_blocks(x, w, b, out[2], qblock, layernorm))
    return out


def _bwd_on_cuda(dy, xhat_q, rstd, weight):
    return (isinstance(dy, QTensor) and isinstance(xhat_q, QTensor) and not dy.has_fallback
            and dy.q.shape == xhat_q.q.shape and isinstance(rstd, torch.Tensor)
            and rstd.shape == (xhat_q.rows,) and on_cuda(dy.q, xhat_q.q, rstd, weight))


def _norm_bwd(dy, xhat_q, rstd, weight, layernorm, dres):
    from int8_norm_bwd_cuda import norm_bwd_cuda
    if dres is not None:
        dres = dres.float().contiguous()
    return norm_bwd_cuda(dy, xhat_q, rstd.float().contiguous(), weight.float().contiguous(),
                         layernorm, dres)


def layernorm_fwd(x, weight, bias, qblock=32, eps=1e-5, fallback=None):
    """fallback=(rule, threshold) gives y_q's outlier blocks a second plane (fallback.py)."""
    if _fwd_on_cuda(x, weight, bias, fallback):
        return _norm_fwd(x, weight, bias, qblock, eps, True, fallback)
    return layernorm_fwd_ref(x, weight, bias, qblock, eps, fallback)


def layernorm_bwd(dy, xhat_q, rstd, weight, has_bias=True, dres=None):
    """dres: a gradient of x's shape to add to dx (the residual branch's), or None."""
    _check_dres(dres, xhat_q)
    if _bwd_on_cuda(dy, xhat_q, rstd, weight):
        dx, dweight, dbias = _norm_bwd(dy, xhat_q, rstd, weight, True, dres)
        return dx, dweight, dbias if has_bias else None
    dx, dweight, dbias = layernorm_bwd_ref(dy, xhat_q, rstd, weight, has_bias)
    return _with_dres(dx, dres), dweight, dbias


def rmsnorm_fwd(x, weight, qblock=32, eps=1e-6, fallback=None):
    if _fwd_on_cuda(x, weight, None, fallback):
        return _norm_fwd(x, weight, None, qblock, eps, False, fallback)
    return rmsnorm_fwd_ref(x, weight, qblock, eps, fallback)


def rmsnorm_bwd(dy, xhat_q, rstd, weight, dres=None):
    """dres: a gradient of x's shape to add to dx (the residual branch's), or None."""
    _check_dres(dres, xhat_q)
    if _bwd_on_cuda(dy, xhat_q, rstd, weight):
        return _norm_bwd(dy, xhat_q, rstd, weight, False, dres)[:2]
    dx, dweight = rmsnorm_bwd_ref(dy, xhat_q, rstd, weight)
    return _with_dres(dx, dres), dweight


# ---------------------------------------------------------------------------------------------
# autograd Functions and modules, for standalone use and tests. The model fuses the norm into a
# larger Function so y_q goes straight into the GEMM; here y_q is dequantized at the boundary.

class Int8LayerNormFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, eps, qblock):
        y_q, xhat_q, rstd = layernorm_fwd(x, weight, bias, qblock, eps)
        save_q(ctx, xhat_q, rstd, weight)
        ctx.has_bias, ctx.x_dtype = bias is not None, x.dtype
        return dequantize(y_q)                                 # (..., C) fp32, int8-rounded

    @staticmethod
    def backward(ctx, dout):
        xhat_q, rstd, weight = load_q(ctx)
        # the gradient enters the int8 data flow here: stochastic rounding keeps it unbiased
        dy_q = quantize(dout, xhat_q.qblock, stochastic=True)     # (..., C) int8
        dx, dweight, dbias = layernorm_bwd(dy_q, xhat_q, rstd, weight, ctx.has_bias)
        return dx.to(ctx.x_dtype), dweight, dbias, None, None


class Int8RMSNormFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, eps, qblock):
        y_q, xhat_q, rstd = rmsnorm_fwd(x, weight, qblock, eps)
        save_q(ctx, xhat_q, rstd, weight)
        ctx.x_dtype = x.dtype
        return dequantize(y_q)                                 # (..., C) fp32, int8-rounded

    @staticmethod
    def backward(ctx, dout):
        xhat_q, rstd, weight = load_q(ctx)
        dy_q = quantize(dout, xhat_q.qblock, stochastic=True)     # (..., C) int8
        dx, dweight = rmsnorm_bwd(dy_q, xhat_q, rstd, weight)
        return dx.to(ctx.x_dtype), dweight, None, None


class Int8LayerNorm(nn.Module):
    """nn.LayerNorm(C) whose output is rounded to int8 blocks (returned dequantized, fp32)."""

    def __init__(self, C, bias=True, eps=1e-5, qblock=32):
        super().__init__()
        check_qblock(qblock)
        self.eps, self.qblock = eps, qblock
        self.weight = nn.Parameter(torch.ones(C))
        self.bias = nn.Parameter(torch.zeros(C)) if bias else None

    def forward(self, x):
        return Int8LayerNormFunction.apply(x, self.weight, self.bias, self.eps, self.qblock)


class Int8RMSNorm(nn.Module):
    """RMSNorm(C) (Llama's, no bias) whose output is rounded to int8 blocks (fp32 out)."""

    def __init__(self, C, eps=1e-6, qblock=32):
        super().__init__()
        check_qblock(qblock)
        self.eps, self.qblock = eps, qblock
        self.weight = nn.Parameter(torch.ones(C))

    def forward(self, x):
        return Int8RMSNormFunction.apply(x, self.weight, self.eps, self.qblock)
