"""
CUDA kernels (CuPy RawKernels) for GELU and SwiGLU on int8 blocks; the contract is int8_gelu.py.

Every output block depends on the same block(s) of the inputs only, so these are block-local
kernels like quantize_cuda.py's (a group of G threads per QB x QB block, 2 x 16 values per
thread, 16-byte loads and stores, the block absmax by warp shuffles), with the math in between:

    gelu_fwd     h_q (R, N)            -> g_q (R, N)          bytes/elt: 1 in, 1 out
    gelu_bwd     dg_q (R, N), h_q      -> dh_q (R, N), SR     2 in, 1 out
    swiglu_fwd   h_q (R, 2H)           -> g_q (R, H)          2 in, 1 out (per output)
    swiglu_bwd   dg_q (R, H), h_q      -> dh_q (R, 2H), SR    3 in, 2 out (per pair)

with one exp and one reciprocal (MUFU) per element, using

    0.5 (1 + tanh(u)) = sigmoid(2u) = r   =>  gelu(h)  = h r,  u = k (h + c h^3)
    1 - tanh(u)^2 = 4 r (1 - r)           =>  gelu'(h) = r (1 + (1 - r) h 2k (1 + 3 c h^2))
    silu(x) = x sigmoid(x),  silu'(x) = sigmoid(x) (1 + x (1 - sigmoid(x)))

and sigmoid(z) = 1 / (1 + 2^(-z log2 e)) from ex2.approx and rcp.approx (a few ulp: far below
the int8 step, so an output differs from the reference only where it sits within ~1e-6 of a
rounding boundary). Inputs are dequantized exactly as the reference does (q * s), except in the
SwiGLU backward, whose SR output hides the last ulp: there the three scales multiply the block
absmax instead of every value. NaN/Inf as in quantize_cuda: NaN block scale, device flag set.
The gradient kernels take an int8 gradient with h_q's block grid (a float one: the reference).

Speed: at 1 byte per element the copy bandwidth leaves ~25-35 instruction issues per element,
and the first version needed ~30 (forward) and ~55 (backward, SASS), so it ran at 50-67% of
copy: issue bound. Now ~19 and ~35: bytes unpacked where used (PRMT + FADD); the .ftz MUFU
forms (__expf and __fdividef add an FSETP and two FMULs each); no clamps (the multiplier keeps
|y| <= 127); SR from 16 random bits per value, one lowbias32 hash per two values, 3
instructions after it (quant16_fast) instead of ~20. Each group walks BPG blocks, loading the
next block's bytes before it computes the current one.
"""
import numpy as np
import torch

from quantize import QTensor, get_kernel, launch
from quantize_cuda import (COMMON, after_launch, block_grid, check_qtensor, draw_seed,
                           nonfinite_flag, sr_salt, threads)

