"""
CUDA kernel (CuPy RawKernel) for the forward of LayerNorm / RMSNorm with int8 blocks; the
contract is int8_norm.py (formulas and layouts there), the backward is int8_norm_bwd_cuda.py.

Forward: the fp32 residual x (rows, C) -> y_q, xhat_q (int8 blocks) + rstd (rows,). A block's
scale needs the absmax of QB rows x QB columns of y, and y needs its row's statistics, so a
strip of QB rows x C (256 KB at QB = 32, C = 2048) must be seen before its first byte is
written: more than one SM holds. A *cluster* of K <= 8 CTAs (Hopper thread-block clusters) owns
one strip at a time, CTA k the block columns [k*nblk, (k+1)*nblk) in quantize_cuda.py's block
layout (32 values per thread). The clusters are persistent (one wave) and walk the strips; x
comes in by cp.async through a ring of three strip slabs, read from DRAM once (4 bytes in, 2
out per element). Statistics: each block row gets (mean, M2 = centred sum of squares) two-pass
(the reference's two-pass variance), a CTA merges its blocks, and the CTAs send each other
their (mean, M2) by st.async, merged by Chan et al.'s parallel formula. The loop is software-
pipelined: iteration j sends strip j+1's shares, quantizes strip j, and only then waits for the
others' shares of j+1, on an mbarrier that counts their bytes. There is no cluster barrier in
the loop: barrier.cluster.arrive.release compiles to MEMBAR.ALL.GPU, which waits for every
store and copy the thread has in flight (75-79% of copy at C = 4096 with one per strip, 86-88%
without). Widths up to C = 4096 (QB = 32), 2048 (QB = 64), 1024 (QB = 128); wider rows (a wider
CTA slab would not fit the three-slab ring) take the wide path below: the rows' statistics by
one kernel, the blocks by another, x read twice.
"""
import ctypes
from functools import lru_cache

import numpy as np
import torch

from quantize import QTensor, get_kernel, launch, pad_to
from quantize_cuda import (COMMON, LOAD16_SRC, after_launch, block_grid, check_cuda,
                           nonfinite_flag, threads)

# shared with the backward (int8_norm_bwd_cuda.py), which needs cp.async too
ASYNC_SRC = r"""
// PTX wrappers for moving data asynchronously, one per instruction.
// cp.async: global -> shared memory without a trip through registers, completed by
// cp.async.wait_group; src_bytes = 0 writes zeros (rows and columns past the tensor)
__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
template <int BYTES> __device__ __forceinline__ void cp_async(void* dst, const void* src, bool ok) {
    if constexpr (BYTES == 16)                         // .cg: L2 only, the data is used once
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                     :: "r"(smem_addr(dst)), "l"(src), "r"(ok ? 16 : 0) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;"
                     :: "r"(smem_addr(dst)), "l"(src), "r"(ok ? 4 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }
// Between the CTAs of a cluster (sm_90): st.async stores 8 bytes into CTA `rank`'s copy of *p
// and counts them on its copy of the mbarrier *bar (tx bytes), for the receiver to wait on
typedef unsigned long long u64;
__device__ __forceinline__ void st_async(float2* p, u64* bar, u32 rank, float2 v) {
    u32 ra, rb;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(smem_addr(p)), "r"(rank));
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(rb) : "r"(smem_addr(bar)), "r"(rank));
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];"
                 :: "r"(ra), "f"(v.x), "f"(v.y), "r"(rb) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u64* bar, u32 tx_bytes) {   // ... and expect tx_bytes
    asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;"
                 :: "r"(smem_addr(bar)), "r"(tx_bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(u64* bar, u32 parity) {
    u32 done = 0;
    while (!done)
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;"
                     " selp.u32 %0, 1, 0, p; }" : "=r"(done) : "r"(smem_addr(bar)), "r"(parity) : "memory");
}
__device__ __forceinline__ void cluster_sync() {       // all threads of all K CTAs
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
"""

