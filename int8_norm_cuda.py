"""
CUDA kernels (CuPy RawKernels) for LayerNorm / RMSNorm with int8 blocks; the contract is
int8_norm.py (formulas and layouts there).

Forward: the fp32 residual x (rows, C) -> y_q, xhat_q (int8 blocks) + rstd (rows,). A block's
scale needs the absmax over QB rows x QB columns of y, and y needs its row's statistics, i.e.
the whole strip of QB rows x C must be seen before the first byte is written. That strip is
QB * C * 4 bytes (256 KB at QB = 32, C = 2048): more than one SM holds, and re-reading it from
L2 fails once ~130 strips in flight outgrow the 50 MB L2. So a *cluster* of K <= 8 CTAs (Hopper
thread-block clusters, sm_90) owns one strip at a time: CTA k holds block columns
[k*nblk, (k+1)*nblk) (the block-local layout of quantize_cuda.py: 32 values per thread).
The clusters are persistent (one wave, sized by cuOccupancyMaxActiveClusters) and walk the
strips; x reaches shared memory by cp.async through a ring of STAGES strip slabs, so the next
strips stream in while this one waits at its barriers. Statistics: each block row gets its mean
and centred sum of squares M2 two-pass from registers (the reference's two-pass variance), a CTA
combines its blocks, and the CTAs exchange their (mean, M2) once, pushed into every CTA's shared
memory (mapa + st.shared::cluster, one cluster barrier, mailbox double-buffered by strip
parity), combined by Chan et al.'s parallel formula. x is read from DRAM exactly once: 4 bytes
in, 2 bytes out per element. Widths up to C = 4096 (QB = 32), 2048 (QB = 64), 1024 (QB = 128)
fit; wider rows go through the reference.

Backward: dy_q, xhat_q (int8 blocks), rstd, w -> dx (rows, C) fp32, dw, db. Only row sums are
needed (sum g, sum g*xhat), no block absmax, so a CTA spreads one row over its threads (16
columns each, 16-byte loads of both int8 inputs), takes RB = 4 rows at a time (8 loads in flight
per thread, one CTA-wide reduction per batch), and walks down its share of the rows. dx leaves
through a per-warp shared-memory stage so that each store instruction writes 512 contiguous
bytes (a thread storing its own 64 bytes ran at 1.6 TB/s, coalesced at 2.9). The column
sums dw = sum_rows dy*xhat and db = sum_rows dy stay in registers (each thread always owns the
same columns); each CTA writes one partial row, and torch sums the ~2 * #SM partials (a second
pass over 8 MB, 2-4% of the kernel's bytes; deterministic, unlike float atomics).
"""
import ctypes
from functools import lru_cache

import numpy as np
import torch

from quantize import QTensor, get_kernel, launch, pad_to
from quantize_cuda import COMMON, after_launch, check_cuda, check_qtensor, nonfinite_flag

ASYNC_SRC = r"""
// cp.async: global -> shared memory without a trip through registers, completed by
// cp.async.wait_group; src_bytes = 0 writes zeros (rows and columns past the tensor)
__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool ok) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                 :: "r"(smem_addr(dst)), "l"(src), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool ok) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;"
                 :: "r"(smem_addr(dst)), "l"(src), "r"(ok ? 4 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
}
"""

