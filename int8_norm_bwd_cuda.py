"""
CUDA kernels (CuPy RawKernels) for the backward of LayerNorm / RMSNorm with int8 blocks; the
contract is int8_norm.py (formulas and layouts there), the forward is int8_norm_cuda.py (its
cp.async wrappers, ASYNC_SRC, and its shared-memory opt-in, set_smem, serve here too).

Backward: dy_q, xhat_q (int8 blocks), rstd, w (, dres) -> dx (rows, C) fp32 (+ dres), dw, db.
Only row sums are needed (sum g, sum g*xhat), so a CTA spreads one row over its threads (16
columns each) and takes RB = 4 rows at a time; each thread cp.asyncs its bytes of the next batch
into shared memory while it works on this one. dx leaves through a per-warp stage so that each
store instruction writes 512 contiguous bytes (a thread storing its own 64 bytes ran at 1.6 TB/s,
coalesced at 2.9); the residual's gradient dres, where given, is read in the same coalesced
pieces and added on the way out (the block's dx + dout without a torch add: one read of dres
instead of two reads and a write). dw = sum_rows dy*xhat and db = sum_rows dy stay in registers (a thread owns
the same columns throughout); each CTA writes one partial row and colsum_kernel adds the ~500
partials in a fixed order (deterministic, unlike float atomics; 4 us where torch's took 15).
"""
import numpy as np
import torch

from int8_norm_cuda import ASYNC_SRC, set_smem
from quantize import get_kernel, launch, pad_to
from quantize_cuda import COMMON, check_cuda, check_qtensor

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
                int rows, int C, int Cp, int rows_per_cta, const float* __restrict__ dres,
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
                const long long first = (long long)r * C + (c - lane * 16);  // the warp's first column
#pragma unroll
                for (int m = 0; m < 4; ++m) {
                    const int q = m * 32 + lane, owner = q >> 2;           // float4 q of the warp
                    if (c - lane * 16 + 4 * q < C) {
                        float4 v = stage[4 * owner + ((q & 3) ^ (owner & 3))];
                        if (dres) {                                        // + the residual's gradient
                            const float4 d = __ldcs((const float4*)(dres + first) + q);
                            v.x += d.x; v.y += d.y; v.z += d.z; v.w += d.w;
                        }
                        __stcs((float4*)(dx + first) + q, v);
                    }
                }
                __syncwarp();                           // stage is free for the next row
#else
                const long long at = (long long)r * C + c;
#pragma unroll
                for (int k = 0; k < 16; ++k)
                    if (c + k < C) dx[at + k] = dres ? o[k] + dres[at + k] : o[k];
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


def norm_bwd_cuda(dy_q, xhat_q, rstd, weight, layernorm, dres=None):
    """dy_q, xhat_q QTensors (CUDA) -> (dx fp32 of x's shape, dweight (C,), dbias or None);
    dres (fp32, contiguous, x's shape) is added to dx, if given."""
    check_qtensor(dy_q, "dy")
    check_qtensor(xhat_q, "xhat_q")
    assert not dy_q.has_fallback, "the CUDA path takes a plain int8 dy (no fallback plane)"
    assert dy_q.qblock == xhat_q.qblock and dy_q.q.shape == xhat_q.q.shape, \
        f"dy (padded {tuple(dy_q.q.shape)}) must match xhat_q (padded {tuple(xhat_q.q.shape)})"
    check_cuda(rstd, "rstd", (torch.float32,))
    check_cuda(weight, "weight", (torch.float32,))
    if dres is not None:
        check_cuda(dres, "dres", (torch.float32,))
        assert dres.shape == xhat_q.shape, \
            f"dres must have shape {tuple(xhat_q.shape)}, got {tuple(dres.shape)}"
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
            np.int32(Cp), np.int32(rows_per_cta), np.uint64(0) if dres is None else dres, dx,
            part[0], part[-1]), shared_mem=smem)
    sums = torch.empty(nz, C, device=dev)
    colsum = get_kernel(COLSUM_SRC, "colsum_kernel", (), dev)
    launch(colsum, (-(-C // 32), nz), (256,),
           (part, np.int32(n_cta), np.int32(C), np.int32(Cp), sums))
    return dx, sums[0], sums[1] if layernorm else None
