"""
CUDA kernels (CuPy RawKernels) for the block format: quantize, dequantize, transpose.

The contract is quantize.py's reference; this file only makes it fast on CUDA tensors. Every
kernel here is memory bound, so the whole design is about bytes:

    quantize     x (rows, C) fp32|bf16 -> q (Rp, Cp) int8 + s (Rp/QB, Cp/QB) fp32
                 [+ the transposed copy qT (Cp, Rp) int8 + sT, from the same read]
    dequantize   q + s -> x (rows, C) fp32
    transpose    q (Rp, Cp) + s -> qT (Cp, Rp) + sT  (bytes only, no requantization)

Thread layout (shared by every block-local kernel of the project, int8_gelu_cuda.py too): one
QB x QB block belongs to a group of G = QB*QB/32 threads (one warp for QB = 32). A thread owns
two *units* of 16 consecutive columns (16 int8 = one 16-byte access), in rows t/TPR and
t/TPR + QB/2 of the block, TPR = QB/16 threads per row. So each thread holds 32 values, issues
all its loads before the first use, and the block absmax is a warp shuffle reduction (plus a
shared-memory step across the group's warps when QB > 32). QB = 32 CTAs hold 4 groups.
Dequantize needs no absmax, so it lays its threads along rows instead (coalesced stores).

Arithmetic, bit exact with quantize_ref for round to nearest. Note that torch evaluates the
reference's `127 / amax` (a scalar over a tensor) as reciprocal-then-multiply, two roundings,
and a correctly rounded division differs from it in ~1e-3 of the blocks' inv; on bf16 inputs,
whose values often sit at exact halves of a block's absmax, that moves ~1 value in 2000:
    inv = __fmul_rn(__frcp_rn(absmax), 127)   q = rint(clamp(__fmul_rn(x, inv), -127, 127))
    s   = __fdiv_rn(absmax, 127)
rint is the 1.5*2^23 trick (one FADD, ties to even; its low byte is q in two's complement) and
int8 -> fp32 puts the byte into the mantissa of 2^23 (PRMT + FADD): both exact, and neither
uses the quarter-rate conversion unit, which would otherwise cap the int8-in kernels.

Stochastic rounding: q = sign(y) floor(|y| + u), u ~ U[0,1) from a counter-based hash of
(element, seed); the 64-bit seed is drawn per call from torch's CPU generator (or the one
given), so torch.manual_seed makes a run reproducible and each call, block and element gets
its own u. floor is __fadd_rd(t, 2^23), exact for 0 <= t < 2^23.

NaN/Inf: checking on the host (torch.isfinite(x).all()) would read the tensor again and force
a host sync on every call. Instead the kernel folds non-finite values into the block absmax
as +inf, writes that block's scale as NaN (so the NaN propagates downstream exactly as it
would in float training and shows in the loss) and sets a device flag. check_nonfinite()
reads the flag (one sync) and raises; with STRICT = True (env INT8_STRICT=1, the GPU tests)
every launcher calls it, so bad input raises at the call that saw it.
"""
import os

import numpy as np
import torch

from quantize import QTensor, capturing, get_kernel, launch, pad_to, with_transposed_plane

STRICT = os.environ.get("INT8_STRICT", "0") == "1"

# ---------------------------------------------------------------------------------------------
# device code shared by all block-local kernels (prepended to each source)

