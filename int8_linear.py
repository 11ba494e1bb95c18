"""
Block-scaled INT8 GEMM and the INT8 linear layer.

The GEMM (DESIGN §2). With A (M, K) and B (N, K) quantized in QB x QB blocks,

    C = A @ B^T,   C[m, n] = sum_kb  s_A[m/QB, kb] * s_B[n/QB, kb] * P_kb[m, n]
                   P_kb     = A_q[:, kb] @ B_q[:, kb]^T        exact int32, |P| <= QB * 127^2

For each K-block the int8 partial sum is exact; only the rescale into the fp32 accumulator
rounds. |P| <= 128 * 127^2 = 2.06M < 2^24, so the reference may even compute P in fp32 and stay
exact. Epilogues:
    out='float'    C in fp32 (or bf16): the weight gradient, or a float boundary
    out='int8'     C re-quantized in QB x QB blocks, round to nearest: forward activations
    out='int8_sr'  C re-quantized with stochastic rounding: input gradients

If an operand carries a fallback plane (fallback.py), it is a sum of two block-scaled planes and
the GEMM is the sum over plane pairs; the second plane is zero outside flagged blocks.

The linear layer y = x W^T (+ b) runs its three GEMMs on int8 operands:

    forward   Y  = X  @ W^T      A = X   (M, K),  B = W   (N, K)
    dgrad     dX = dY @ W        A = dY  (M, N),  B = W^T (K, N)   W^T is free: square blocks
    wgrad     dW = dY^T @ X      A = dY^T (N, M), B = X^T (K, M)   the saved int8 X, transposed

X and W are rounded to nearest; dY stochastically (unbiased gradients, Jetfire Sec. 5). The int8
X saved for backward is 1 byte per element instead of 2 or 4.
"""
import torch
import torch.nn as nn

from quantize import QTensor, check_float, quantize, second_plane

GEMM_OUTS = ("float", "int8", "int8_sr")


# ---------------------------------------------------------------------------------------------
# reference

def _planes(t):
    """An operand as a list of (q (R, C) int8, s (R/QB, C/QB) fp32) planes that sum to it."""
    planes = [(t.q, t.s)]
    if t.has_fallback:
        planes.append(second_plane(t))
    return planes


