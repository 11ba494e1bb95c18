"""
GELU and SwiGLU on int8 blocks, forward and backward.

In the INT8 data flow (Jetfire, Xi et al. 2024, arXiv 2403.12422, Sec. 5) the MLP activation
sits between two GEMMs: it reads the int8 output of c_fc (or of the gate/up projection) and
writes the int8 input of c_proj (the down projection). Both sides are int8, so the op is
memory bound at 1 byte per element in and out. Its input h_q is what it saves for backward (the
output g_q is saved by the next GEMM for its weight gradient).

GELU is GPT-2's tanh approximation, the same as F.gelu(h, approximate='tanh'):

    u(h)     = k * (h + c h^3),   k = sqrt(2/pi),  c = 0.044715
    gelu(h)  = 0.5 h (1 + tanh(u))
    gelu'(h) = 0.5 (1 + tanh(u)) + 0.5 h (1 - tanh(u)^2) k (1 + 3 c h^2)

SwiGLU (Llama's MLP) reads h (rows, 2H) laid out as [gate | up] along the last dim:

    g        = silu(gate) * up                     silu(x)  = x sigmoid(x)
    d_gate   = dg * up * silu'(gate)               silu'(x) = sigmoid(x) (1 + x (1 - sigmoid(x)))
    d_up     = dg * silu(gate)
    dh       = [d_gate | d_up]                     (rows, 2H)

H must be a multiple of QB so the split between gate and up falls on a block boundary: then
every output block of g reads exactly one gate block and one up block (with one scale each),
and dh is the two gradient halves side by side, block for block. A split inside a block would
make a kernel mix two halves under one scale; we refuse it instead.

Layouts (QB = qblock; the 2-D views padded to multiples of QB inside the QTensors):

    GELU     h_q  (rows, N)  int8 + h_s (rows/QB, N/QB) fp32  ->  g_q  (rows, N)  int8, RTN
             dg   (rows, N)  int8 QTensor or float            ->  dh_q (rows, N)  int8, SR
    SwiGLU   h_q  (rows, 2H) int8                             ->  g_q  (rows, H)  int8, RTN
             dg   (rows, H)  int8 QTensor or float            ->  dh_q (rows, 2H) int8, SR

Forward outputs are rounded to nearest (they are activations); gradients use unbiased
stochastic rounding by default (switchable). Arithmetic is fp32 on the dequantized values.
SwiGLU outputs carry the large sparse outliers that Fallback Quantization (Zhang et al. 2025,
arXiv 2503.08040) targets; the forward takes fallback=(rule, threshold) for a second plane
(fallback.py), which on CUDA costs a recompute of the flagged blocks alone.

The references here are plain torch; the public names (`gelu_fwd`, ...) run the CUDA kernels
of int8_gelu_cuda.py on CUDA tensors.
"""
import math

import torch

from fallback import attach_plane, dequantized_blocks, plane_from_scales, quantize_out
from quantize import QTensor, check_finite, check_float, dequantize, on_cuda, quantize

GELU_K = math.sqrt(2.0 / math.pi)
GELU_C = 0.044715

# ---------------------------------------------------------------------------------------------
# float helpers


def gelu_tanh(x):
    """GPT-2's GELU, the tanh approximation (= F.gelu(x, approximate='tanh'))."""
    return 0.5 * x * (1.0 + torch.tanh(GELU_K * (x + GELU_C * x * x * x)))


def gelu_tanh_grad(x):
    """d gelu_tanh / dx, written out (see the docstring)."""
    t = torch.tanh(GELU_K * (x + GELU_C * x * x * x))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * GELU_C * x * x)


def silu_grad(x):
    """d silu / dx = sigmoid(x) (1 + x (1 - sigmoid(x)))."""
    sig = torch.sigmoid(x)
    return sig * (1.0 + x * (1.0 - sig))


# ---------------------------------------------------------------------------------------------
# input checks


def _check_q(h_q, name="h_q"):
    if not isinstance(h_q, QTensor):
        raise TypeError(f"{name} must be a QTensor (int8 blocks from quantize()), got "
                        f"{type(h_q).__name__}; quantize a float tensor first")


def _grad_float(dg, shape, device):
    """The incoming gradient as fp32 of the given logical shape (dequantized if int8)."""
    if isinstance(dg, QTensor):
        got = dg.shape
    else:
        check_float(dg, "dg")
        got = dg.shape
    if got != shape:
        raise ValueError(f"dg has shape {tuple(got)} but the op's output has {tuple(shape)}")
    if dg.device != device:
        raise ValueError(f"dg is on {dg.device} but h_q is on {device}")
    if isinstance(dg, QTensor):
        return dequantize(dg)
    check_finite(dg, "dg")
    return dg.float()


def _swiglu_split(h_q):
    """Check the [gate | up] layout and return H, the width of each half."""
    _check_q(h_q)
    N = h_q.cols
    if N % (2 * h_q.qblock) != 0:
        raise ValueError(f"SwiGLU input must be [gate | up] with each half a multiple of "
                         f"qblock={h_q.qblock} (so the split falls on a block boundary); "
                         f"got last dim {N}, i.e. H = {N / 2:g}")
    return N // 2