COMMON = r"""
// QB (the block edge: 32, 64 or 128) comes in as -DQB=...
#define TPR (QB / 16)                 // threads per block row, each owning 16 columns
#define G (QB * QB / 32)              // threads per block: 2 units of 16 values each
#define HALF (QB / 2)                 // rows between a thread's two units
#define GPC (QB == 32 ? 4 : 1)        // groups (blocks) per CTA: 128, 128, 512 threads
#define NT (GPC * G)
#define FLT_BIG 3.402823466e38f
typedef unsigned int u32;
typedef signed char i8;

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// max over the G threads of one block; every thread of the CTA must call it (red: NT/32 floats)
__device__ __forceinline__ float group_max(float v, float* red) {
    v = warp_max(v);
#if QB > 32
    const int warp = threadIdx.x >> 5, first = warp / (G / 32) * (G / 32);
    __syncthreads();                              // red may still be read by a previous call
    if ((threadIdx.x & 31) == 0) red[warp] = v;
    __syncthreads();
    v = red[first];
    for (int k = 1; k < G / 32; ++k) v = fmaxf(v, red[first + k]);
#endif
    return v;
}

// |v| for the absmax, with NaN and Inf mapped to +inf (fmaxf would silently drop a NaN)
__device__ __forceinline__ float abs_or_inf(float v) {
    float a = fabsf(v);
    return a <= FLT_BIG ? a : __int_as_float(0x7f800000);
}

// 16 int8 (one uint4) -> 16 exact floats: byte + 128 into the mantissa of 2^23, minus 2^23+128
__device__ __forceinline__ void unpack16(uint4 p, float v[16]) {
    const u32 w[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const u32 o = w[i] ^ 0x80808080u;
#pragma unroll
        for (int k = 0; k < 4; ++k)
            v[4 * i + k] = __int_as_float(__byte_perm(o, 0x4B000000u, 0x7540u | k)) - 8388736.0f;
    }
}

// round half to even of y clamped to [-127, 127]; the low byte of the result is q
__device__ __forceinline__ u32 rtn_byte(float y) {
    y = fminf(fmaxf(y, -127.0f), 127.0f);
    return __float_as_uint(__fadd_rn(y, 12582912.0f));          // 1.5 * 2^23
}

// sign(y) * min(floor(|y| + u), 127), as quantize_ref computes it; the low byte is q
__device__ __forceinline__ u32 sr_byte(float y, float u) {
    const float t = __fadd_rn(fminf(fabsf(y), 127.0f), u);
    u32 m = __float_as_uint(__fadd_rd(t, 8388608.0f)) - 0x4B000000u;   // floor(t)
    m = min(m, 127u);
    return y < 0.0f ? 0u - m : m;
}

__device__ __forceinline__ u32 pack4(u32 a, u32 b, u32 c, u32 d) {
    return __byte_perm(__byte_perm(a, b, 0x0040u), __byte_perm(c, d, 0x0040u), 0x5410u);
}

// The transposed copy of a block, through shared memory: a group's tile holds its block's
// bytes row by row (+1 word per row: fewer bank conflicts on the column reads). tile_put puts
// a thread's unit i (16 bytes: row rr + i HALF, columns cc..cc+15 of the block) in; after a
// __syncthreads, tile_store_t reads the block's columns rr and rr + HALF down rows cc..cc+15
// and writes them as 16-byte units of block (bj, bi) of qt (Cp x Rp).
typedef u32 Tile[QB][QB / 4 + 1];
__device__ __forceinline__ void tile_put(Tile& tile, int rr, int cc, int i, uint4 p) {
    u32* row = &tile[rr + i * HALF][cc / 4];
    row[0] = p.x; row[1] = p.y; row[2] = p.z; row[3] = p.w;
}
__device__ __forceinline__ void tile_store_t(const Tile& tile, i8* qt, int bi, int bj, int Rp,
                                             int rr, int cc, bool live) {
    const unsigned char* tb = (const unsigned char*)&tile[0][0];
    const int stride = 4 * (QB / 4 + 1);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int col = rr + i * HALF;                           // a column of the block ...
        u32 w[4];                                                // ... read down 16 of its rows
#pragma unroll
        for (int m = 0; m < 4; ++m)
            w[m] = pack4(tb[(cc + 4 * m) * stride + col], tb[(cc + 4 * m + 1) * stride + col],
                         tb[(cc + 4 * m + 2) * stride + col], tb[(cc + 4 * m + 3) * stride + col]);
        if (live) *(uint4*)(qt + (long long)(bj * QB + col) * Rp + bi * QB + cc) =
            make_uint4(w[0], w[1], w[2], w[3]);
    }
}

// counter-based RNG: a bijective 32-bit mix (Wellons' lowbias32)
__device__ __forceinline__ u32 hash32(u32 x) {
    x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
    return x;
}
__device__ __forceinline__ u32 unit_key(u32 unit, u32 seed_lo, u32 seed_hi) {
    return hash32(hash32(unit ^ seed_lo) + seed_hi);
}
__device__ __forceinline__ float uniform(u32 key, int k) {         // [0, 1), 23 random bits
    return __uint_as_float(0x3f800000u | (hash32(key + k * 0x9E3779B9u) >> 9)) - 1.0f;
}

// 16 values * inv -> 16 int8 (round to nearest, or stochastic with the unit's key)
__device__ __forceinline__ uint4 quant16(const float v[16], float inv, bool sr, u32 key) {
    u32 b[16];
#pragma unroll
    for (int k = 0; k < 16; ++k) {
        const float y = __fmul_rn(v[k], inv);
        b[k] = sr ? sr_byte(y, uniform(key, k)) : rtn_byte(y);
    }
    return make_uint4(pack4(b[0], b[1], b[2], b[3]), pack4(b[4], b[5], b[6], b[7]),
                      pack4(b[8], b[9], b[10], b[11]), pack4(b[12], b[13], b[14], b[15]));
}

// the block's (inv, s) from its absmax; +inf (a NaN/Inf inside) gives q = 0, s = NaN, flag set
__device__ __forceinline__ float block_scale(float amax, float* inv, int* flag, bool leader) {
    if (amax > FLT_BIG) {
        if (leader) atomicOr(flag, 1);
        *inv = 0.0f;
        return __int_as_float(0x7fffffff);
    }
    // the reference's torch.div(127, amax) is reciprocal-then-multiply: two roundings
    *inv = amax > 0.0f ? __fmul_rn(__frcp_rn(fmaxf(amax, 1e-38f)), 127.0f) : 0.0f;
    return __fdiv_rn(amax, 127.0f);
}
"""