# what both forward kernels (the cluster one and the wide one) quantize with
STORE_SRC = r"""
__device__ __forceinline__ float max_nan(float a, float b) {  // max that keeps a NaN (sm_80+)
    float d;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
    return d;
}
__device__ __forceinline__ float ncols(int C, int c, int width) {   // columns of [c, c+width) in C
    return (float)min(max(C - c, 0), width);
}
__device__ __forceinline__ void lds16(const float* p, float v[16]) {  // 16 floats, 4 x LDS.128
#pragma unroll
    for (int m = 0; m < 4; ++m) *(float4*)(v + 4 * m) = *(const float4*)(p + 4 * m);
}

// RTN of 16 values. With inv from the block's own absmax |v * inv| <= 127 (1 + 2^-22), which
// rounds to 127 at most, so quant16's clamps matter only for tiny blocks, where inv may overflow
__device__ __forceinline__ uint4 rtn16(const float v[16], float inv) {
    if (inv > 1e30f) return quant16(v, inv, false, 0u);
    u32 b[16];
#pragma unroll
    for (int k = 0; k < 16; ++k) b[k] = __float_as_uint(__fadd_rn(__fmul_rn(v[k], inv), 12582912.0f));
    return make_uint4(pack4(b[0], b[1], b[2], b[3]), pack4(b[4], b[5], b[6], b[7]),
                      pack4(b[8], b[9], b[10], b[11]), pack4(b[12], b[13], b[14], b[15]));
}

// quantize the thread's two units of one block and store them; the scale from the group's
// absmax (NaN/Inf -> +inf first: fmaxf in group_max would drop a NaN)
__device__ __forceinline__ void store_block(const float v[2][16], float amax, float* red, i8* q,
                                            float* s, long long o, int Cp, int sidx, bool live,
                                            bool leader, int* flag) {
    amax = group_max(amax <= FLT_BIG ? amax : __int_as_float(0x7f800000), red);
    float inv;
    const float sc = block_scale(amax, &inv, flag, live && leader);
    const uint4 p0 = rtn16(v[0], inv), p1 = rtn16(v[1], inv);
    if (live) {
        __stcs((uint4*)(q + o), p0);
        __stcs((uint4*)(q + o + (long long)HALF * Cp), p1);
        if (leader) s[sidx] = sc;
    }
}
"""