BLOCK_SRC = COMMON + r"""
// device helpers of the GELU/SwiGLU kernels: exact unpacking, fast MUFU, quantize-and-store

// One MUFU each. __expf and __fdividef wrap theirs in denormal fix-ups (an FSETP and two
// FMULs per call); flushing denormals costs nothing here (sigmoid of 1e-38 and 0 quantize alike).
__device__ __forceinline__ float ex2(float x) {
    float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y;
}
__device__ __forceinline__ float rcp(float x) {
    float y; asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y;
}
// sigmoid(z) = 1 / (1 + 2^e) for e = -z log2(e), the constant folded in by the caller
__device__ __forceinline__ float sigmoid2(float e) { return rcp(1.0f + ex2(e)); }

// max that keeps a NaN (fmaxf drops it), so a NaN output still reaches its block's scale
__device__ __forceinline__ float max_nan(float a, float b) {
    float y; asm("max.NaN.f32 %0, %1, %2;" : "=f"(y) : "f"(a), "f"(b)); return y;
}

// 2^23 as bits, read from constant memory: as an immediate it would take PRMT's one immediate
// slot, and ptxas then keeps the selectors in registers and re-makes them (~2 MOV per value)
__constant__ u32 TWO23 = 0x4B000000u;

// this thread's two 16-byte units of block (bi, bj) of an (Rb*QB, ncol) int8 tensor, the
// bytes biased by 128 for val()
__device__ __forceinline__ void load_units(const i8* q, int bi, int bj, int ncol, int t,
                                           u32 w[2][4]) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const uint4 p = __ldcs((const uint4*)(q + (long long)(bi * QB + t / TPR + i * HALF) * ncol
                                              + bj * QB + (t % TPR) * 16));
        w[i][0] = p.x ^ 0x80808080u; w[i][1] = p.y ^ 0x80808080u;
        w[i][2] = p.z ^ 0x80808080u; w[i][3] = p.w ^ 0x80808080u;
    }
}

// value k of a unit as an exact float: COMMON's unpack16, one value at a time, so the packed
// bytes stay in registers instead of 32 floats per input
__device__ __forceinline__ float val(const u32 w[4], int k) {
    return __int_as_float(__byte_perm(w[k / 4], TWO23, 0x7540u | (k % 4))) - 8388736.0f;
}

// 16 values * mul -> 16 int8; needs |v * mul| <= 127, so neither rounding clamps.
// RTN: rint by the 1.5 * 2^23 trick. SR: floor(y + u), u = (j + 1/2) / 2^16: a PRMT puts the 16
// random bits j into the mantissa of m = 2^23 + j, and two round-down adds give
// floor(m / 2^16 + y) = floor(y + u) + 128 (rounding down never moves a floor), the 128 taken
// back by the second add's constant; the 1/2 rides on y's multiply. One hash per two values,
// of (element, the call's 64-bit seed) as in quantize_cuda. Unbiased to within 2^-17 of a step
// (about the float32 rounding of y near 127).
__device__ __forceinline__ uint4 quant16_fast(const float v[16], float mul, u32 key) {
    u32 b[16];
#pragma unroll
    for (int k = 0; k < 16; k += 2) {
#if SR
        const u32 h = hash32(key + (k / 2) * 0x9E3779B9u);
#endif
#pragma unroll
        for (int e = 0; e < 2; ++e) {
#if SR
            const float y = __fmaf_rn(v[k + e], mul, 7.62939453125e-6f);        // + 2^-17
            const float m = __uint_as_float(__byte_perm(h, TWO23, e ? 0x7432u : 0x7410u));
            const float t = __fmaf_rd(m, 1.52587890625e-5f, y);                 // m / 2^16 + y
            b[k + e] = __float_as_uint(__fadd_rd(t, 12582784.0f));              // 1.5 * 2^23 - 128
#else
            b[k + e] = __float_as_uint(__fadd_rn(__fmul_rn(v[k + e], mul), 12582912.0f));
#endif
        }
    }
    return make_uint4(pack4(b[0], b[1], b[2], b[3]), pack4(b[4], b[5], b[6], b[7]),
                      pack4(b[8], b[9], b[10], b[11]), pack4(b[12], b[13], b[14], b[15]));
}

// Quantize block (bi, bj) of an (Rb*QB, ncol) output whose values are v * so: v this thread's
// 32 values, amax their absmax (NaN if one is NaN), so an input scale the kernel kept out of
// v (one multiply per block instead of one per value). Every thread of the CTA must call it.
__device__ __forceinline__ void store_block(const float v[2][16], float amax, float so, i8* q,
                                            float* s, int bi, int bj, int ncol, int t,
                                            bool live, float* red, u32 seed_lo, u32 seed_hi,
                                            int* flag) {
    amax = group_max(amax <= FLT_BIG ? amax : __int_as_float(0x7f800000), red);
    const float a = amax * so;                               // the output block's absmax
    const bool bad = !(a <= FLT_BIG);                        // NaN/Inf: scale NaN, flag set
    if (bad && live && t == 0) atomicOr(flag, 1);
    // RTN: the reference's inv = 127 / absmax (reciprocal, then multiply). SR: the same
    // rounded down, so that |v * mul| <= 127 holds exactly and floor(y + u) stays in range.
    const float r = fmaxf(amax, 1e-38f);
    const float mul = bad || amax == 0.0f ? 0.0f
                      : SR ? __fmul_rd(__frcp_rd(r), 127.0f) : __fmul_rn(__frcp_rn(r), 127.0f);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int row = bi * QB + t / TPR + i * HALF, c = bj * QB + (t % TPR) * 16;
        const u32 key = SR ? unit_key((u32)((long long)row * (ncol / 16) + c / 16), seed_lo, seed_hi)
                           : 0u;
        const uint4 p = quant16_fast(v[i], mul, key);
        if (live) __stcs((uint4*)(q + (long long)row * ncol + c), p);
    }
    if (live && t == 0)
        s[(long long)bi * (ncol / QB) + bj] = bad ? __int_as_float(0x7fffffff) : __fdiv_rn(a, 127.0f);
}

// block b of an Rb x Cb grid as (bi, bj), and whether it exists; (0, 0) past the end, which
// is still loaded and computed but not stored (every thread must reach group_max's barriers)
__device__ __forceinline__ bool block_at(int b, int Rb, int Cb, int* bi, int* bj) {
    const bool live = b < Rb * Cb;                          // launchers assert Rb * Cb < 2^31
    *bi = live ? b / Cb : 0;
    *bj = live ? b % Cb : 0;
    return live;
}

// Each group walks BPG blocks (-D BPG): step i takes block (blockIdx.x * BPG + i) * GPC + g, so
// at every step a CTA's groups sit on neighbouring blocks. The next block's bytes are loaded
// before the current one is computed, so each warp's loads overlap its own arithmetic.
// Op: load(bi, bj, t, in) the inputs of a block, run(in, bi, bj, t, live, red) the rest.
template <class Op>
__device__ __forceinline__ void walk(const Op& op, int Rb, int Cb) {
    __shared__ float red[NT / 32];
    const int g = threadIdx.x / G, t = threadIdx.x % G, first = blockIdx.x * BPG * GPC + g;
    typename Op::In in, next;
    int bi, bj, nbi, nbj;
    bool live = block_at(first, Rb, Cb, &bi, &bj), nlive;
    op.load(bi, bj, t, in);
#pragma unroll
    for (int i = 0; i < BPG; ++i) {
        if (i + 1 < BPG) {
            nlive = block_at(first + (i + 1) * GPC, Rb, Cb, &nbi, &nbj);
            op.load(nbi, nbj, t, next);
        }
        op.run(in, bi, bj, t, live, red);
        if (i + 1 < BPG) {
            in = next;
            bi = nbi, bj = nbj, live = nlive;
        }
    }
}
"""

