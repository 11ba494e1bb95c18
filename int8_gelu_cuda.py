"""
CUDA kernels (CuPy RawKernels) for GELU and SwiGLU on int8 blocks; the contract is int8_gelu.py.

Every output block depends on the same block(s) of the inputs only, so these are the block-local
kernels of quantize_cuda.py (a group of G threads per QB x QB block, 2 x 16 values per thread,
16-byte loads and stores, the block absmax by warp shuffles), with the math in between:

    gelu_fwd     h_q (R, N)            -> g_q (R, N)          bytes/elt: 1 in, 1 out
    gelu_bwd     dg_q (R, N), h_q      -> dh_q (R, N), SR     2 in, 1 out
    swiglu_fwd   h_q (R, 2H)           -> g_q (R, H)          2 in, 1 out (per output)
    swiglu_bwd   dg_q (R, H), h_q      -> dh_q (R, 2H), SR    3 in, 2 out (per pair)

At 1 byte per element the GPU must do all of an element's arithmetic in ~2 fp32 ops per byte
of bandwidth, so the math avoids the quarter-rate units where it can: int8 <-> fp32 by mantissa
tricks (quantize_cuda.COMMON) and one exp + one reciprocal (MUFU) per element, using

    0.5 (1 + tanh(u)) = sigmoid(2u)   =>  gelu(h)  = h sigmoid(2u),  u = k (h + c h^3)
    1 - tanh(u)^2 = 4 sigmoid(2u) (1 - sigmoid(2u))
                                      =>  gelu'(h) = s + 2 h s (1 - s) k (1 + 3 c h^2),  s = sigmoid(2u)
    silu(x) = x sigmoid(x),  silu'(x) = sigmoid(x) (1 + x (1 - sigmoid(x)))

with sigmoid(z) = 1 / (1 + exp(-z)) from __expf and __fdividef (a few ulp: far below the int8
step, so the output differs from the reference only where a value sits within ~1e-6 of a
rounding boundary). The gradient kernels take the int8 gradient (a QTensor with h_q's block
grid); a float gradient goes through the reference (int8_gelu.py) instead.
"""
import numpy as np
import torch

from quantize import QTensor, get_kernel, launch
from quantize_cuda import (COMMON, after_launch, block_grid, check_qtensor, draw_seed,
                           nonfinite_flag, threads)