NORM_FWD_SRC = COMMON + ASYNC_SRC + STORE_SRC + r"""
// K: CTAs per cluster; LN: LayerNorm (else RMSNorm); BIAS; VEC: 16-byte copies (C % 4 == 0)
#define STAGES 3                                     // ring slots: strips j, j+1, j+2
#define PER (VEC ? 4 : 1)                            // floats per cp.async

// cp.async the CTA's slab of the strip at row r0 (QB rows x W columns from c0) into buf, rows
// LD = W + 4 floats apart (the 8 threads of a quarter warp then read distinct banks)
__device__ __forceinline__ void load_slab(float* buf, const float* x, int r0, int c0, int W,
                                          int rows, int C) {
    const int LD = W + 4, row = threadIdx.x / (W / PER), col = threadIdx.x % (W / PER) * PER;
#pragma unroll 8
    for (int i = 0; i < 32 / PER; ++i) {               // QB * W floats over W * QB / 32 threads
        const int r = row + i * (QB * PER / 32);
        const bool ok = r0 + r < rows && c0 + col < C;
        cp_async<4 * PER>(buf + r * LD + col, ok ? x + (long long)(r0 + r) * C + c0 + col : x, ok);
    }
}

extern "C" __global__ void __cluster_dims__(K, 1, 1) __launch_bounds__(512, 1)
norm_fwd_kernel(const float* __restrict__ x, const float* __restrict__ w,
                const float* __restrict__ bias, int rows, int C, int Rb, int Cb, float eps,
                i8* __restrict__ yq, float* __restrict__ ys, i8* __restrict__ xq,
                float* __restrict__ xs, float* __restrict__ rstd_out, float* __restrict__ mean_out,
                int* flag) {
    extern __shared__ __align__(16) float ring[];      // [STAGES][QB][LD] x of a strip's slab
    __shared__ float red[32];
    __shared__ float2 part[16384 / QB];                // [block][row] (mean, M2) of a block row
    __shared__ float2 mail[2][K][QB];                  // [strip & 1][CTA][row]: every CTA's share
    __shared__ float2 rowstat[2][QB];                  // [strip & 1][row] (mean, rstd)
    __shared__ __align__(8) u64 mail_in[2];            // [strip & 1]: mail is complete
    const u32 rank = blockIdx.x;                       // gridDim.x == K: the rank in the cluster
    const int nblk = blockDim.x / G, g = threadIdx.x / G, t = threadIdx.x % G;
    const int W = nblk * QB, LD = W + 4, SLAB = QB * LD, c0 = rank * W, Cp = Cb * QB;
    const int b0 = rank * nblk, bj = b0 + g, rr = t / TPR, cl = g * QB + (t % TPR) * 16, c = c0 + cl;
    const int nvalid = min(max(C - c, 0), 16);         // this thread's columns inside C
    const bool live = bj < Cb, leader = t == 0;
    const int combiner = blockDim.x - QB;              // threads from here merge the K shares
    float wv[16], bv[16];
#pragma unroll
    for (int k = 0; k < 16; ++k) {
        wv[k] = k < nvalid ? w[c + k] : 0.0f;
        bv[k] = BIAS && k < nvalid ? bias[c + k] : 0.0f;
    }
    const int nstrip = (Rb - blockIdx.y + gridDim.y - 1) / gridDim.y;   // strips blockIdx.y + j gridDim.y
    load_slab(ring, x, blockIdx.y * QB, c0, W, rows, C);
    cp_async_commit();
    if (threadIdx.x == 0) {                            // a phase: QB local shares + the combiner's
        for (int p = 0; p < 2; ++p)                    // arrival, and the others' bytes
            asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(smem_addr(&mail_in[p])), "r"(QB + 1));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    cluster_sync();                                    // every CTA runs: its shared memory may be written
    for (int j = -1; j < nstrip; ++j) {                // j: the strip to quantize, sn: the next one
        const int sn = j + 1, bi = blockIdx.y + j * gridDim.y, bn = bi + gridDim.y;
        cp_async_wait_all();
        __syncthreads();                               // slab sn is in; slab j-1 and rowstat[sn & 1] are free
        if (j + 2 < nstrip)
            load_slab(ring + (j + 2) % STAGES * SLAB, x, (bn + gridDim.y) * QB, c0, W, rows, C);
        cp_async_commit();

        // --- statistics of strip sn: (mean, M2) of each block row over its TPR threads ---
        if (sn < nstrip) {
            const float* buf = ring + sn % STAGES * SLAB;
            const float inv_ng = live ? 1.0f / ncols(C, bj * QB, QB) : 0.0f;
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                float v[16], mean = 0.0f, M2 = 0.0f;
                lds16(buf + (rr + i * HALF) * LD + cl, v);
#if LN
                float s = 0.0f;
#pragma unroll
                for (int k = 0; k < 16; ++k) s += v[k];              // zeros past C
#pragma unroll
                for (int o = 1; o < TPR; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                mean = s * inv_ng;
#pragma unroll
                for (int k = 0; k < 16; ++k) v[k] = k < nvalid ? v[k] - mean : 0.0f;
#endif
#pragma unroll
                for (int k = 0; k < 16; ++k) M2 = fmaf(v[k], v[k], M2);
#pragma unroll
                for (int o = 1; o < TPR; o <<= 1) M2 += __shfl_xor_sync(0xffffffffu, M2, o);
                if (t % TPR == 0) part[g * QB + rr + i * HALF] = make_float2(mean, M2);
            }
        }
        __syncthreads();
        // the CTA's share of each row, sent to all K CTAs. Parts of a row merge by Chan et al.'s
        // parallel form: mean = sum_p n_p mean_p / n, M2 = sum_p (M2_p + n_p (mean_p - mean)^2),
        // so no part's variance cancels (RMSNorm: means 0, M2 = sum x^2, the formula is a sum)
        if (sn < nstrip && threadIdx.x < QB) {
            float mk = 0.0f, M2k = 0.0f;
#if LN
            for (int b = 0; b < nblk; ++b) mk += ncols(C, (b0 + b) * QB, QB) * part[b * QB + threadIdx.x].x;
            mk /= ncols(C, c0, W);
#endif
            for (int b = 0; b < nblk; ++b) {
                const float2 p = part[b * QB + threadIdx.x];
                const float d = p.x - mk;
                M2k += p.y + ncols(C, (b0 + b) * QB, QB) * d * d;
            }
            const float2 share = make_float2(mk, M2k);
            for (u32 r = 0; r < K; ++r)
                if (r != rank) st_async(&mail[sn & 1][rank][threadIdx.x], &mail_in[sn & 1], r, share);
            mail[sn & 1][rank][threadIdx.x] = share;
            mbar_arrive(&mail_in[sn & 1], 0);
        }

        // --- quantize strip j: xhat = (x - mean) * rstd rounded as the reference, then
        // y = xhat * w (+ b) in place; both zero outside the logical (rows, C) ---
        if (j >= 0) {
            const float* buf = ring + j % STAGES * SLAB;
            const bool rok[2] = {bi * QB + rr < rows, bi * QB + rr + HALF < rows};
            const bool full = nvalid == 16 && rok[1];
            float v[2][16], amax = 0.0f;
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const float2 st = rowstat[j & 1][rr + i * HALF];
                lds16(buf + (rr + i * HALF) * LD + cl, v[i]);
#pragma unroll
                for (int k = 0; k < 16; ++k) {
                    v[i][k] = __fmul_rn(v[i][k] - st.x, st.y);
                    if (!full && (!rok[i] || k >= nvalid)) v[i][k] = 0.0f;
                    amax = max_nan(amax, fabsf(v[i][k]));
                }
            }
            const long long o = (long long)(bi * QB + rr) * Cp + c;
            store_block(v, amax, red, xq, xs, o, Cp, bi * Cb + bj, live, leader, flag);
            amax = 0.0f;
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int k = 0; k < 16; ++k) {
                    const float y = __fmul_rn(v[i][k], wv[k]);
                    v[i][k] = BIAS ? __fadd_rn(y, bv[k]) : y;
                    if (!full && !rok[i]) v[i][k] = 0.0f;  // past C, w and b are 0 already
                    amax = max_nan(amax, fabsf(v[i][k]));
                }
            store_block(v, amax, red, yq, ys, o, Cp, bi * Cb + bj, live, leader, flag);
        }

        // --- the K shares of strip sn -> its rows' (mean, rstd), in the same order everywhere.
        // mail[sn & 1] is rewritten only for strip sn + 2, which no CTA sends before it has all
        // shares of sn + 1, which this CTA sends only after this point: no overwrite race ---
        if (sn < nstrip && (int)threadIdx.x >= combiner) {
            const int row = threadIdx.x - combiner;
            if (row == 0) mbar_arrive(&mail_in[sn & 1], (K - 1) * QB * 8);   // the others' bytes
            mbar_wait(&mail_in[sn & 1], (sn >> 1) & 1);
            float mean = 0.0f, M2 = 0.0f;
#if LN
#pragma unroll
            for (int k = 0; k < K; ++k) mean += ncols(C, k * W, W) * mail[sn & 1][k][row].x;
            mean = __fdiv_rn(mean, (float)C);
#endif
#pragma unroll
            for (int k = 0; k < K; ++k) {
                const float2 p = mail[sn & 1][k][row];
                const float d = p.x - mean;
                M2 += p.y + ncols(C, k * W, W) * d * d;
            }
            const float rs = 1.0f / sqrtf(__fdiv_rn(M2, (float)C) + eps);
            rowstat[sn & 1][row] = make_float2(mean, rs);
            if (rank == 0 && bn * QB + row < rows) {
                rstd_out[bn * QB + row] = rs;
                if (mean_out) mean_out[bn * QB + row] = mean;   // (for a fallback plane's recompute)
            }
        }
    }
    cluster_sync();                                    // nobody leaves with its st.async in flight
}
"""