NORM_FWD_SRC = COMMON + ASYNC_SRC + r"""
// K: CTAs per cluster; LN: LayerNorm (else RMSNorm); BIAS; VEC: 16-byte copies (C % 4 == 0);
// STAGES: strips in the shared-memory ring
__device__ __forceinline__ void st_cluster(float2* p, u32 rank, float2 v) {   // DSMEM store
    u32 ra;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(smem_addr(p)), "r"(rank));
    asm volatile("st.shared::cluster.v2.f32 [%0], {%1, %2};" :: "r"(ra), "f"(v.x), "f"(v.y) : "memory");
}
__device__ __forceinline__ void cluster_sync() {        // arrive (release), then wait (acquire)
    asm volatile("barrier.cluster.arrive.release.aligned;\n\t"
                 "barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ float max_nan(float a, float b) {  // max that keeps a NaN (sm_80+)
    float d;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
    return d;
}

// Row statistics travel as (mean, M2 = sum of squared deviations from that mean) of a part
// of the row with n columns: two-pass inside a block row (sum, then centred squares, both from
// registers), then parts combine by Chan et al.'s parallel formula
//     mean = sum_p n_p mean_p / n,   M2 = sum_p (M2_p + n_p (mean_p - mean)^2)
// so no part's variance suffers cancellation, and one cluster exchange carries both moments.
// RMSNorm: mean 0 and M2 = sum x^2 (the formula reduces to a sum).
__device__ __forceinline__ float ncols(int C, int c, int width) {   // columns of [c, c+width) in C
    return (float)min(max(C - c, 0), width);
}

// cp.async the CTA's slab of strip r0 (QB rows x W columns from column c0) into buf, rows
// LD = W + 4 floats apart (the 8 threads of a quarter warp then read distinct banks)
__device__ __forceinline__ void load_slab(float* buf, const float* x, int r0, int c0, int W,
                                          int rows, int C) {
    const int LD = W + 4;
#if VEC                                              // QB * W / 4 chunks of 16 B: 8 per thread
    const int row = threadIdx.x / (W / 4), col = threadIdx.x % (W / 4) * 4;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int r = row + i * (QB / 8);
        const bool ok = r0 + r < rows && c0 + col < C;
        cp_async16(buf + r * LD + col, ok ? x + (long long)(r0 + r) * C + c0 + col : x, ok);
    }
#else                                                // one float at a time: 32 per thread
    const int row = threadIdx.x / W, col = threadIdx.x % W;
#pragma unroll 8
    for (int i = 0; i < 32; ++i) {
        const int r = row + i * (QB / 32);
        const bool ok = r0 + r < rows && c0 + col < C;
        cp_async4(buf + r * LD + col, ok ? x + (long long)(r0 + r) * C + c0 + col : x, ok);
    }
#endif
}

// RTN-quantize the thread's two units of one block and store them; the block's scale from
// the group's absmax (NaN/Inf -> +inf first: fmaxf in group_max would drop a NaN)
__device__ __forceinline__ void store_block(const float v[2][16], float amax, float* red, i8* q,
                                            float* s, long long o, int Cp, int sidx, bool live,
                                            bool leader, int* flag) {
    amax = group_max(amax <= FLT_BIG ? amax : __int_as_float(0x7f800000), red);
    float inv;
    const float sc = block_scale(amax, &inv, flag, live && leader);
    if (live) {
        __stcs((uint4*)(q + o), quant16(v[0], inv, false, 0u));
        __stcs((uint4*)(q + o + (long long)HALF * Cp), quant16(v[1], inv, false, 0u));
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
    __shared__ float2 part[16384 / QB];                // [group][row] (mean, M2) of a block row
    __shared__ float2 mail[2][K][QB];                  // [strip & 1][CTA][row], the cluster writes
    __shared__ float2 rowstat[QB];                     // (mean, rstd) of the strip's rows
    const u32 rank = blockIdx.x;                       // gridDim.x == K: the rank in the cluster
    const int nblk = blockDim.x / G, g = threadIdx.x / G, t = threadIdx.x % G;
    const int W = nblk * QB, LD = W + 4, c0 = rank * W, Cp = Cb * QB;
    const int b0 = rank * nblk, bj = b0 + g, rr = t / TPR, cl = g * QB + (t % TPR) * 16, c = c0 + cl;
    const int nvalid = min(max(C - c, 0), 16);         // this thread's columns inside C
    const bool live = bj < Cb, leader = t == 0;
    float wv[16], bv[16];
#pragma unroll
    for (int k = 0; k < 16; ++k) {
        wv[k] = k < nvalid ? w[c + k] : 0.0f;
        bv[k] = BIAS && k < nvalid ? bias[c + k] : 0.0f;
    }

    // the cluster walks strips blockIdx.y, + gridDim.y, ...: STAGES - 1 of them in flight
    const int nstrip = (Rb - blockIdx.y + gridDim.y - 1) / gridDim.y;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nstrip)
            load_slab(ring + s * QB * LD, x, (blockIdx.y + s * gridDim.y) * QB, c0, W, rows, C);
        cp_async_commit();
    }
    cluster_sync();                                    // every CTA runs: its DSMEM may be written
    for (int j = 0; j < nstrip; ++j) {
        const int bi = blockIdx.y + j * gridDim.y, par = j & 1;
        cp_async_wait<STAGES - 2>();
        __syncthreads();                               // strip j is in; slot (j - 1) is free
        if (j + STAGES - 1 < nstrip)
            load_slab(ring + (j + STAGES - 1) % STAGES * QB * LD, x,
                      (bi + (STAGES - 1) * gridDim.y) * QB, c0, W, rows, C);
        cp_async_commit();
        const float* buf = ring + j % STAGES * QB * LD;
        float v[2][16];
        bool rok[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            rok[i] = bi * QB + rr + i * HALF < rows;
#pragma unroll
            for (int m = 0; m < 4; ++m) {
                const float4 f = *(const float4*)(buf + (rr + i * HALF) * LD + cl + 4 * m);
                v[i][4 * m] = f.x; v[i][4 * m + 1] = f.y; v[i][4 * m + 2] = f.z; v[i][4 * m + 3] = f.w;
            }
        }

        // (mean, M2) of each block row, over the TPR threads that share it
        const float inv_ng = live ? 1.0f / ncols(C, bj * QB, QB) : 0.0f;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float mean = 0.0f, M2 = 0.0f;
#if LN
            float s = 0.0f, d[16];
#pragma unroll
            for (int k = 0; k < 16; ++k) s += v[i][k];            // zeros past C
#pragma unroll
            for (int o = 1; o < TPR; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            mean = s * inv_ng;
#pragma unroll
            for (int k = 0; k < 16; ++k) d[k] = v[i][k] - mean;
            if (nvalid < 16)
#pragma unroll
                for (int k = 0; k < 16; ++k) d[k] = k < nvalid ? d[k] : 0.0f;
#pragma unroll
            for (int k = 0; k < 16; ++k) M2 = fmaf(d[k], d[k], M2);
#else
#pragma unroll
            for (int k = 0; k < 16; ++k) M2 = fmaf(v[i][k], v[i][k], M2);
#endif
#pragma unroll
            for (int o = 1; o < TPR; o <<= 1) M2 += __shfl_xor_sync(0xffffffffu, M2, o);
            if (t % TPR == 0) part[g * QB + rr + i * HALF] = make_float2(mean, M2);
        }
        __syncthreads();
        if (threadIdx.x < QB) {                        // row threadIdx.x: the CTA's share
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
#pragma unroll
            for (u32 r = 0; r < K; ++r) st_cluster(&mail[par][rank][threadIdx.x], r, make_float2(mk, M2k));
        }
        cluster_sync();                                // all K shares of strip j are in mail[par]
        if (threadIdx.x < QB) {                        // same order in every CTA: same statistics
            float mean = 0.0f, M2 = 0.0f;
#if LN
#pragma unroll
            for (int k = 0; k < K; ++k) mean += ncols(C, k * W, W) * mail[par][k][threadIdx.x].x;
            mean = __fdiv_rn(mean, (float)C);
#endif
#pragma unroll
            for (int k = 0; k < K; ++k) {
                const float2 p = mail[par][k][threadIdx.x];
                const float d = p.x - mean;
                M2 += p.y + ncols(C, k * W, W) * d * d;
            }
            const float rs = 1.0f / sqrtf(__fdiv_rn(M2, (float)C) + eps);
            rowstat[threadIdx.x] = make_float2(mean, rs);
            if (rank == 0 && bi * QB + (int)threadIdx.x < rows) rstd_out[bi * QB + threadIdx.x] = rs;
        }
        __syncthreads();

        // xhat = (x - mean) * rstd, rounded as the reference; then y = xhat * w (+ b) in place.
        // Both are zero outside the logical (rows, C), where the padding must stay invisible.
        const bool full = nvalid == 16 && rok[1];
        float amax = 0.0f;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const float2 st = rowstat[rr + i * HALF];
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
}
"""