# ---------------------------------------------------------------------------------------------
# kernels

# a block-local kernel's loads of its x values (quantize_kernel's, and the norm's wide path)
LOAD16_SRC = r"""
// X_BF16: x is bf16 (else fp32); VEC: C is a multiple of the 16-byte vector (aligned rows)
#if X_BF16
typedef unsigned short xt;
#define VW 8
#else
typedef float xt;
#define VW 4
#endif

// 16 consecutive values of row r from column c, as fp32; zero outside (rows, C)
__device__ __forceinline__ void load16(const xt* x, int r, int c, int rows, int C, float v[16]) {
    const xt* p = x + (long long)r * C + c;
    if (VEC && r < rows && c + 16 <= C) {
#if X_BF16
        const uint4 a = __ldcs((const uint4*)p), b = __ldcs((const uint4*)p + 1);
        const u32 w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            v[2 * i] = __uint_as_float(w[i] << 16);
            v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
#else
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float4 f = __ldcs((const float4*)p + i);
            v[4 * i] = f.x; v[4 * i + 1] = f.y; v[4 * i + 2] = f.z; v[4 * i + 3] = f.w;
        }
#endif
    } else {
#pragma unroll
        for (int k = 0; k < 16; ++k) {
#if X_BF16
            v[k] = (r < rows && c + k < C) ? __uint_as_float((u32)p[k] << 16) : 0.0f;
#else
            v[k] = (r < rows && c + k < C) ? p[k] : 0.0f;
#endif
        }
    }
}
"""