# The wide path: rows too wide for one cluster at this QB (a CTA of 512 threads holds 16, 4 or 1
# blocks of QB = 32, 64, 128, a cluster 8 CTAs: C > 4096, 2048, 1024). Two kernels, x read twice
# (8 bytes in, 2 out per element, against the cluster kernel's 4 in, 2 out): the rows' statistics,
# then every block on its own, as quantize_cuda.py lays a block over its threads.
NORM_WIDE_SRC = COMMON + STORE_SRC + LOAD16_SRC + r"""
// LN: LayerNorm (else RMSNorm); BIAS; VEC: 16-byte loads (C % 4 == 0 and x 16-byte aligned)

// (mean, rstd) of each row, a warp a row: 512 columns at a time (a float4 a lane, 4 times),
// each segment two-pass from registers (its mean, then its centred sum of squares M2, as the
// reference's two-pass variance), merged into the row's by Chan et al.'s parallel formula
// mean = mean_a + d n_b / n, M2 = M2_a + M2_b + d^2 n_a n_b / n (d = mean_b - mean_a).
// RMSNorm: means 0, M2 = the sum of x^2.
extern "C" __global__ void __launch_bounds__(256)
norm_stats_kernel(const float* __restrict__ x, int rows, int C, float eps,
                  float2* __restrict__ stat, float* __restrict__ rstd_out,
                  float* __restrict__ mean_out) {
    const int row = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* xr = x + (long long)row * C;
    float n = 0.0f, mean = 0.0f, M2 = 0.0f;
    for (int c0 = 0; c0 < C; c0 += 512) {
        float v[16];
#pragma unroll
        for (int i = 0; i < 4; ++i) {                  // columns c0 + 128 i + 4 lane + (0..3)
            const int c = c0 + 128 * i + 4 * lane;
            if (VEC && c + 4 <= C) {
                const float4 f = __ldg((const float4*)(xr + c));
                v[4 * i] = f.x; v[4 * i + 1] = f.y; v[4 * i + 2] = f.z; v[4 * i + 3] = f.w;
            } else {
#pragma unroll
                for (int k = 0; k < 4; ++k) v[4 * i + k] = c + k < C ? __ldg(xr + c + k) : 0.0f;
            }
        }
        const float nb = ncols(C, c0, 512);
        float mb = 0.0f, M2b = 0.0f;
#if LN
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 16; ++k) s += v[k];                       // zeros past C
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        mb = s / nb;
#pragma unroll
        for (int k = 0; k < 16; ++k)
            v[k] = c0 + 128 * (k / 4) + 4 * lane + k % 4 < C ? v[k] - mb : 0.0f;
#endif
#pragma unroll
        for (int k = 0; k < 16; ++k) M2b = fmaf(v[k], v[k], M2b);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) M2b += __shfl_xor_sync(0xffffffffu, M2b, o);
        const float nt = n + nb, d = mb - mean;
        mean += d * (nb / nt);
        M2 += M2b + d * d * (n * nb / nt);
        n = nt;
    }
    const float rs = 1.0f / sqrtf(__fdiv_rn(M2, (float)C) + eps);
    if (lane == 0) {
        stat[row] = make_float2(mean, rs);
        rstd_out[row] = rs;
        if (mean_out) mean_out[row] = mean;
    }
}

// Then a group of G threads a block (GPC blocks to a CTA): xhat = (x - mean) * rstd and
// y = xhat * w (+ b), each quantized with its block's absmax, as the cluster kernel rounds them.
// QB = 128: two CTAs an SM (64 registers a thread), else one 512-thread CTA would leave the SM
// idle at each of its group_max barriers
extern "C" __global__ void __launch_bounds__(NT, QB == 128 ? 2 : 1)
norm_quant_kernel(const float* __restrict__ x, const float2* __restrict__ stat,
                  const float* __restrict__ w, const float* __restrict__ bias, int rows, int C,
                  int Cb, i8* __restrict__ yq, float* __restrict__ ys, i8* __restrict__ xq,
                  float* __restrict__ xs, int* flag) {
    __shared__ float red[32];
    const int g = threadIdx.x / G, t = threadIdx.x % G, bi = blockIdx.y, bj = blockIdx.x * GPC + g;
    const int Cp = Cb * QB, r = bi * QB + t / TPR, c = bj * QB + (t % TPR) * 16;
    const int nvalid = min(max(C - c, 0), 16);         // this thread's columns inside C
    const bool live = bj < Cb, leader = t == 0;
    float v[2][16], amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int ri = r + i * HALF;
        const float2 st = ri < rows ? stat[ri] : make_float2(0.0f, 0.0f);
        load16(x, ri, c, rows, C, v[i]);             // (the last read of x: __ldcs)
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            v[i][k] = ri < rows && k < nvalid ? __fmul_rn(v[i][k] - st.x, st.y) : 0.0f;
            amax = max_nan(amax, fabsf(v[i][k]));
        }
    }
    const long long o = (long long)r * Cp + c;
    store_block(v, amax, red, xq, xs, o, Cp, bi * Cb + bj, live, leader, flag);
    float wv[16], bv[16];
#pragma unroll
    for (int k = 0; k < 16; ++k) {
        wv[k] = k < nvalid ? w[c + k] : 0.0f;
        bv[k] = BIAS && k < nvalid ? bias[c + k] : 0.0f;
    }
    amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            const float y = __fmul_rn(v[i][k], wv[k]);
            v[i][k] = r + i * HALF < rows ? (BIAS ? __fadd_rn(y, bv[k]) : y) : 0.0f;
            amax = max_nan(amax, fabsf(v[i][k]));
        }
    store_block(v, amax, red, yq, ys, o, Cp, bi * Cb + bj, live, leader, flag);
}
"""