GELU_SRC = BLOCK_SRC + r"""
// MIN_CTAS (-D): CTAs an SM must be able to hold (__launch_bounds__; caps the registers)
#define LOG2E 1.4426950408889634f
#define GELU_K 0.7978845608028654f
#define GELU_C 0.044715f
#define GELU_P (-2.0f * GELU_K * LOG2E)       // r = sigmoid(2u) = 1 / (1 + 2^(h (P + P c h^2)))
#define GELU_A (2.0f * GELU_K)                // 2u'(h) = A + 3 A c h^2

// g = gelu(h) = h r: h, g (Rb*QB, Cb*QB)
struct GeluFwd {
    const i8* hq; const float* hs; i8* gq; float* gs; int Cb; int* flag;
    struct In { u32 h[2][4]; float sh; };
    __device__ void load(int bi, int bj, int t, In& in) const {
        load_units(hq, bi, bj, Cb * QB, t, in.h);
        in.sh = hs[(long long)bi * Cb + bj];
    }
    __device__ void run(const In& in, int bi, int bj, int t, bool live, float* red) const {
        float v[2][16], amax = 0.0f;
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int k = 0; k < 16; ++k) {
                const float h = __fmul_rn(val(in.h[i], k), in.sh);   // = dequantize(h_q), exactly
                v[i][k] = h * sigmoid2(h * fmaf(GELU_P * GELU_C, h * h, GELU_P));
                amax = max_nan(amax, fabsf(v[i][k]));
            }
        store_block(v, amax, 1.0f, gq, gs, bi, bj, Cb * QB, t, live, red, 0u, 0u, flag);
    }
};

// dh = dg gelu'(h) = dg r (1 + (1 - r) h 2u'(h)): all three (Rb*QB, Cb*QB)
struct GeluBwd {
    const i8* dgq; const float* dgs; const i8* hq; const float* hs; i8* dhq; float* dhs;
    int Cb; u32 seed_lo, seed_hi; int* flag;
    struct In { u32 h[2][4], dg[2][4]; float sh, sg; };
    __device__ void load(int bi, int bj, int t, In& in) const {
        load_units(hq, bi, bj, Cb * QB, t, in.h);
        load_units(dgq, bi, bj, Cb * QB, t, in.dg);
        in.sh = hs[(long long)bi * Cb + bj];
        in.sg = dgs[(long long)bi * Cb + bj];
    }
    __device__ void run(const In& in, int bi, int bj, int t, bool live, float* red) const {
        float v[2][16], amax = 0.0f;
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int k = 0; k < 16; ++k) {
                const float h = __fmul_rn(val(in.h[i], k), in.sh), h2 = h * h;
                const float r = sigmoid2(h * fmaf(GELU_P * GELU_C, h2, GELU_P));
                const float d = r * fmaf(1.0f - r, h * fmaf(3.0f * GELU_A * GELU_C, h2, GELU_A), 1.0f);
                // dg dequantized first, as the reference does: where gelu' is exactly 0 or 1
                // (|h| large) dh is then dg bit for bit, and so are the ties of its rounding
                v[i][k] = __fmul_rn(val(in.dg[i], k), in.sg) * d;
                amax = max_nan(amax, fabsf(v[i][k]));
            }
        store_block(v, amax, 1.0f, dhq, dhs, bi, bj, Cb * QB, t, live, red, seed_lo, seed_hi, flag);
    }
};

// g = silu(gate) * up: h = [gate | up] (Rb*QB, 2*Hb*QB), g (Rb*QB, Hb*QB); Cb = Hb here
struct SwigluFwd {
    const i8* hq; const float* hs; i8* gq; float* gs; int Hb; int* flag;
    struct In { u32 x[2][4], u[2][4]; float sx, su; };
    __device__ void load(int bi, int bj, int t, In& in) const {
        load_units(hq, bi, bj, 2 * Hb * QB, t, in.x);
        load_units(hq, bi, bj + Hb, 2 * Hb * QB, t, in.u);
        in.sx = hs[(long long)bi * 2 * Hb + bj];
        in.su = hs[(long long)bi * 2 * Hb + bj + Hb];
    }
    __device__ void run(const In& in, int bi, int bj, int t, bool live, float* red) const {
        float v[2][16], amax = 0.0f;
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int k = 0; k < 16; ++k) {
                const float x = __fmul_rn(val(in.x[i], k), in.sx);
                v[i][k] = x * sigmoid2(-LOG2E * x) * __fmul_rn(val(in.u[i], k), in.su);
                amax = max_nan(amax, fabsf(v[i][k]));
            }
        store_block(v, amax, 1.0f, gq, gs, bi, bj, Hb * QB, t, live, red, 0u, 0u, flag);
    }
};

// [d_gate | d_up] = [dg up r (1 + x (1 - r)) | dg x r], x = gate, r = sigmoid(x):
// dg (Rb*QB, Hb*QB), h and dh (Rb*QB, 2*Hb*QB). Rounding-tolerant (SR), so the three input
// scales stay out of the per-value math: d_gate / (s_dg s_up) and d_up / s_dg are quantized.
struct SwigluBwd {
    const i8* dgq; const float* dgs; const i8* hq; const float* hs; i8* dhq; float* dhs;
    int Hb; u32 seed_lo, seed_hi; int* flag;
    struct In { u32 x[2][4], u[2][4], dg[2][4]; float sx, su, sg; };
    __device__ void load(int bi, int bj, int t, In& in) const {
        load_units(hq, bi, bj, 2 * Hb * QB, t, in.x);
        load_units(hq, bi, bj + Hb, 2 * Hb * QB, t, in.u);
        load_units(dgq, bi, bj, Hb * QB, t, in.dg);
        in.sx = hs[(long long)bi * 2 * Hb + bj];
        in.su = hs[(long long)bi * 2 * Hb + bj + Hb];
        in.sg = dgs[(long long)bi * Hb + bj];
    }
    __device__ void run(const In& in, int bi, int bj, int t, bool live, float* red) const {
        float dx[2][16], du[2][16], ax = 0.0f, au = 0.0f;
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int k = 0; k < 16; ++k) {
                const float x = __fmul_rn(val(in.x[i], k), in.sx), r = sigmoid2(-LOG2E * x);
                const float dg = val(in.dg[i], k);
                dx[i][k] = dg * val(in.u[i], k) * (r * fmaf(x, 1.0f - r, 1.0f));
                du[i][k] = dg * (x * r);
                ax = max_nan(ax, fabsf(dx[i][k]));
                au = max_nan(au, fabsf(du[i][k]));
            }
        const int ncol = 2 * Hb * QB;
        store_block(dx, ax, in.sg * in.su, dhq, dhs, bi, bj, ncol, t, live, red, seed_lo, seed_hi, flag);
        store_block(du, au, in.sg, dhq, dhs, bi, bj + Hb, ncol, t, live, red, seed_lo, seed_hi, flag);
    }
};

extern "C" __global__ void __launch_bounds__(NT, MIN_CTAS)
gelu_fwd_kernel(const i8* __restrict__ hq, const float* __restrict__ hs, int Rb, int Cb,
                i8* __restrict__ gq, float* __restrict__ gs, int* flag) {
    walk(GeluFwd{hq, hs, gq, gs, Cb, flag}, Rb, Cb);
}

extern "C" __global__ void __launch_bounds__(NT, MIN_CTAS)
gelu_bwd_kernel(const i8* __restrict__ dgq, const float* __restrict__ dgs,
                const i8* __restrict__ hq, const float* __restrict__ hs, int Rb, int Cb,
                i8* __restrict__ dhq, float* __restrict__ dhs, u32 seed_lo, u32 seed_hi,
                const u32* __restrict__ salt, int* flag) {
    if (SR) { seed_lo ^= salt[0]; seed_hi ^= salt[1]; }      // (sr_salt: CUDA graph replays)
    walk(GeluBwd{dgq, dgs, hq, hs, dhq, dhs, Cb, seed_lo, seed_hi, flag}, Rb, Cb);
}

extern "C" __global__ void __launch_bounds__(NT, MIN_CTAS)
swiglu_fwd_kernel(const i8* __restrict__ hq, const float* __restrict__ hs, int Rb, int Hb,
                  i8* __restrict__ gq, float* __restrict__ gs, int* flag) {
    walk(SwigluFwd{hq, hs, gq, gs, Hb, flag}, Rb, Hb);
}

extern "C" __global__ void __launch_bounds__(NT, MIN_CTAS)
swiglu_bwd_kernel(const i8* __restrict__ dgq, const float* __restrict__ dgs,
                  const i8* __restrict__ hq, const float* __restrict__ hs, int Rb, int Hb,
                  i8* __restrict__ dhq, float* __restrict__ dhs, u32 seed_lo, u32 seed_hi,
                const u32* __restrict__ salt, int* flag) {
    if (SR) { seed_lo ^= salt[0]; seed_hi ^= salt[1]; }      // (sr_salt: CUDA graph replays)
    walk(SwigluBwd{dgq, dgs, hq, hs, dhq, dhs, Hb, seed_lo, seed_hi, flag}, Rb, Hb);
}
"""

