"""
CUDA kernels (CuPy RawKernels) for LayerNorm / RMSNorm with int8 blocks; the contract is
int8_norm.py (formulas and layouts there).

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
without). Widths up to C = 4096 (QB = 32), 2048 (QB = 64), 1024 (QB = 128); wider rows take
the reference (a wider CTA slab would not fit the three-slab ring).

Backward: dy_q, xhat_q (int8 blocks), rstd, w -> dx (rows, C) fp32, dw, db. Only row sums are
needed (sum g, sum g*xhat), so a CTA spreads one row over its threads (16 columns each) and
takes RB = 4 rows at a time; each thread cp.asyncs its bytes of the next batch into shared
memory while it works on this one. dx leaves through a per-warp stage so that each store
instruction writes 512 contiguous bytes (a thread storing its own 64 bytes ran at 1.6 TB/s,
coalesced at 2.9). dw = sum_rows dy*xhat and db = sum_rows dy stay in registers (a thread owns
the same columns throughout); each CTA writes one partial row and colsum_kernel adds the ~500
partials in a fixed order (deterministic, unlike float atomics; 4 us where torch's took 15).
"""
import ctypes
from functools import lru_cache

import numpy as np
import torch

from quantize import QTensor, get_kernel, launch, pad_to
from quantize_cuda import COMMON, after_launch, check_cuda, check_qtensor, nonfinite_flag

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

NORM_FWD_SRC = COMMON + ASYNC_SRC + r"""
// K: CTAs per cluster; LN: LayerNorm (else RMSNorm); BIAS; VEC: 16-byte copies (C % 4 == 0)
#define STAGES 3                                     // ring slots: strips j, j+1, j+2
#define PER (VEC ? 4 : 1)                            // floats per cp.async
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

extern "C" __global__ void __cluster_dims__(K, 1, 1) __launch_bounds__(512, 1)
norm_fwd_kernel(const float* __restrict__ x, const float* __restrict__ w,
                const float* __restrict__ bias, int rows, int C, int Rb, int Cb, float eps,
                i8* __restrict__ yq, float* __restrict__ ys, i8* __restrict__ xq,
                float* __restrict__ xs, float* __restrict__ rstd_out, int* flag) {
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
            if (rank == 0 && bn * QB + row < rows) rstd_out[bn * QB + row] = rs;
        }
    }
    cluster_sync();                                    // nobody leaves with its st.async in flight
}
"""