class _LaunchConfig(ctypes.Structure):          # the driver API's CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared_mem", ctypes.c_uint), ("stream", ctypes.c_void_p),
                ("attrs", ctypes.c_void_p), ("num_attrs", ctypes.c_uint)]


_smem_opt_in = {}


def set_smem(kernel, smem):
    """Let the kernel use smem bytes of dynamic shared memory (over 48 KB needs an opt-in); the
    limit only grows, since one compiled kernel serves several widths."""
    if _smem_opt_in.get(kernel, 0) < smem:
        kernel.max_dynamic_shared_size_bytes = smem
        _smem_opt_in[kernel] = smem


@lru_cache(maxsize=None)
def max_active_clusters(kernel, K, threads, smem):
    """How many K-CTA clusters of `kernel` fit on the GPU at once. The forward's grid is one
    persistent wave of them: a single cluster more would run alone, after all the others."""
    set_smem(kernel, smem)
    cfg = _LaunchConfig((K, 1, 1), (threads, 1, 1), smem, None, None, 0)
    n = ctypes.c_int(0)
    function = getattr(kernel, "kernel", kernel)              # a RawKernel's CUfunction holder
    err = ctypes.CDLL("libcuda.so.1").cuOccupancyMaxActiveClusters(
        ctypes.byref(n), ctypes.c_void_p(function.ptr), ctypes.byref(cfg))
    if err == 0 and n.value > 0:
        return n.value
    # no answer from the driver: count by shared memory and threads, one SM short per cluster
    per_sm = min(2048 // threads, (220 * 1024) // (smem + 16384))
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return max(1, (sms - K) * per_sm // K)


def fwd_config(C, qblock):
    """(K CTAs per cluster, nblk blocks per CTA) for a row of C, or None if it does not fit
    (a CTA takes 512 threads at most, i.e. 16, 4 or 1 blocks of QB = 32, 64, 128): then
    norm_fwd_cuda takes the wide path."""
    G = qblock * qblock // 32
    Cb = pad_to(C, qblock) // qblock
    nblk = -(-Cb // min(8, Cb))                                # 8: the portable cluster size
    if nblk * G > 512:
        return None
    return -(-Cb // nblk), nblk


def norm_fwd_cuda(x, weight, bias, qblock, eps, layernorm, mean=None):
    """x (..., C) fp32 CUDA -> (y_q, xhat_q, rstd). See int8_norm.layernorm_fwd_ref.
    mean: a (rows,) fp32 tensor that gets the rows' means (LayerNorm; what a fallback plane's
    recompute of y needs, the very values the kernel used), or None."""
    check_cuda(x, "x", (torch.float32,))
    check_cuda(weight, "weight", (torch.float32,))
    C = x.shape[-1]
    assert weight.shape == (C,), f"weight must have shape ({C},), got {tuple(weight.shape)}"
    if bias is not None:
        check_cuda(bias, "bias", (torch.float32,))
        assert bias.shape == (C,), f"bias must have shape ({C},), got {tuple(bias.shape)}"
    rows = x.numel() // C
    Rb, Cb = pad_to(rows, qblock) // qblock, pad_to(C, qblock) // qblock
    dev = x.device
    y_q, xhat_q = (QTensor(torch.empty(Rb * qblock, Cb * qblock, dtype=torch.int8, device=dev),
                           torch.empty(Rb, Cb, device=dev), x.shape, qblock) for _ in range(2))
    rstd = torch.empty(rows, device=dev)
    if mean is not None:
        check_cuda(mean, "mean", (torch.float32,))
        assert mean.shape == (rows,) and mean.is_contiguous(), "mean must be a contiguous (rows,)"
    mean_ptr = mean if mean is not None else np.uint64(0)
    vec = C % 4 == 0 and x.data_ptr() % 16 == 0
    cfg = fwd_config(C, qblock)
    if cfg is None:                                            # too wide for a cluster
        _norm_fwd_wide(x, weight, bias, rows, C, Cb, eps, layernorm, vec, y_q, xhat_q, rstd,
                       mean_ptr)
        after_launch(dev, "x")
        return y_q, xhat_q, rstd
    K, nblk = cfg
    kernel = get_kernel(NORM_FWD_SRC, "norm_fwd_kernel",
                        (f"QB={qblock}", f"K={K}", f"LN={int(layernorm)}",
                         f"BIAS={int(bias is not None)}", f"VEC={int(vec)}"), dev)
    threads = nblk * qblock * qblock // 32
    smem = 3 * qblock * (nblk * qblock + 4) * 4                # the ring: 3 slabs of x
    n_clusters = min(Rb, max_active_clusters(kernel, K, threads, smem))   # one persistent wave
    launch(kernel, (K, n_clusters), (threads,),
           (x, weight, bias if bias is not None else weight, np.int32(rows), np.int32(C),
            np.int32(Rb), np.int32(Cb), np.float32(eps), y_q.q, y_q.s, xhat_q.q, xhat_q.s, rstd,
            mean_ptr, nonfinite_flag(dev)), shared_mem=smem)
    after_launch(dev, "x")
    return y_q, xhat_q, rstd


def _norm_fwd_wide(x, weight, bias, rows, C, Cb, eps, layernorm, vec, y_q, xhat_q, rstd, mean):
    """The wide path (NORM_WIDE_SRC): norm_stats_kernel, then norm_quant_kernel."""
    dev, QB = x.device, y_q.qblock
    defines = (f"QB={QB}", f"LN={int(layernorm)}", f"BIAS={int(bias is not None)}",
               f"VEC={int(vec)}", "X_BF16=0")
    stat = torch.empty(rows, 2, device=dev)                    # (mean, rstd) per row
    launch(get_kernel(NORM_WIDE_SRC, "norm_stats_kernel", defines, dev), (-(-rows // 8),),
           (256,), (x, np.int32(rows), np.int32(C), np.float32(eps), stat, rstd, mean))
    launch(get_kernel(NORM_WIDE_SRC, "norm_quant_kernel", defines, dev),
           (block_grid(Cb, QB)[0], y_q.q.shape[0] // QB), (threads(QB),),
           (x, stat, weight, bias if bias is not None else weight, np.int32(rows), np.int32(C),
            np.int32(Cb), y_q.q, y_q.s, xhat_q.q, xhat_q.s, nonfinite_flag(dev)))
