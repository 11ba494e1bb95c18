"""
The INT8 linear layer and its three block-scaled GEMMs.

The GEMM itself (reference, tensor-core kernel, launcher) lives in int8_gemm.py; its public names
(gemm, gemm_ref, block_gemm_ref, GEMM_OUTS) are re-exported here.

The linear layer y = x W^T (+ b) runs its three GEMMs on int8 operands:

    forward   Y  = X  @ W^T      A = X   (M, K),  B = W   (N, K)
    dgrad     dX = dY @ W        A = dY  (M, N),  B = W^T (K, N)   W^T is free: square blocks
    wgrad     dW = dY^T @ X      A = dY^T (N, M), B = X^T (K, M)   the saved int8 X, transposed

X and W are rounded to nearest; dY stochastically (unbiased gradients, Jetfire Sec. 5). The int8
X saved for backward is 1 byte per element instead of 2 or 4.
"""
import torch
import torch.nn as nn

from int8_gemm import GEMM_OUTS, block_gemm_ref, check_gemm, gemm, gemm_ref  # noqa: F401
from quantize import check_float, load_q, quantize, save_q


# ---------------------------------------------------------------------------------------------
# the linear layer

def linear_fwd(x_q, w_q, out="float", out_dtype=torch.float32, residual=None):
    """Y = X @ W^T. x_q logical (..., K), w_q (N, K) -> Y of logical shape (..., N); with
    `residual` (fp32, Y's shape) residual + Y, added by the GEMM's epilogue."""
    return gemm(x_q, w_q, out=out, out_dtype=out_dtype, shape=(*x_q.shape[:-1], w_q.rows),
                residual=residual)


def linear_dgrad(dy_q, w_q, out="float", out_dtype=torch.float32):
    """dX = dY @ W. dy_q logical (..., N), w_q (N, K) -> dX of logical shape (..., K)."""
    return linear_dgrad_t(dy_q, w_q.t(), out, out_dtype)


def linear_dgrad_t(dy_q, wt_q, out="float", out_dtype=torch.float32):
    """linear_dgrad given W^T (K, N) itself: what quantize(w, transposed=True) writes, with no
    transpose kernel between."""
    return gemm(dy_q, wt_q, out=out, out_dtype=out_dtype, shape=(*dy_q.shape[:-1], wt_q.rows))


def linear_wgrad(dy_q, x_q):
    """dW = dY^T @ X in fp32. dy_q (..., N), x_q (..., K) -> (N, K)."""
    return linear_wgrad_t(dy_q.t(), x_q.t())


def linear_wgrad_t(dy_qt, x_qt, accumulate=None):
    """linear_wgrad given dY^T (N, M) and X^T (K, M) themselves: what quantize(..., with_t=True)
    writes beside dY and X in one pass, with no transpose kernel between; or added into
    `accumulate` (an fp32 tensor of N*K elements, returned)."""
    return gemm(dy_qt, x_qt, out="float", accumulate=accumulate)


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


__all__ = ["gemm", "gemm_ref", "block_gemm_ref", "linear_fwd", "linear_dgrad", "linear_dgrad_t",
           "linear_wgrad", "linear_wgrad_t", "Int8Linear", "Int8LinearFunction"]