GELU_SRC = COMMON + r"""
#define GELU_K 0.7978845608028654f
#define GELU_C 0.044715f

__device__ __forceinline__ float sigmoid(float z) { return __fdividef(1.0f, 1.0f + __expf(-z)); }

// the two units (2 x 16 values) of this thread in block b of an (Rb*QB, ncol) int8 tensor
__device__ __forceinline__ void load_block(const i8* q, const float* s, int bi, int bj, int ncol,
                                           int t, float v[2][16]) {
    const float sc = s[(long long)bi * (ncol / QB) + bj];
    uint4 p[2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
        p[i] = __ldcs((const uint4*)(q + (long long)(bi * QB + t / TPR + i * HALF) * ncol
                                     + bj * QB + (t % TPR) * 16));
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        unpack16(p[i], v[i]);
#pragma unroll
        for (int k = 0; k < 16; ++k) v[i][k] = __fmul_rn(v[i][k], sc);
    }
}

// quantize this thread's 32 values of block (bi, bj) of an (Rb*QB, ncol) output, RTN or SR
__device__ __forceinline__ void store_block(const float v[2][16], i8* q, float* s, int bi, int bj,
                                            int ncol, int t, bool live, float* red, bool sr,
                                            u32 seed_lo, u32 seed_hi, int* flag) {
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int k = 0; k < 16; ++k) amax = fmaxf(amax, abs_or_inf(v[i][k]));
    amax = group_max(amax, red);
    float inv;
    const float sc = block_scale(amax, &inv, flag, live && t == 0);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = bi * QB + t / TPR + i * HALF, c = bj * QB + (t % TPR) * 16;
        const u32 key = sr ? unit_key((u32)((long long)r * (ncol / 16) + c / 16), seed_lo, seed_hi) : 0u;
        const uint4 p = quant16(v[i], inv, sr, key);
        if (live) __stcs((uint4*)(q + (long long)r * ncol + c), p);
    }
    if (live && t == 0) s[(long long)bi * (ncol / QB) + bj] = sc;
}

// common prologue: this group's block (bi, bj) of an Rb x Cb grid, and whether it exists
#define BLOCK_INDEX(Cb)                                                          \
    __shared__ float red[NT / 32];                                               \
    const int g = threadIdx.x / G, t = threadIdx.x % G;                          \
    const long long b = (long long)blockIdx.x * GPC + g;                         \
    const bool live = b < (long long)Rb * (Cb);                                  \
    const int bi = live ? (int)(b / (Cb)) : 0, bj = live ? (int)(b % (Cb)) : 0;

// g = gelu(h): h, g (Rb*QB, Cb*QB)
extern "C" __global__ void __launch_bounds__(NT)
gelu_fwd_kernel(const i8* __restrict__ hq, const float* __restrict__ hs, int Rb, int Cb,
                i8* __restrict__ gq, float* __restrict__ gs, int* flag) {
    BLOCK_INDEX(Cb)
    float v[2][16];
    load_block(hq, hs, bi, bj, Cb * QB, t, v);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            const float h = v[i][k], u = GELU_K * (h + GELU_C * h * h * h);
            v[i][k] = h * sigmoid(2.0f * u);
        }
    store_block(v, gq, gs, bi, bj, Cb * QB, t, live, red, false, 0u, 0u, flag);
}

// dh = dg * gelu'(h): all three (Rb*QB, Cb*QB)
extern "C" __global__ void __launch_bounds__(NT)
gelu_bwd_kernel(const i8* __restrict__ dgq, const float* __restrict__ dgs,
                const i8* __restrict__ hq, const float* __restrict__ hs, int Rb, int Cb,
                i8* __restrict__ dhq, float* __restrict__ dhs, u32 seed_lo, u32 seed_hi, int* flag) {
    BLOCK_INDEX(Cb)
    float v[2][16], dg[2][16];
    load_block(hq, hs, bi, bj, Cb * QB, t, v);
    load_block(dgq, dgs, bi, bj, Cb * QB, t, dg);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            const float h = v[i][k], h2 = h * h;
            const float sg = sigmoid(2.0f * GELU_K * (h + GELU_C * h2 * h));
            const float d = sg + 2.0f * h * sg * (1.0f - sg) * GELU_K * (1.0f + 3.0f * GELU_C * h2);
            v[i][k] = dg[i][k] * d;
        }
    store_block(v, dhq, dhs, bi, bj, Cb * QB, t, live, red, SR, seed_lo, seed_hi, flag);
}

// g = silu(gate) * up: h = [gate | up] (Rb*QB, 2*Hb*QB), g (Rb*QB, Hb*QB)
extern "C" __global__ void __launch_bounds__(NT)
swiglu_fwd_kernel(const i8* __restrict__ hq, const float* __restrict__ hs, int Rb, int Hb,
                  i8* __restrict__ gq, float* __restrict__ gs, int* flag) {
    BLOCK_INDEX(Hb)
    float gate[2][16], up[2][16];
    load_block(hq, hs, bi, bj, 2 * Hb * QB, t, gate);
    load_block(hq, hs, bi, bj + Hb, 2 * Hb * QB, t, up);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            const float x = gate[i][k];
            gate[i][k] = x * sigmoid(x) * up[i][k];
        }
    store_block(gate, gq, gs, bi, bj, Hb * QB, t, live, red, false, 0u, 0u, flag);
}

// [d_gate | d_up] = [dg * up * silu'(gate) | dg * silu(gate)]: dg (Rb*QB, Hb*QB), dh like h
extern "C" __global__ void __launch_bounds__(NT)
swiglu_bwd_kernel(const i8* __restrict__ dgq, const float* __restrict__ dgs,
                  const i8* __restrict__ hq, const float* __restrict__ hs, int Rb, int Hb,
                  i8* __restrict__ dhq, float* __restrict__ dhs, u32 seed_lo, u32 seed_hi, int* flag) {
    BLOCK_INDEX(Hb)
    float gate[2][16], up[2][16], dg[2][16];
    load_block(hq, hs, bi, bj, 2 * Hb * QB, t, gate);
    load_block(hq, hs, bi, bj + Hb, 2 * Hb * QB, t, up);
    load_block(dgq, dgs, bi, bj, Hb * QB, t, dg);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            const float x = gate[i][k], sg = sigmoid(x);
            gate[i][k] = dg[i][k] * up[i][k] * (sg * (1.0f + x * (1.0f - sg)));   // d_gate
            up[i][k] = dg[i][k] * (x * sg);                                       // d_up
        }
    store_block(gate, dhq, dhs, bi, bj, 2 * Hb * QB, t, live, red, SR, seed_lo, seed_hi, flag);
    store_block(up, dhq, dhs, bi, bj + Hb, 2 * Hb * QB, t, live, red, SR, seed_lo, seed_hi, flag);
}
"""


def _kernel(name, qblock, device, stochastic=False):
    return get_kernel(GELU_SRC, name, (f"QB={qblock}", f"SR={int(stochastic)}"), device)