# ---------------------------------------------------------------------------------------------
# references (plain torch; CPU or GPU)

def gelu_fwd_ref(h_q, fallback=None):
    """h_q QTensor -> g_q = quantize(gelu(h)) QTensor of the same logical shape (RTN)."""
    _check_q(h_q)
    h = dequantize(h_q)                                        # (..., N) fp32
    return quantize_out(gelu_tanh(h), h_q.qblock, fallback)    # (..., N) int8


def gelu_bwd_ref(dg, h_q, stochastic=True, generator=None):
    """dg (QTensor or float, h's shape) -> dh_q = quantize(dg * gelu'(h)) QTensor."""
    _check_q(h_q)
    dg = _grad_float(dg, h_q.shape, h_q.device)                # (..., N) fp32
    h = dequantize(h_q)                                        # (..., N) fp32
    dh = dg * gelu_tanh_grad(h)                                # (..., N) fp32
    return quantize(dh, h_q.qblock, stochastic=stochastic, generator=generator)


def swiglu_fwd_ref(h_q, fallback=None):
    """h_q QTensor (..., 2H) = [gate | up] -> g_q = quantize(silu(gate) * up) (..., H) (RTN)."""
    H = _swiglu_split(h_q)
    h = dequantize(h_q)                                        # (..., 2H) fp32
    gate, up = h[..., :H], h[..., H:]                          # (..., H) each
    g = torch.nn.functional.silu(gate) * up                    # (..., H) fp32
    return quantize_out(g, h_q.qblock, fallback)               # (..., H) int8


def swiglu_bwd_ref(dg, h_q, stochastic=True, generator=None):
    """dg (QTensor or float, (..., H)) -> dh_q = [d_gate | d_up] QTensor (..., 2H)."""
    H = _swiglu_split(h_q)
    out_shape = h_q.shape[:-1] + (H,)
    dg = _grad_float(dg, out_shape, h_q.device)                # (..., H) fp32
    h = dequantize(h_q)                                        # (..., 2H) fp32
    gate, up = h[..., :H], h[..., H:]                          # (..., H) each
    d_gate = dg * up * silu_grad(gate)                         # (..., H)
    d_up = dg * torch.nn.functional.silu(gate)                 # (..., H)
    dh = torch.cat([d_gate, d_up], dim=-1)                     # (..., 2H)
    return quantize(dh, h_q.qblock, stochastic=stochastic, generator=generator)


# ---------------------------------------------------------------------------------------------
# public API: CUDA tensors go to int8_gelu_cuda.py (plain int8 inputs; a forward's fallback
# plane is attached to the kernel's output by fallback.attach_plane), everything else to the
# reference

def _plain_cuda(*ts):
    return (all(isinstance(t, QTensor) and not t.has_fallback for t in ts)
            and on_cuda(*(t.q for t in ts)))


def gelu_fwd(h_q, fallback=None):
    """fallback=(rule, threshold) gives the output's outlier blocks a second plane; on CUDA the
    kernel writes the plain int8 output and gelu is recomputed for the flagged blocks alone."""
    _check_q(h_q)
    if plane_from_scales(fallback) and _plain_cuda(h_q):
        from int8_gelu_cuda import gelu_fwd_cuda
        g_q = gelu_fwd_cuda(h_q)
        if fallback is not None:
            h_blocks = dequantized_blocks(h_q)
            attach_plane(g_q, fallback, lambda bi, bj: gelu_tanh(h_blocks(bi, bj)),
                         "gelu", x=h_q.q, xs=h_q.s)
        return g_q
    return gelu_fwd_ref(h_q, fallback)


def gelu_bwd(dg, h_q, stochastic=True, generator=None):
    _check_q(h_q)
    if _plain_cuda(dg, h_q) and dg.shape == h_q.shape and dg.qblock == h_q.qblock:
        from int8_gelu_cuda import gelu_bwd_cuda
        return gelu_bwd_cuda(dg, h_q, stochastic, generator)
    return gelu_bwd_ref(dg, h_q, stochastic, generator)


def swiglu_fwd(h_q, fallback=None):
    H = _swiglu_split(h_q)
    if plane_from_scales(fallback) and _plain_cuda(h_q):
        from int8_gelu_cuda import swiglu_fwd_cuda
        g_q = swiglu_fwd_cuda(h_q)
        if fallback is not None:           # output block (i, j): gate block (i, j), up (i, j + Hb)
            h_blocks, Hb = dequantized_blocks(h_q), H // h_q.qblock
            attach_plane(g_q, fallback, lambda bi, bj: torch.nn.functional.silu(
                h_blocks(bi, bj)) * h_blocks(bi, bj + Hb), "swiglu", x=h_q.q, xs=h_q.s)
        return g_q
    return swiglu_fwd_ref(h_q, fallback)


def swiglu_bwd(dg, h_q, stochastic=True, generator=None):
    H = _swiglu_split(h_q)
    if (_plain_cuda(dg, h_q) and dg.shape == h_q.shape[:-1] + (H,)
            and dg.qblock == h_q.qblock):
        from int8_gelu_cuda import swiglu_bwd_cuda
        return swiglu_bwd_cuda(dg, h_q, stochastic, generator)
    return swiglu_bwd_ref(dg, h_q, stochastic, generator)
