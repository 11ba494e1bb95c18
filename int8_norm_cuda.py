"""
CUDA kernels (CuPy RawKernels) for LayerNorm / RMSNorm with int8 blocks; the contract is
int8_norm.py (formulas and layouts there).

Forward: the fp32 residual x (rows, C) -> y_q, xhat_q (int8 blocks) + rstd (rows,). A block's
scale needs the absmax over QB rows x QB columns of y, and y needs its row's statistics, i.e.
the whole strip of QB rows x C must be seen before the first byte is written. That strip is
QB * C * 4 bytes (256 KB at QB = 32, C = 2048): more than one SM holds, and re-reading it from
L2 fails once ~130 strips in flight outgrow the 50 MB L2. So a *cluster* of K <= 8 CTAs (Hopper
thread-block clusters, sm_90) owns one strip: CTA k holds block columns [k*nblk, (k+1)*nblk) in
registers (the block-local layout of quantize_cuda.py: 32 values per thread), each CTA sums its
part of every row, and the CTAs exchange those QB partial sums through distributed shared memory
(mapa + ld.shared::cluster) between cluster barriers: once for the mean, once for the centred
sum of squares (the two-pass variance of the reference, from registers). x is read from DRAM
exactly once: 4 bytes in, 2 bytes out per element. Widths up to C = 4096 (QB = 32), 2048
(QB = 64), 1024 (QB = 128) fit; wider rows go through the reference.

Backward: dy_q, xhat_q (int8 blocks), rstd, w -> dx (rows, C) fp32, dw, db. Only row sums are
needed (sum g, sum g*xhat), no block absmax, so a CTA spreads one row over its threads (16
columns each, 16-byte loads of both int8 inputs), takes RB = 4 rows at a time (8 loads in flight
per thread, one CTA-wide reduction per batch), and walks down its share of the rows. The column
sums dw = sum_rows dy*xhat and db = sum_rows dy stay in registers (each thread always owns the
same columns); each CTA writes one partial row, and torch sums the ~2 * #SM partials (a second
pass over 8 MB, 2-4% of the kernel's bytes; deterministic, unlike float atomics).
"""
import numpy as np
import torch

from quantize import QTensor, get_kernel, launch, pad_to
from quantize_cuda import COMMON, after_launch, check_cuda, check_qtensor, nonfinite_flag