NORM_BWD_SRC = COMMON + ASYNC_SRC + r"""
// LN: LayerNorm (else RMSNorm); SEG: 16-column segments per thread (1, 2, 4); VEC: C % 4 == 0
#define RB (4 / SEG)                    // rows per batch; RB divides QB: one row of scale blocks

// unpack16 * sc, with the byte moves volatile: the compiler re-derives the floats where they
// are used instead of keeping RB rows x 32 floats live (it spilled otherwise)
__device__ __forceinline__ void deq16(uint4 p, float sc, float v[16]) {
    const u32 w[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            u32 bits;
            asm volatile("prmt.b32 %0, %1, %2, %3;"
                         : "=r"(bits) : "r"(w[i] ^ 0x80808080u), "r"(0x4B000000u), "r"(0x7540u | k));
            v[4 * i + k] = __fmul_rn(__int_as_float(bits) - 8388736.0f, sc);
        }
}

// rows r0 .. r0+RB-1: the thread's 16-byte pieces of dy and xhat by cp.async into its own
// slots of buf (zeros outside the tensor), the batch's scales and rstd into registers
__device__ __forceinline__ void load_batch(uint4* buf, float sc[2][SEG], float rs[RB],
                                           const i8* dyq, const float* dys, const i8* xq,
                                           const float* xs, const float* rstd, int r0, int r_end,
                                           int Cp) {
    const int nseg = Cp / 16;
#pragma unroll
    for (int s = 0; s < SEG; ++s) {
        const int seg = threadIdx.x + s * blockDim.x;
#pragma unroll
        for (int j = 0; j < RB; ++j) {
            const bool in = r0 + j < r_end && seg < nseg;
            const long long o = in ? (long long)(r0 + j) * Cp + seg * 16 : 0;
            cp_async<16>(buf + (2 * (j * SEG + s)) * blockDim.x, dyq + o, in);
            cp_async<16>(buf + (2 * (j * SEG + s) + 1) * blockDim.x, xq + o, in);
        }
        const bool in = r0 < r_end && seg < nseg;
        const long long k = (long long)(r0 / QB) * (Cp / QB) + seg * 16 / QB;
        sc[0][s] = in ? dys[k] : 0.0f;
        sc[1][s] = in ? xs[k] : 0.0f;
    }
    cp_async_commit();
#pragma unroll
    for (int j = 0; j < RB; ++j) rs[j] = r0 + j < r_end ? rstd[r0 + j] : 0.0f;
}

extern "C" __global__ void __launch_bounds__(512)
norm_bwd_kernel(const i8* __restrict__ dyq, const float* __restrict__ dys,
                const i8* __restrict__ xq, const float* __restrict__ xs,
                const float* __restrict__ rstd, const float* __restrict__ w,
                int rows, int C, int Cp, int rows_per_cta,
                float* __restrict__ dx, float* __restrict__ dw_part, float* __restrict__ db_part) {
    __shared__ float red[2][32][2 * RB];           // double buffered: one barrier per batch
    // dynamic shared memory: [warp][128] float4, a warp's row of dx on its way out, then
    // [2][2 RB SEG][thread] uint4, two batches of the thread's bytes (only it touches them)
    extern __shared__ uint4 smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
    uint4* keep = smem + blockDim.x * 4 + threadIdx.x;
    const int NB = 2 * RB * SEG * blockDim.x;      // uint4 per batch buffer
    float wv[SEG][16], dwa[SEG][16], dba[SEG][16];
#pragma unroll
    for (int s = 0; s < SEG; ++s) {
        const int c = (threadIdx.x + s * blockDim.x) * 16;
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            wv[s][k] = c + k < C ? w[c + k] : 0.0f;
            dwa[s][k] = dba[s][k] = 0.0f;
        }
    }
    const int r_begin = blockIdx.x * rows_per_cta, r_end = min(rows, r_begin + rows_per_cta);
    float sc[2][SEG], rs[RB];                      // scales and rstd of the batch in flight
    load_batch(keep, sc, rs, dyq, dys, xq, xs, rstd, r_begin, r_end, Cp);
    for (int r0 = r_begin, batch = 0; r0 < r_end; r0 += RB, ++batch) {
        const uint4* cur = keep + (batch & 1) * NB;
        float scb[2][SEG], rsb[RB];
#pragma unroll
        for (int s = 0; s < SEG; ++s) scb[0][s] = sc[0][s], scb[1][s] = sc[1][s];
#pragma unroll
        for (int j = 0; j < RB; ++j) rsb[j] = rs[j];
        cp_async_wait_all();                       // this batch's bytes are in; the next one's
        if (r0 + RB < r_end)
            load_batch(keep + ((batch + 1) & 1) * NB, sc, rs, dyq, dys, xq, xs, rstd, r0 + RB, r_end, Cp);
        // row sums of g = dy * w and g * xhat over this thread's columns, then over the CTA
        float sums[2 * RB];
#pragma unroll
        for (int j = 0; j < RB; ++j) {
            float sg = 0.0f, sgx = 0.0f;
#pragma unroll
            for (int s = 0; s < SEG; ++s) {
                float dy[16], xh[16];
                deq16(cur[(2 * (j * SEG + s)) * blockDim.x], scb[0][s], dy);
                deq16(cur[(2 * (j * SEG + s) + 1) * blockDim.x], scb[1][s], xh);
#pragma unroll
                for (int k = 0; k < 16; ++k) {
                    const float gk = dy[k] * wv[s][k];
                    sg += gk;
                    sgx += gk * xh[k];
                }
            }
            sums[2 * j] = sg;
            sums[2 * j + 1] = sgx;
        }
#pragma unroll
        for (int m = 0; m < 2 * RB; ++m)
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) sums[m] += __shfl_xor_sync(0xffffffffu, sums[m], o);
        float* red_b = &red[batch & 1][0][0];
        if (lane == 0)
#pragma unroll
            for (int m = 0; m < 2 * RB; ++m) red_b[warp * 2 * RB + m] = sums[m];
        __syncthreads();
#pragma unroll
        for (int m = 0; m < 2 * RB; ++m) sums[m] = 0.0f;
        for (int q = 0; q < nwarp; ++q)
#pragma unroll
            for (int m = 0; m < 2 * RB; ++m) sums[m] += red_b[q * 2 * RB + m];
        // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); dw += dy * xhat; db += dy
#pragma unroll
        for (int j = 0; j < RB; ++j) {
            const int r = r0 + j;
            if (r >= r_end) break;
            const float mg = LN ? sums[2 * j] / C : 0.0f, mgx = sums[2 * j + 1] / C;
#pragma unroll
            for (int s = 0; s < SEG; ++s) {
                const int c = (threadIdx.x + s * blockDim.x) * 16;
                float dy[16], xh[16], o[16];
                deq16(cur[(2 * (j * SEG + s)) * blockDim.x], scb[0][s], dy);      // zeros past Cp
                deq16(cur[(2 * (j * SEG + s) + 1) * blockDim.x], scb[1][s], xh);
#pragma unroll
                for (int k = 0; k < 16; ++k) {
                    o[k] = rsb[j] * (dy[k] * wv[s][k] - mg - xh[k] * mgx);
                    dwa[s][k] += dy[k] * xh[k];
                    dba[s][k] += dy[k];
                }
#if VEC
                // the warp's 512 columns leave through shared memory, so that every store
                // instruction writes 512 contiguous bytes. Float4 m of lane l sits at
                // 4l + (m ^ (l & 3)): 2-way bank conflicts on the way in, none out.
                float4* stage = (float4*)smem + warp * 128;
#pragma unroll
                for (int m = 0; m < 4; ++m)
                    stage[4 * lane + (m ^ (lane & 3))] = make_float4(o[4 * m], o[4 * m + 1], o[4 * m + 2], o[4 * m + 3]);
                __syncwarp();
                float* out = dx + (long long)r * C + (c - lane * 16);      // the warp's first column
#pragma unroll
                for (int m = 0; m < 4; ++m) {
                    const int q = m * 32 + lane, owner = q >> 2;           // float4 q of the warp
                    if (c - lane * 16 + 4 * q < C)
                        __stcs((float4*)out + q, stage[4 * owner + ((q & 3) ^ (owner & 3))]);
                }
                __syncwarp();                           // stage is free for the next row
#else
                float* out = dx + (long long)r * C + c;
#pragma unroll
                for (int k = 0; k < 16; ++k)
                    if (c + k < C) out[k] = o[k];
#endif
            }
        }
    }
#pragma unroll
    for (int s = 0; s < SEG; ++s) {
        const int c = (threadIdx.x + s * blockDim.x) * 16;
        if (c >= Cp) continue;
#pragma unroll
        for (int m = 0; m < 4; ++m) {
            ((float4*)(dw_part + (long long)blockIdx.x * Cp + c))[m] =
                make_float4(dwa[s][4 * m], dwa[s][4 * m + 1], dwa[s][4 * m + 2], dwa[s][4 * m + 3]);
#if LN
            ((float4*)(db_part + (long long)blockIdx.x * Cp + c))[m] =
                make_float4(dba[s][4 * m], dba[s][4 * m + 1], dba[s][4 * m + 2], dba[s][4 * m + 3]);
#endif
        }
    }
}

"""