def block_gemm_ref(a_q, a_s, b_q, b_s, qblock):
    """One plane pair: sum_kb (a_s x b_s)[kb] * (a_q[:, kb] @ b_q[:, kb]^T), padded (Mp, Np) fp32."""
    QB = qblock
    Mp, Kp = a_q.shape
    Np = b_q.shape[0]
    acc = torch.zeros(Mp // QB, QB, Np // QB, QB, device=a_q.device)
    for kb in range(Kp // QB):
        k = slice(kb * QB, (kb + 1) * QB)
        # int8 values are exact in fp32 and every partial sum is an integer below 2^24
        p = a_q[:, k].float() @ b_q[:, k].float().t()              # (Mp, Np) exact
        scale = a_s[:, kb, None] * b_s[None, :, kb]                 # (Mp/QB, Np/QB)
        acc += p.view(Mp // QB, QB, Np // QB, QB) * scale[:, None, :, None]
    return acc.view(Mp, Np)


def gemm_ref(a, b, out="float", out_dtype=torch.float32, shape=None, generator=None):
    """Reference block-scaled GEMM: C = A @ B^T for QTensors a (M, K) and b (N, K).

    out: 'float' (tensor of out_dtype) | 'int8' | 'int8_sr' (QTensor).
    shape: logical shape of C (default (M, N)), e.g. (B, T, N) for an activation.
    """
    check_gemm(a, b, out)
    acc = None
    for a_q, a_s in _planes(a):
        for b_q, b_s in _planes(b):
            part = block_gemm_ref(a_q, a_s, b_q, b_s, a.qblock)
            acc = part if acc is None else acc + part
    shape = torch.Size(shape) if shape is not None else torch.Size((a.rows, b.rows))
    c = acc[:a.rows, :b.rows].reshape(shape)                       # padding dropped
    if out == "float":
        return c.to(out_dtype)
    return quantize(c, a.qblock, stochastic=(out == "int8_sr"), generator=generator)


def check_gemm(a, b, out):
    if not isinstance(a, QTensor) or not isinstance(b, QTensor):
        raise TypeError("gemm operands must be QTensors (quantize them first)")
    if out not in GEMM_OUTS:
        raise ValueError(f"out must be one of {GEMM_OUTS}, got {out!r}")
    if a.qblock != b.qblock:
        raise ValueError(f"operands have different block sizes: {a.qblock} and {b.qblock}")
    if a.cols != b.cols:
        raise ValueError(f"inner dimensions differ: A is {a.rows}x{a.cols}, "
                         f"B is {b.rows}x{b.cols} (C = A @ B^T needs equal K)")
    if a.device != b.device:
        raise ValueError(f"operands on different devices: {a.device} and {b.device}")


# ---------------------------------------------------------------------------------------------
# public API: the CUDA GEMM kernels plug in under this name

def gemm(a, b, out="float", out_dtype=torch.float32, shape=None, generator=None):
    """C = A @ B^T on int8 blocks; see gemm_ref for the arguments."""
    return gemm_ref(a, b, out, out_dtype, shape, generator)


# ---------------------------------------------------------------------------------------------
# the linear layer

def save_q(ctx, *qtensors):
    """Save QTensors for backward through save_for_backward (so saved-tensor hooks see them)."""
    ctx.q_meta = [(t.shape, t.qblock) for t in qtensors]
    ctx.save_for_backward(*[x for t in qtensors for x in t.tensors()])


def load_q(ctx):
    saved = ctx.saved_tensors
    return [QTensor.from_tensors(saved[5 * i:5 * i + 5], shape, qblock)
            for i, (shape, qblock) in enumerate(ctx.q_meta)]


def linear_fwd(x_q, w_q, out="float", out_dtype=torch.float32):
    """Y = X @ W^T. x_q logical (..., K), w_q (N, K) -> Y of logical shape (..., N)."""
    return gemm(x_q, w_q, out=out, out_dtype=out_dtype, shape=(*x_q.shape[:-1], w_q.rows))


def linear_dgrad(dy_q, w_q, out="float", out_dtype=torch.float32):
    """dX = dY @ W. dy_q logical (..., N), w_q (N, K) -> dX of logical shape (..., K)."""
    return gemm(dy_q, w_q.t(), out=out, out_dtype=out_dtype, shape=(*dy_q.shape[:-1], w_q.cols))


def linear_wgrad(dy_q, x_q):
    """dW = dY^T @ X in fp32. dy_q (..., N), x_q (..., K) -> (N, K)."""
    return gemm(dy_q.t(), x_q.t(), out="float")


class Int8LinearFunction(torch.autograd.Function):
    """y = x W^T + b with every GEMM on int8 blocks; float in, float out."""

    @staticmethod
    def forward(ctx, x, weight, bias, qblock):
        check_float(x)
        if x.shape[-1] != weight.shape[1]:
            raise ValueError(f"x has {x.shape[-1]} features, weight expects {weight.shape[1]}")
        x_q = quantize(x, qblock)                                  # (..., K) int8, saved
        w_q = quantize(weight, qblock)                             # (N, K) int8, saved
        # --- GEMM: Y = X @ W^T ---
        y = linear_fwd(x_q, w_q)                                   # (..., N) fp32
        if bias is not None:
            y = y + bias
        save_q(ctx, x_q, w_q)
        ctx.has_bias = bias is not None
        ctx.x_dtype = x.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x_q, w_q = load_q(ctx)
        dy_q = quantize(dy, x_q.qblock, stochastic=True)           # (..., N) int8
        # --- GEMM: dX = dY @ W ---
        dx = linear_dgrad(dy_q, w_q).to(ctx.x_dtype)               # (..., K)
        # --- GEMM: dW = dY^T @ X ---
        dw = linear_wgrad(dy_q, x_q)                               # (N, K) fp32
        db = dy.reshape(-1, dy.shape[-1]).float().sum(0) if ctx.has_bias else None
        return dx, dw, db, None


class Int8Linear(nn.Linear):
    """Drop-in for nn.Linear: fp32 master weight, quantized to int8 blocks every forward;
    the int8 input is what is saved for backward."""

    def __init__(self, in_features, out_features, bias=True, qblock=32, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.qblock = qblock

    def forward(self, x):
        return Int8LinearFunction.apply(x, self.weight, self.bias, self.qblock)

    def extra_repr(self):
        return super().extra_repr() + f", qblock={self.qblock}"


__all__ = ["gemm", "gemm_ref", "block_gemm_ref", "linear_fwd", "linear_dgrad", "linear_wgrad",
           "Int8Linear", "Int8LinearFunction", "save_q", "load_q"]