NORM_FWD_SRC = COMMON + r"""
// K: CTAs per cluster (one strip); LN: LayerNorm (else RMSNorm); BIAS; VEC: C % 4 == 0
__device__ __forceinline__ float ld_cluster(const float* p, u32 rank) {     // DSMEM load
    u32 a = (u32)__cvta_generic_to_shared(p), ra;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(ra) : "r"(a), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(ra) : "memory");
    return v;
}
__device__ __forceinline__ void cluster_arrive() {
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// totals over the whole strip row of p[i] (this thread's partials of rows rr, rr + HALF)
__device__ __forceinline__ void strip_sum(float p[2], float* part, float* csum, int nblk,
                                          int g, int t, float out[2]) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int o = 1; o < TPR; o <<= 1) p[i] += __shfl_xor_sync(0xffffffffu, p[i], o);
    if (t % TPR == 0) {
        part[g * QB + t / TPR] = p[0];
        part[g * QB + t / TPR + HALF] = p[1];
    }
    __syncthreads();
    if (threadIdx.x < QB) {                        // this CTA's share of each row, fixed order
        float s = 0.0f;
        for (int k = 0; k < nblk; ++k) s += part[k * QB + threadIdx.x];
        csum[threadIdx.x] = s;
    }
    cluster_arrive();
    cluster_wait();                                // every CTA's csum is now visible
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        float s = 0.0f;                            // same order in every CTA: same statistics
#pragma unroll
        for (int r = 0; r < K; ++r) s += ld_cluster(csum + t / TPR + i * HALF, r);
        out[i] = s;
    }
}

// y = xhat * w (+ b) as the reference rounds it (no fused multiply-add); 0 outside (rows, C)
__device__ __forceinline__ float affine(float xh, const float* w, const float* bias, int c, bool ok) {
    if (!ok) return 0.0f;
    const float y = __fmul_rn(xh, __ldg(w + c));
    return BIAS ? __fadd_rn(y, __ldg(bias + c)) : y;
}

extern "C" __global__ void __cluster_dims__(K, 1, 1) __launch_bounds__(512, 2)
norm_fwd_kernel(const float* __restrict__ x, const float* __restrict__ w,
                const float* __restrict__ bias, int rows, int C, int Cb, float eps,
                i8* __restrict__ yq, float* __restrict__ ys, i8* __restrict__ xq,
                float* __restrict__ xs, float* __restrict__ rstd_out, int* flag) {
    __shared__ float red[32];
    __shared__ float part[16384 / QB];             // [group][row]: at most 512/G groups
    __shared__ float csum[2][QB];                  // this CTA's row sums, read by the cluster
    const int nblk = blockDim.x / G, g = threadIdx.x / G, t = threadIdx.x % G;
    const int bi = blockIdx.y, bj = blockIdx.x * nblk + g;     // gridDim.x == K
    const int rr = t / TPR, c = bj * QB + (t % TPR) * 16, Cp = Cb * QB;
    const bool live = bj < Cb;

    float v[2][16];
    bool rok[2];                                   // row inside the logical rows
#define OK(i, k) (rok[i] && live && c + (k) < C)   // element inside the logical (rows, C)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = bi * QB + rr + i * HALF;
        rok[i] = r < rows;
        const float* p = x + (long long)r * C + c;
        if (VEC && live && r < rows && c + 16 <= C) {
#pragma unroll
            for (int m = 0; m < 4; ++m) {
                const float4 f = __ldcs((const float4*)p + m);
                v[i][4 * m] = f.x; v[i][4 * m + 1] = f.y; v[i][4 * m + 2] = f.z; v[i][4 * m + 3] = f.w;
            }
        } else {
#pragma unroll
            for (int k = 0; k < 16; ++k) v[i][k] = (live && r < rows && c + k < C) ? p[k] : 0.0f;
        }
    }

    float mean[2] = {0.0f, 0.0f}, p[2], tot[2];
#if LN
    p[0] = p[1] = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int k = 0; k < 16; ++k) p[i] += v[i][k];
    strip_sum(p, part, csum[0], nblk, g, t, tot);
    mean[0] = __fdiv_rn(tot[0], (float)C);
    mean[1] = __fdiv_rn(tot[1], (float)C);
#endif
    p[0] = p[1] = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            v[i][k] = OK(i, k) ? v[i][k] - mean[i] : 0.0f;       // centred (LN) or x (RMS)
            p[i] += v[i][k] * v[i][k];
        }
    strip_sum(p, part, csum[1], nblk, g, t, tot);
    cluster_arrive();                              // done reading the cluster's shared memory
    float rstd[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) rstd[i] = 1.0f / sqrtf(__fdiv_rn(tot[i], (float)C) + eps);

    // xhat stays in v; y = xhat * w (+ b) is formed twice (absmax, then quantization) rather
    // than held: 32 fewer live registers, so two CTAs fit on an SM
    float amy = 0.0f, amx = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            v[i][k] = __fmul_rn(v[i][k], rstd[i]);                 // xhat (0 outside)
            amx = fmaxf(amx, abs_or_inf(v[i][k]));
            amy = fmaxf(amy, abs_or_inf(affine(v[i][k], w, bias, c + k, OK(i, k))));
        }
    amy = group_max(amy, red);
    amx = group_max(amx, red);
    float inv_y, inv_x;
    const float sy = block_scale(amy, &inv_y, flag, live && t == 0);
    const float sx = block_scale(amx, &inv_x, flag, live && t == 0);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const long long o = (long long)(bi * QB + rr + i * HALF) * Cp + c;
        float y[16];
#pragma unroll
        for (int k = 0; k < 16; ++k) y[k] = affine(v[i][k], w, bias, c + k, OK(i, k));
        const uint4 qy = quant16(y, inv_y, false, 0u), qx = quant16(v[i], inv_x, false, 0u);
        if (live) { __stcs((uint4*)(yq + o), qy); __stcs((uint4*)(xq + o), qx); }
    }
    if (live && t == 0) { ys[bi * Cb + bj] = sy; xs[bi * Cb + bj] = sx; }
    if (blockIdx.x == 0 && g == 0 && t % TPR == 0)
#pragma unroll
        for (int i = 0; i < 2; ++i)
            if (bi * QB + rr + i * HALF < rows) rstd_out[bi * QB + rr + i * HALF] = rstd[i];
    cluster_wait();                                // keep csum alive until the cluster read it
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
                if (c >= Cp) continue;
                float dy[16], xh[16], o[16];
                deq16(pd[j][s], sd[j][s], dy);
                deq16(px[j][s], sx[j][s], xh);
#pragma unroll
                for (int k = 0; k < 16; ++k) {
                    o[k] = rs * (dy[k] * wv[s][k] - mg - xh[k] * mgx);
                    dwa[s][k] += dy[k] * xh[k];
                    dba[s][k] += dy[k];
                }
                float* out = dx + (long long)r * C + c;
                if (VEC && c + 16 <= C) {
#pragma unroll
                    for (int m = 0; m < 4; ++m)
                        __stcs((float4*)out + m, make_float4(o[4 * m], o[4 * m + 1], o[4 * m + 2], o[4 * m + 3]));
                } else {
#pragma unroll
                    for (int k = 0; k < 16; ++k)
                        if (c + k < C) out[k] = o[k];
                }
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
                         f"BIAS={int(bias is not None)}", f"VEC={int(vec)}"), dev)
    launch(kernel, (K, Rb), (nblk * qblock * qblock // 32,),
           (x, weight, bias if bias is not None else weight, np.int32(rows), np.int32(C),
            np.int32(Cb), np.float32(eps), y_q.q, y_q.s, xhat_q.q, xhat_q.s, rstd,
            nonfinite_flag(dev)))
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
            np.int32(Cp), np.int32(rows_per_cta), dx, dw_part, db_part))
    dweight = dw_part.sum(0)[:C]
    dbias = db_part.sum(0)[:C] if layernorm else None
    return dx, dweight, dbias