COLSUM_SRC = r"""
// out[z][c] = sum over p of part[z][p][c], p in a fixed order: 8 warps of a CTA take every
// 8th row of 32 columns, then one warp adds the 8 sums (deterministic, unlike atomics)
extern "C" __global__ void __launch_bounds__(256)
colsum_kernel(const float* __restrict__ part, int P, int C, int Cp, float* __restrict__ out) {
    __shared__ float acc[8][33];
    const int c = blockIdx.x * 32 + (threadIdx.x & 31), p0 = threadIdx.x >> 5;
    part += (long long)blockIdx.y * P * Cp;
    float s = 0.0f;
    if (c < C)
#pragma unroll 8
        for (int p = p0; p < P; p += 8) s += part[(long long)p * Cp + c];
    acc[p0][threadIdx.x & 31] = s;
    __syncthreads();
    if (threadIdx.x < 32 && c < C) {
        float t = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; ++k) t += acc[k][threadIdx.x];
        out[blockIdx.y * C + c] = t;
    }
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
    (a CTA takes 512 threads at most, i.e. 16, 4 or 1 blocks of QB = 32, 64, 128)."""
    G = qblock * qblock // 32
    Cb = pad_to(C, qblock) // qblock
    nblk = -(-Cb // min(8, Cb))                                # 8: the portable cluster size
    if nblk * G > 512:
        return None
    return -(-Cb // nblk), nblk


def norm_fwd_cuda(x, weight, bias, qblock, eps, layernorm):
    """x (..., C) fp32 CUDA -> (y_q, xhat_q, rstd). See int8_norm.layernorm_fwd_ref."""
    check_cuda(x, "x", (torch.float32,))
    check_cuda(weight, "weight", (torch.float32,))
    C = x.shape[-1]
    assert weight.shape == (C,), f"weight must have shape ({C},), got {tuple(weight.shape)}"
    if bias is not None:
        check_cuda(bias, "bias", (torch.float32,))
        assert bias.shape == (C,), f"bias must have shape ({C},), got {tuple(bias.shape)}"
    cfg = fwd_config(C, qblock)
    assert cfg is not None, f"C = {C} is too wide for the cluster kernel at qblock = {qblock}"
    K, nblk = cfg
    rows = x.numel() // C
    Rb, Cb = pad_to(rows, qblock) // qblock, pad_to(C, qblock) // qblock
    dev = x.device
    y_q, xhat_q = (QTensor(torch.empty(Rb * qblock, Cb * qblock, dtype=torch.int8, device=dev),
                           torch.empty(Rb, Cb, device=dev), x.shape, qblock) for _ in range(2))
    rstd = torch.empty(rows, device=dev)
    vec = C % 4 == 0 and x.data_ptr() % 16 == 0
    kernel = get_kernel(NORM_FWD_SRC, "norm_fwd_kernel",
                        (f"QB={qblock}", f"K={K}", f"LN={int(layernorm)}",
                         f"BIAS={int(bias is not None)}", f"VEC={int(vec)}"), dev)
    threads = nblk * qblock * qblock // 32
    smem = 3 * qblock * (nblk * qblock + 4) * 4                # the ring: 3 slabs of x
    n_clusters = min(Rb, max_active_clusters(kernel, K, threads, smem))   # one persistent wave
    launch(kernel, (K, n_clusters), (threads,),
           (x, weight, bias if bias is not None else weight, np.int32(rows), np.int32(C),
            np.int32(Rb), np.int32(Cb), np.float32(eps), y_q.q, y_q.s, xhat_q.q, xhat_q.s, rstd,
            nonfinite_flag(dev)), shared_mem=smem)
    after_launch(dev, "x")
    return y_q, xhat_q, rstd


def norm_bwd_cuda(dy_q, xhat_q, rstd, weight, layernorm):
    """dy_q, xhat_q QTensors (CUDA) -> (dx fp32 of x's shape, dweight (C,), dbias or None)."""
    check_qtensor(dy_q, "dy")
    check_qtensor(xhat_q, "xhat_q")
    assert not dy_q.has_fallback, "the CUDA path takes a plain int8 dy (no fallback plane)"
    assert dy_q.qblock == xhat_q.qblock and dy_q.q.shape == xhat_q.q.shape, \
        f"dy (padded {tuple(dy_q.q.shape)}) must match xhat_q (padded {tuple(xhat_q.q.shape)})"
    check_cuda(rstd, "rstd", (torch.float32,))
    check_cuda(weight, "weight", (torch.float32,))
    dev, QB = dy_q.device, xhat_q.qblock
    rows, C = xhat_q.rows, xhat_q.cols
    Cp = xhat_q.q.shape[1]
    nseg = Cp // 16
    nt = min(512, -(-nseg // 32) * 32)                           # one row over the CTA
    seg = -(-nseg // nt)
    assert seg in (1, 2, 4), f"C = {C} is too wide for the backward kernel"
    rb = 4 // seg
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    n_cta = min(-(-rows // rb), sms * max(2, 512 // nt))         # ~2 resident CTAs per SM
    rows_per_cta = pad_to(-(-rows // n_cta), rb)                 # a multiple of the batch
    n_cta = -(-rows // rows_per_cta)
    dx = torch.empty(xhat_q.shape, dtype=torch.float32, device=dev)
    nz = 2 if layernorm else 1                                   # dw (and db) partial rows
    part = torch.empty(nz, n_cta, Cp, device=dev)
    kernel = get_kernel(NORM_BWD_SRC, "norm_bwd_kernel",
                        (f"QB={QB}", f"LN={int(layernorm)}", f"SEG={seg}", f"VEC={int(C % 4 == 0)}"),
                        dev)
    smem = nt * (64 + 256)                                       # dx stage, two batches' bytes
    set_smem(kernel, smem)
    launch(kernel, (n_cta,), (nt,),
           (dy_q.q, dy_q.s, xhat_q.q, xhat_q.s, rstd, weight, np.int32(rows), np.int32(C),
            np.int32(Cp), np.int32(rows_per_cta), dx, part[0], part[-1]), shared_mem=smem)
    sums = torch.empty(nz, C, device=dev)
    colsum = get_kernel(COLSUM_SRC, "colsum_kernel", (), dev)
    launch(colsum, (-(-C // 32), nz), (256,),
           (part, np.int32(n_cta), np.int32(C), np.int32(Cp), sums))
    return dx, sums[0], sums[1] if layernorm else None