# blocks each group walks (BPG): with 2 a warp's loads of one block overlap its math on the
# other, at the price of registers; the fastest per kernel on the H100 (notes/memory_kernels.md)
BLOCKS_PER_GROUP = {"gelu_fwd": 2, "gelu_bwd": 2, "swiglu_fwd": 1, "swiglu_bwd": 2}
# At QB = 128 a CTA is one 512-thread group: (BPG, MIN_CTAS) per kernel. Two blocks per group
# took 86-128 registers a thread, so an SM held one CTA and each block's CTA-wide barrier
# stalled all of it; MIN_CTAS = 2 caps them at 64 (a few spill). On the H100, width-2048 block
# activations (notes/act_qb128_ab.log): GELU fwd 0.082 -> 0.064 ms, bwd 0.120 -> 0.102, SwiGLU
# fwd 0.063 -> 0.054; the SwiGLU backward spills too much at 64 (0.123 -> 0.239) and keeps 1.
QB128_CONFIG = {"gelu_fwd": (2, 2), "gelu_bwd": (2, 2), "swiglu_fwd": (2, 2), "swiglu_bwd": (2, 1)}


def launch_config(op, qblock):
    """(BPG, MIN_CTAS) of op's kernel at this block size."""
    return QB128_CONFIG[op] if qblock == 128 else (BLOCKS_PER_GROUP[op], 1)