NORM_BWD_SRC = COMMON + r"""
// LN: LayerNorm (else RMSNorm); SEG: 16-column segments per thread (1, 2, 4); VEC: C % 4 == 0
#define RB (4 / SEG)

// unpack16 * sc, with the byte moves volatile: both passes over a batch re-derive the floats
// from the packed bytes instead of the compiler keeping RB rows x 32 floats live (spills)
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

extern "C" __global__ void __launch_bounds__(512)
norm_bwd_kernel(const i8* __restrict__ dyq, const float* __restrict__ dys,
                const i8* __restrict__ xq, const float* __restrict__ xs,
                const float* __restrict__ rstd, const float* __restrict__ w,
                int rows, int C, int Cp, int rows_per_cta,
                float* __restrict__ dx, float* __restrict__ dw_part, float* __restrict__ db_part) {
    __shared__ float red[2][32][2 * RB];           // double buffered: one barrier per batch
    extern __shared__ float4 xfer[];               // [warp][128]: one row of dx per warp
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
    const int nseg = Cp / 16, Cb = Cp / QB;
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
    for (int r0 = r_begin, batch = 0; r0 < r_end; r0 += RB, ++batch) {
        uint4 pd[RB][SEG], px[RB][SEG];
        float sd[RB][SEG], sx[RB][SEG];
#pragma unroll
        for (int j = 0; j < RB; ++j)
#pragma unroll
            for (int s = 0; s < SEG; ++s) {
                const int r = r0 + j, seg = threadIdx.x + s * blockDim.x;
                const bool in = r < r_end && seg < nseg;
                const long long o = (long long)r * Cp + seg * 16, b = (long long)(r / QB) * Cb + seg * 16 / QB;
                pd[j][s] = in ? __ldcs((const uint4*)(dyq + o)) : make_uint4(0, 0, 0, 0);
                px[j][s] = in ? __ldcs((const uint4*)(xq + o)) : make_uint4(0, 0, 0, 0);
                sd[j][s] = in ? dys[b] : 0.0f;
                sx[j][s] = in ? xs[b] : 0.0f;
            }
        // row sums of g = dy * w and g * xhat over this thread's columns, then over the CTA
        float sums[2 * RB];
#pragma unroll
        for (int j = 0; j < RB; ++j) {
            float sg = 0.0f, sgx = 0.0f;
#pragma unroll
            for (int s = 0; s < SEG; ++s) {
                float dy[16], xh[16];
                deq16(pd[j][s], sd[j][s], dy);
                deq16(px[j][s], sx[j][s], xh);
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
        float* buf = &red[batch & 1][0][0];
        if (lane == 0)
#pragma unroll
            for (int m = 0; m < 2 * RB; ++m) buf[warp * 2 * RB + m] = sums[m];
        __syncthreads();
#pragma unroll
        for (int m = 0; m < 2 * RB; ++m) sums[m] = 0.0f;
        for (int q = 0; q < nwarp; ++q)
#pragma unroll
            for (int m = 0; m < 2 * RB; ++m) sums[m] += buf[q * 2 * RB + m];
        // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); dw += dy * xhat; db += dy
#pragma unroll
        for (int j = 0; j < RB; ++j) {
            const int r = r0 + j;
            if (r >= r_end) break;
            const float mg = LN ? sums[2 * j] / C : 0.0f, mgx = sums[2 * j + 1] / C, rs = rstd[r];
#pragma unroll
            for (int s = 0; s < SEG; ++s) {
                const int c = (threadIdx.x + s * blockDim.x) * 16;
                float dy[16], xh[16], o[16];
                deq16(pd[j][s], sd[j][s], dy);          // zeros past Cp
                deq16(px[j][s], sx[j][s], xh);
#pragma unroll
                for (int k = 0; k < 16; ++k) {
                    o[k] = rs * (dy[k] * wv[s][k] - mg - xh[k] * mgx);
                    dwa[s][k] += dy[k] * xh[k];
                    dba[s][k] += dy[k];
                }
#if VEC
                // the warp's 512 columns leave through shared memory, so that every store
                // instruction writes 512 contiguous bytes: each thread storing its own 64 bytes
                // runs at ~1.6 TB/s, coalesced ~2.9 (notes/memory_kernels.md). Float4 m of lane
                // l sits at 4l + (m ^ (l & 3)): 2-way bank conflicts on the way in, none out.
                float4* stage = xfer + warp * 128;
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


FWD_STAGES = 3              # forward ring: x slabs (3 x 66 KB at C = 4096, QB = 32)
SMEM_BUDGET = 220 * 1024    # shared memory we plan with per SM (the H100 has 228 KB)


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
    per_sm = min(2048 // threads, SMEM_BUDGET // (smem + 16384))
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return max(1, (sms - K) * per_sm // K)


def fwd_config(C, qblock):
    """(K CTAs per cluster, nblk blocks per CTA) for a row of C, or None if it does not fit."""
    G = qblock * qblock // 32
    Cb = pad_to(C, qblock) // qblock
    K = min(8, Cb)
    nblk = -(-Cb // K)
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
                         f"BIAS={int(bias is not None)}", f"VEC={int(vec)}",
                         f"STAGES={FWD_STAGES}"), dev)
    threads = nblk * qblock * qblock // 32
    smem = FWD_STAGES * qblock * (nblk * qblock + 4) * 4     # the ring of x slabs
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
    QB = xhat_q.qblock
    rows, C = xhat_q.rows, xhat_q.cols
    Cp = xhat_q.q.shape[1]
    nseg = Cp // 16
    nt = min(512, -(-nseg // 32) * 32)
    seg = -(-nseg // nt)
    assert seg in (1, 2, 4), f"C = {C} is too wide for the backward kernel"
    rb = 4 // seg
    sms = torch.cuda.get_device_properties(dy_q.device).multi_processor_count
    n_cta = min(-(-rows // rb), sms * max(2, 512 // nt))         # ~2 resident CTAs per SM
    rows_per_cta = pad_to(-(-rows // n_cta), rb)                 # a multiple of the batch
    n_cta = -(-rows // rows_per_cta)
    dx = torch.empty(xhat_q.shape, dtype=torch.float32, device=dy_q.device)
    dw_part = torch.empty(n_cta, Cp, device=dy_q.device)
    db_part = torch.empty(n_cta, Cp, device=dy_q.device) if layernorm else dw_part
    kernel = get_kernel(NORM_BWD_SRC, "norm_bwd_kernel",
                        (f"QB={QB}", f"LN={int(layernorm)}", f"SEG={seg}", f"VEC={int(C % 4 == 0)}"),
                        dy_q.device)
    launch(kernel, (n_cta,), (nt,),
           (dy_q.q, dy_q.s, xhat_q.q, xhat_q.s, rstd, weight, np.int32(rows), np.int32(C),
            np.int32(Cp), np.int32(rows_per_cta), dx, dw_part, db_part),
           shared_mem=nt // 32 * 2048)                          # the dx staging of each warp
    dweight = dw_part.sum(0)[:C]
    dbias = db_part.sum(0)[:C] if layernorm else None
    return dx, dweight, dbias