QUANTIZE_SRC = COMMON + LOAD16_SRC + r"""
// SR: stochastic rounding; TRANS: 1 also writes the transposed copy qT, sT; 2 writes only it
// (a weight's backward needs W^T alone). x is [x | x1 | x2] along the columns, parts of
// part_cols columns each (a multiple of QB, so that a block lies in one part), or x alone
// (part_cols = its width): the attention's dq, dk, dv become one dqkv without a concatenation.

#ifndef MIN_CTAS
#define MIN_CTAS 1                    // CTAs an SM must be able to hold (caps the registers)
#endif
extern "C" __global__ void __launch_bounds__(NT, MIN_CTAS)
quantize_kernel(const xt* __restrict__ x, const xt* __restrict__ x1, const xt* __restrict__ x2,
                int part_cols, int rows, int Rb, int Cb,
                i8* __restrict__ q, float* __restrict__ s,
                i8* __restrict__ qt, float* __restrict__ st,
                u32 seed_lo, u32 seed_hi, const u32* __restrict__ salt, int* flag) {
    __shared__ float red[NT / 32];
    if (SR) { seed_lo ^= salt[0]; seed_hi ^= salt[1]; }      // (sr_salt: CUDA graph replays)
#if TRANS
    __shared__ __align__(16) Tile tile[GPC];
#endif
    const int g = threadIdx.x / G, t = threadIdx.x % G;
    const long long b = (long long)blockIdx.x * GPC + g;         // this group's block
    const bool live = b < (long long)Rb * Cb;
    const int bi = live ? (int)(b / Cb) : 0, bj = live ? (int)(b % Cb) : 0;
    const int rr = t / TPR, cc = (t % TPR) * 16;                 // unit 0 inside the block
    const int Cp = Cb * QB;

    const int part = bj * QB / part_cols, c0 = bj * QB - part * part_cols;
    const xt* xp = part == 0 ? x : part == 1 ? x1 : x2;          // my block's part
    float v[2][16];
#pragma unroll
    for (int i = 0; i < 2; ++i)
        load16(xp, live ? bi * QB + rr + i * HALF : rows, c0 + cc, rows, part_cols, v[i]);
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
        const int r = bi * QB + rr + i * HALF, c = bj * QB + cc;
        const u32 key = SR ? unit_key((u32)((long long)r * (Cp / 16) + c / 16), seed_lo, seed_hi) : 0u;
        const uint4 p = quant16(v[i], inv, SR, key);
        if (live && TRANS != 2) *(uint4*)(q + (long long)r * Cp + c) = p;
#if TRANS
        tile_put(tile[g], rr, cc, i, p);
#endif
    }
    if (live && t == 0 && TRANS != 2) s[(long long)bi * Cb + bj] = sc;
#if TRANS
    __syncthreads();
    tile_store_t(tile[g], qt, bi, bj, Rb * QB, rr, cc, live);
    if (live && t == 0) st[(long long)bj * Rb + bi] = sc;
#endif
}
"""

DEQUANTIZE_SRC = COMMON + r"""
// q (Rp, Cp) int8 * s -> x (rows, C) fp32, padding dropped; VEC: C % 4 == 0 (16-byte rows).
// No block reduction here, so the thread layout follows the stores, which are 4 of the 5
// bytes: a warp takes DQ_SPAN consecutive columns of one row, each lane 4 columns per step
// (a 4-byte load, a 16-byte store), so every store instruction writes 512 contiguous bytes.
// With the block layout (a lane's 16 columns as 4 stores 64 bytes apart) it ran at 52% of
// copy bandwidth. Consecutive warps take consecutive chunks of a row.
// DQ_STEPS (loads in flight per lane) and DQ_WARPS (per CTA) come in as -D, from the launcher
#define DQ_SPAN (128 * DQ_STEPS)                  // columns per warp

extern "C" __global__ void __launch_bounds__(32 * DQ_WARPS)
dequantize_kernel(const i8* __restrict__ q, const float* __restrict__ s, int Cb,
                  float* __restrict__ x, int rows, int C, int chunks) {
    const int lane = threadIdx.x & 31;
    const long long w = (long long)blockIdx.x * DQ_WARPS + (threadIdx.x >> 5);
    if (w >= (long long)rows * chunks) return;                  // no barrier below
    const int r = (int)(w / chunks), c0 = (int)(w % chunks) * DQ_SPAN + 4 * lane;
    const i8* qr = q + (long long)r * Cb * QB;                  // row r of the padded q
    const float* sr = s + (long long)(r / QB) * Cb;             // its row of block scales
    u32 p[DQ_STEPS];
    float sc[DQ_STEPS];
#pragma unroll
    for (int j = 0; j < DQ_STEPS; ++j) {                        // all loads first
        const int c = c0 + 128 * j;
        p[j] = c < C ? __ldcs((const u32*)(qr + c)) : 0u;       // c % 4 == 0, Cp % 4 == 0
        sc[j] = c < C ? __ldg(sr + c / QB) : 0.0f;
    }
    float* xr = x + (long long)r * C;
#pragma unroll
    for (int j = 0; j < DQ_STEPS; ++j) {
        const int c = c0 + 128 * j;
        if (c >= C) break;
        float v[4];
        const u32 o = p[j] ^ 0x80808080u;                       // unpack16's trick, 4 bytes
#pragma unroll
        for (int k = 0; k < 4; ++k)
            v[k] = __fmul_rn(__int_as_float(__byte_perm(o, 0x4B000000u, 0x7540u | k)) - 8388736.0f,
                             sc[j]);
        if (VEC) {
            __stcs((float4*)(xr + c), make_float4(v[0], v[1], v[2], v[3]));
        } else {
#pragma unroll
            for (int k = 0; k < 4; ++k)
                if (c + k < C) xr[c + k] = v[k];
        }
    }
}
"""