def _out_like(h_q, ncol, shape):
    QB = h_q.qblock
    R = h_q.q.shape[0]
    q = torch.empty(R, ncol, dtype=torch.int8, device=h_q.device)
    s = torch.empty(R // QB, ncol // QB, dtype=torch.float32, device=h_q.device)
    return QTensor(q, s, torch.Size(shape), QB)


def _check_grad(dg_q, h_q, q_shape, shape):
    check_qtensor(dg_q, "dg")
    assert not dg_q.has_fallback, "the CUDA path takes a plain int8 gradient (no fallback plane)"
    assert dg_q.qblock == h_q.qblock, f"dg has qblock {dg_q.qblock}, h_q has {h_q.qblock}"
    assert dg_q.shape == shape and tuple(dg_q.q.shape) == q_shape, \
        f"dg has shape {tuple(dg_q.shape)} (padded {tuple(dg_q.q.shape)}), expected {tuple(shape)}"


def gelu_fwd_cuda(h_q):
    """h_q QTensor (CUDA) -> g_q = quantize(gelu(h)) (RTN), same logical shape."""
    check_qtensor(h_q, "h_q")
    QB = h_q.qblock
    Rb, Cb = h_q.s.shape
    out = _out_like(h_q, Cb * QB, h_q.shape)
    launch(_kernel("gelu_fwd_kernel", QB, h_q.device), block_grid(Rb * Cb, QB), (threads(QB),),
           (h_q.q, h_q.s, np.int32(Rb), np.int32(Cb), out.q, out.s, nonfinite_flag(h_q.device)))
    after_launch(h_q.device, "h_q")
    return out


def gelu_bwd_cuda(dg_q, h_q, stochastic=True, generator=None):
    """dg_q, h_q QTensors (CUDA, same shape) -> dh_q = quantize(dg * gelu'(h)), SR by default."""
    check_qtensor(h_q, "h_q")
    _check_grad(dg_q, h_q, tuple(h_q.q.shape), h_q.shape)
    QB = h_q.qblock
    Rb, Cb = h_q.s.shape
    out = _out_like(h_q, Cb * QB, h_q.shape)
    seed = draw_seed(generator) if stochastic else (np.uint32(0), np.uint32(0))
    launch(_kernel("gelu_bwd_kernel", QB, h_q.device, stochastic), block_grid(Rb * Cb, QB),
           (threads(QB),), (dg_q.q, dg_q.s, h_q.q, h_q.s, np.int32(Rb), np.int32(Cb),
                            out.q, out.s, *seed, nonfinite_flag(h_q.device)))
    after_launch(h_q.device, "dg")
    return out


def swiglu_fwd_cuda(h_q):
    """h_q = [gate | up] QTensor (CUDA, (..., 2H), H % QB == 0) -> g_q (..., H), RTN."""
    check_qtensor(h_q, "h_q")
    QB = h_q.qblock
    assert h_q.cols % (2 * QB) == 0, f"SwiGLU needs each half a multiple of {QB}, got {h_q.cols}"
    Rb, Cb = h_q.s.shape
    Hb = Cb // 2
    out = _out_like(h_q, Hb * QB, h_q.shape[:-1] + (h_q.cols // 2,))
    launch(_kernel("swiglu_fwd_kernel", QB, h_q.device), block_grid(Rb * Hb, QB), (threads(QB),),
           (h_q.q, h_q.s, np.int32(Rb), np.int32(Hb), out.q, out.s, nonfinite_flag(h_q.device)))
    after_launch(h_q.device, "h_q")
    return out


def swiglu_bwd_cuda(dg_q, h_q, stochastic=True, generator=None):
    """dg_q (..., H), h_q (..., 2H) QTensors (CUDA) -> dh_q = [d_gate | d_up] (..., 2H), SR."""
    check_qtensor(h_q, "h_q")
    QB = h_q.qblock
    assert h_q.cols % (2 * QB) == 0, f"SwiGLU needs each half a multiple of {QB}, got {h_q.cols}"
    Rb, Cb = h_q.s.shape
    Hb = Cb // 2
    _check_grad(dg_q, h_q, (Rb * QB, Hb * QB), h_q.shape[:-1] + (h_q.cols // 2,))
    out = _out_like(h_q, Cb * QB, h_q.shape)
    seed = draw_seed(generator) if stochastic else (np.uint32(0), np.uint32(0))
    launch(_kernel("swiglu_bwd_kernel", QB, h_q.device, stochastic), block_grid(Rb * Hb, QB),
           (threads(QB),), (dg_q.q, dg_q.s, h_q.q, h_q.s, np.int32(Rb), np.int32(Hb),
                            out.q, out.s, *seed, nonfinite_flag(h_q.device)))
    after_launch(h_q.device, "dg")
    return out