def _launch(op, qblock, device, n_blocks, args, stochastic=False):
    """Run op's kernel over n_blocks output blocks, one group of G threads per BPG blocks."""
    bpg, min_ctas = launch_config(op, qblock)
    assert n_blocks + 4 * bpg < 2**31, f"{n_blocks} blocks: the kernels count blocks in int32"
    kernel = get_kernel(GELU_SRC, f"{op}_kernel",
                        (f"QB={qblock}", f"SR={int(stochastic)}", f"BPG={bpg}",
                         f"MIN_CTAS={min_ctas}"), device)
    launch(kernel, block_grid(-(-n_blocks // bpg), qblock), (threads(qblock),), args)


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
    _launch("gelu_fwd", QB, h_q.device, Rb * Cb,
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
    _launch("gelu_bwd", QB, h_q.device, Rb * Cb,
            (dg_q.q, dg_q.s, h_q.q, h_q.s, np.int32(Rb), np.int32(Cb), out.q, out.s, *seed,
             sr_salt(h_q.device), nonfinite_flag(h_q.device)), stochastic)
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
    _launch("swiglu_fwd", QB, h_q.device, Rb * Hb,
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
    _launch("swiglu_bwd", QB, h_q.device, Rb * Hb,
            (dg_q.q, dg_q.s, h_q.q, h_q.s, np.int32(Rb), np.int32(Hb), out.q, out.s, *seed,
             sr_salt(h_q.device), nonfinite_flag(h_q.device)), stochastic)
    after_launch(h_q.device, "dg")
    return out