TRANSPOSE_SRC = COMMON + r"""
// q (Rp, Cp) -> qT (Cp, Rp): each block is byte-transposed through shared memory.
// PLANE: q is a fallback plane's q2 (Rb, QB, QB), Cb = 1: each block transposed in its place
// (qT[b] = q[b]^T), no scales (s2 is the same for both layouts).
extern "C" __global__ void __launch_bounds__(NT)
transpose_kernel(const i8* __restrict__ q, const float* __restrict__ s, int Rb, int Cb,
                 i8* __restrict__ qt, float* __restrict__ st) {
    __shared__ __align__(16) Tile tile[GPC];
    const int g = threadIdx.x / G, t = threadIdx.x % G;
    const long long b = (long long)blockIdx.x * GPC + g;
    const bool live = b < (long long)Rb * Cb;
    const int bi = live ? (int)(b / Cb) : 0, bj = live ? (int)(b % Cb) : 0;
    const int rr = t / TPR, cc = (t % TPR) * 16, Cp = Cb * QB;
#pragma unroll
    for (int i = 0; i < 2; ++i)
        tile_put(tile[g], rr, cc, i,
                 live ? __ldcs((const uint4*)(q + (long long)(bi * QB + rr + i * HALF) * Cp
                                              + bj * QB + cc)) : make_uint4(0, 0, 0, 0));
    __syncthreads();
#if PLANE
    tile_store_t(tile[g], qt + b * QB * QB, 0, 0, QB, rr, cc, live);
#else
    tile_store_t(tile[g], qt, bi, bj, Rb * QB, rr, cc, live);
    if (live && t == 0) st[(long long)bj * Rb + bi] = s[b];
#endif
}
"""


# ---------------------------------------------------------------------------------------------
# launch helpers shared by the kernel files

def threads(qblock):
    """CTA size of the block-local kernels (the NT of COMMON)."""
    G = qblock * qblock // 32
    return (4 if qblock == 32 else 1) * G


def block_grid(n_blocks, qblock):
    """CTAs for n_blocks blocks, one group of G threads per block."""
    per_cta = 4 if qblock == 32 else 1
    return ((n_blocks + per_cta - 1) // per_cta,)


_flags, _salts = {}, {}                 # per device: the non-finite flag, the SR salt


def nonfinite_flag(device):
    """The device int32 that kernels set when they meet a NaN/Inf (one per device)."""
    key = device.index if device.index is not None else torch.cuda.current_device()
    if key not in _flags:
        _flags[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return _flags[key]


def sr_salt(device):
    """Two device uint32 (as int32) that every stochastic-rounding kernel XORs into its seed: 0
    unless refresh_sr_salt() has drawn them (one per device).

    The per-call seeds are drawn on the host (draw_seed) and go to the kernels as launch
    arguments, so a CUDA graph would replay each call with the seed it was captured with, and
    every step would round alike. A captured step calls refresh_sr_salt() first: that draw comes
    from torch's CUDA generator, which CUDA graphs advance on every replay."""
    key = device.index if device.index is not None else torch.cuda.current_device()
    if key not in _salts:
        _salts[key] = torch.zeros(2, dtype=torch.int32, device=device)
    return _salts[key]


def refresh_sr_salt(device):
    """New random salt for the stochastic rounding of the work queued after it (see sr_salt)."""
    sr_salt(device).random_()


def check_nonfinite(device=None, what="input"):
    """Raise if any kernel on `device` has met a NaN/Inf since the last check (one host sync)."""
    flag = nonfinite_flag(device or torch.device("cuda"))
    if flag.item():
        flag.zero_()
        raise ValueError(f"{what} contains NaN or Inf; int8 blocks cannot represent them "
                         f"(a diverging run? lower the learning rate). The blocks that held them "
                         f"have NaN scales.")


def after_launch(device, what):
    if STRICT and not capturing():                 # (a graph cannot sync)
        check_nonfinite(device, what)


def draw_seed(generator=None):
    """Two uint32 seeds from torch's RNG (the CPU default generator: no device sync)."""
    if generator is None:
        lo, hi = torch.randint(0, 2**31 - 1, (2,)).tolist()
    else:
        lo, hi = torch.randint(0, 2**31 - 1, (2,), generator=generator,
                               device=generator.device).tolist()
    return np.uint32(lo), np.uint32(hi)


def check_cuda(x, name, dtypes):
    assert isinstance(x, torch.Tensor), f"{name} must be a torch.Tensor, got {type(x).__name__}"
    assert x.is_cuda, f"{name} is on {x.device}; the CUDA launchers take CUDA tensors only"
    assert x.dtype in dtypes, f"{name} must be one of {dtypes}, got {x.dtype}"
    assert x.is_contiguous(), f"{name} must be contiguous (got strides {x.stride()})"


def check_qtensor(t, name):
    assert isinstance(t, QTensor), f"{name} must be a QTensor, got {type(t).__name__}"
    check_cuda(t.q, f"{name}.q", (torch.int8,))
    check_cuda(t.s, f"{name}.s", (torch.float32,))
    QB = t.qblock
    assert t.q.shape[0] % QB == 0 and t.q.shape[1] % QB == 0, \
        f"{name}.q has shape {tuple(t.q.shape)}, not padded to multiples of {QB}"
    assert t.s.shape == (t.q.shape[0] // QB, t.q.shape[1] // QB), \
        f"{name}.s has shape {tuple(t.s.shape)}, expected one scale per block of q"


# ---------------------------------------------------------------------------------------------
# launchers

# quantize_kernel's MIN_CTAS by (QB, TRANS) where not 1. At QB = 128 its 57 registers leave room for
# 2 CTAs of 512 threads; with the transposed copy (TRANS = 1) 3 CTAs of 40 registers (a few spill)
# take 0.73-0.95x the time, but the plain and transposed-only fp32 weights 1.1-1.3x
# (notes/quantize_occupancy_ab.log). At QB = 32 fewer registers did not pay.
QUANTIZE_MIN_CTAS = {(128, 1): 3}


def quantize_cuda(x, qblock=32, stochastic=False, generator=None, with_t=False,
                  transposed=False, parts=()):
    """x (..., C) fp32/bf16 CUDA, contiguous -> QTensor (and its transpose if with_t; only its
    transpose if transposed). parts: up to two more tensors like x, quantized as if
    concatenated after it along the last dimension (x's width a multiple of qblock)."""
    check_cuda(x, "x", (torch.float32, torch.bfloat16))
    assert x.dim() >= 1 and x.numel() > 0, f"x must be non-empty, got shape {tuple(x.shape)}"
    assert len(parts) <= 2, "the kernel takes up to 3 column parts"
    for p in parts:
        check_cuda(p, "parts", (x.dtype,))
        assert p.shape == x.shape and x.shape[-1] % qblock == 0, \
            f"parts must have x's shape {tuple(x.shape)}, a multiple of {qblock} wide"
    part_cols = x.shape[-1]
    C = part_cols * (1 + len(parts))
    rows = x.numel() // part_cols
    Rp, Cp = pad_to(rows, qblock), pad_to(C, qblock)
    Rb, Cb = Rp // qblock, Cp // qblock
    bf16 = x.dtype == torch.bfloat16
    vec = part_cols % (8 if bf16 else 4) == 0 and all(t.data_ptr() % 16 == 0 for t in (x,) + parts)
    trans = 2 if transposed else int(with_t)                # the kernel's TRANS
    dev = x.device
    plain = None if transposed else (torch.empty(Rp, Cp, dtype=torch.int8, device=dev),
                                     torch.empty(Rb, Cb, device=dev))
    tr = (torch.empty(Cp, Rp, dtype=torch.int8, device=dev),
          torch.empty(Cb, Rb, device=dev)) if trans else None
    (q, s), (qt, st) = plain or tr, tr or plain   # (a layout not written gets the other's)
    seed = draw_seed(generator) if stochastic else (np.uint32(0), np.uint32(0))
    kernel = get_kernel(QUANTIZE_SRC, "quantize_kernel",
                        (f"QB={qblock}", f"X_BF16={int(bf16)}", f"VEC={int(vec)}",
                         f"SR={int(stochastic)}", f"TRANS={trans}",
                         f"MIN_CTAS={QUANTIZE_MIN_CTAS.get((qblock, trans), 1)}"), x.device)
    x1, x2 = (parts + (x, x))[:2]                           # (unread where absent)
    launch(kernel, block_grid(Rb * Cb, qblock), (threads(qblock),),
           (x, x1, x2, np.int32(part_cols), np.int32(rows), np.int32(Rb), np.int32(Cb), q, s,
            qt, st, *seed, sr_salt(x.device), nonfinite_flag(x.device)))
    after_launch(x.device, "x")
    xt = QTensor(qt, st, torch.Size((C, rows)), qblock)
    if transposed:
        return xt
    t = QTensor(q, s, x.shape[:-1] + (C,), qblock)
    return (t, xt) if with_t else t


DQ_STEPS, DQ_WARPS = 4, 8      # dequantize: 4 x 128 columns per warp, 8 warps per CTA


def dequantize_cuda(t):
    """QTensor (no fallback plane) -> fp32 tensor of the logical shape."""
    check_qtensor(t, "t")
    assert not t.has_fallback, "dequantize_cuda takes plain QTensors (no fallback plane)"
    QB = t.qblock
    Rb, Cb = t.s.shape
    rows, C = t.rows, t.cols
    x = torch.empty(t.shape, dtype=torch.float32, device=t.device)
    steps, warps = DQ_STEPS, DQ_WARPS
    kernel = get_kernel(DEQUANTIZE_SRC, "dequantize_kernel",
                        (f"QB={QB}", f"VEC={int(C % 4 == 0)}", f"DQ_STEPS={steps}",
                         f"DQ_WARPS={warps}"), t.device)
    chunks = -(-C // (128 * steps))             # a warp's chunk: 128 * steps columns of a row
    launch(kernel, (-(-rows * chunks // warps),), (32 * warps,),
           (t.q, t.s, np.int32(Cb), x, np.int32(rows), np.int32(C), np.int32(chunks)))
    return x


def transpose_cuda(t):
    """QTensor -> its transpose (bytes and scale grid; the fallback plane, if any, by torch)."""
    check_qtensor(t, "t")
    QB = t.qblock
    Rb, Cb = t.s.shape
    qt = torch.empty(Cb * QB, Rb * QB, dtype=torch.int8, device=t.device)
    st = torch.empty(Cb, Rb, dtype=torch.float32, device=t.device)
    kernel = get_kernel(TRANSPOSE_SRC, "transpose_kernel", (f"QB={QB}", "PLANE=0"), t.device)
    launch(kernel, block_grid(Rb * Cb, QB), (threads(QB),),
           (t.q, t.s, np.int32(Rb), np.int32(Cb), qt, st))
    return with_transposed_plane(QTensor(qt, st, torch.Size((t.cols, t.rows)), QB), t)


def transpose_plane_cuda(q2):
    """A fallback plane's q2 (n, QB, QB) int8 CUDA -> each block transposed, (n, QB, QB)."""
    n, QB = q2.shape[0], q2.shape[1]
    out = torch.empty_like(q2, memory_format=torch.contiguous_format)
    if n:
        kernel = get_kernel(TRANSPOSE_SRC, "transpose_kernel", (f"QB={QB}", "PLANE=1"), q2.device)
        none = np.uint64(0)                                  # (the scales: none to move)
        launch(kernel, block_grid(n, QB), (threads(QB),),
               (q2.contiguous(), none, np.int32(n), np.int32(1), out, none))
    return out
