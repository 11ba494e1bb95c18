"""
CUDA kernels (CuPy RawKernels) that give a quantized tensor its fallback plane; the contract is
fallback.py (add_second_plane, median_nonzero, flags_from_scores, plane_lists).

The torch version of that work is ~50 small kernels per quantized activation (a sort for the
median, comparisons, a cumsum and scatters for the slots, gathers and elementwise ops for the
residual) and ~20 more per GEMM that reads the plane (plane_lists): launched from Python, they
made a fallback training step 2-4x a plain int8 step on the host alone. Here it is four kernels:

    scale_histogram (many CTAs)    the scale grid s (n blocks) -> a histogram of the top 12 bits
                                   of the scales, and their zeros (grids of more than
                                   SMALL_GRID blocks; plane_select makes a smaller one's)
    plane_select    (1 CTA)        s and that histogram -> the flags, and for each flagged block
                                   its slot in q2 (block order), the slot -> block list, and the
                                   counts (flagged, of them given a slot)
    plane_residual  (1 CTA a slot) the flagged blocks' float values, recomputed from the op's
                                   inputs -> residual r = y - q1 s1 -> q2, s2
    plane_lists     (1 CTA a list) the K-block lists the fused wgmma GEMM reads, and the order
                                   in which its CTAs take the tiles

The median is an exact radix select over the scales' bits (scales are >= 0, so their bits sort
like the floats): the top 12 bits from the histogram, the next 8 by one pass over s, the last
12 by two passes over the few scales that share those 20 bits, copied to shared memory. The
rule's flag is then a cut on the bits (s / med > threshold is monotone in s: a warp tests the
32 keys around med * threshold at once, bisection where that misses), and the slots a CTA-wide
prefix count of the flags over consecutive blocks, so the k-th flagged block in block order
gets slot k, as nonzero() would give it. plane_select runs on one CTA because the grid is small
(a 16384 x 2048 activation has 32768 blocks at QB = 32) and the prefix count needs all of it in
order: with the histogram kernel ~23-56 us a call on an H100 for 16k-64k blocks; 8.8 / 12.2 us
for 1k / 4k blocks, which make their own histogram on 512 threads (notes/select_ab.log); the
whole plane costs ~0.04 ms of GPU time where the torch ops took ~0.2 ms (16384 x 2048,
bench.py --only fallback). One scratch buffer each (the histogram, plane_lists' arrival
counter) per device: these kernels must run on one stream at a time.

Arithmetic, bit exact with fallback.py's torch path where the float values are the same (a
plain quantize: the 'copy' source; the ops' recomputes are the kernels' own formulas):
    flag  median: s / med > threshold (fp32 division and compare, as torch does)
          topk:   the k largest s > 0, ties at the k-th value taken in block order (torch's
                  topk takes any of them)
    r     __fsub_rn(y, __fmul_rn(q1, s1))   (no FMA: torch runs the two as separate kernels)
    inv   __fmul_rn(__frcp_rn(amax), 127)   (torch's 127 / amax is reciprocal-then-multiply)
    q2    rint(clamp(__fmul_rn(r, inv)))    s2 = __fdiv_rn(amax, 127)
"""
import math

import numpy as np
import torch

from fallback import check_threshold, topk_count
from int8_gemm_sm90_ring import TILE
from quantize import get_kernel, launch

# Grids of up to SMALL_GRID blocks: plane_select makes their level-1 histogram itself, on
# SMALL_THREADS threads; larger ones take scale_histogram and 1024 threads (notes/select_ab.log,
# H100: 1024 / 4096 blocks 12.8 / 16.5 us with the histogram kernel, 8.8 / 12.2 us on their own
# at 512 threads; on their own is slower from 16384 blocks)
SMALL_GRID = 4096
SMALL_THREADS = 512
HIST_THREADS = 256
HIST_BINS = 4096
LIST_THREADS = 256
RESIDUAL_THREADS = 256

# rules as the kernel numbers them
RULE_IDS = {"median": 0, "topk": 1}

COMMON_SRC = r"""
typedef unsigned int u32;
typedef signed char i8;

// Level 1 of the radix select: add `key`'s top 12 bits (sign, exponent, 3 mantissa bits) to the
// shared histogram h (4096 bins) if live; the lanes with the same bin add once
// (__match_any_sync: the scales of a tensor share a few exponents). Returns 1 for a live zero key.
__device__ __forceinline__ int hist_add(int* h, u32 key, bool live) {
    const unsigned act = __ballot_sync(0xffffffffu, live);
    if (live) {
        const unsigned peers = __match_any_sync(act, key >> 20);
        if ((threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&h[key >> 20], __popc(peers));
    }
    return live && key == 0u;
}

// exclusive prefix sum over the CTA of one int per thread (THREADS <= 1024: 32 warps at most);
// *total gets the sum. sh: 33 ints of shared memory. Every thread must call it.
template <int THREADS>
__device__ __forceinline__ int cta_exclusive_sum(int v, int* sh, int* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int inc = v;
    #pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int n = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += n;
    }
    __syncthreads();                                  // sh may still be read by a previous call
    if (lane == 31) sh[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        const int w = lane < THREADS / 32 ? sh[lane] : 0;
        int winc = w;
        #pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int n = __shfl_up_sync(0xffffffffu, winc, o);
            if (lane >= o) winc += n;
        }
        sh[lane] = winc - w;                          // warps before this one
        if (lane == 31) sh[32] = winc;
    }
    __syncthreads();
    *total = sh[32];
    return sh[warp] + inc - v;
}
"""

HIST_SRC = COMMON_SRC + r"""
#define NT 256
#define PER 16                                  // scales per thread
#define BINS 4096                               // the top 12 bits of a key

// Level 1 of plane_select's radix select, over many CTAs: a histogram of the top 12 bits of
// every key (hist_add), and the number of zero keys, added into hist[0 .. BINS - 1] and
// hist[BINS]. plane_select reads them and zeroes them again, so the buffer is all zero between
// calls.
extern "C" __global__ void __launch_bounds__(NT)
scale_histogram_kernel(const float* __restrict__ s, int n, int* __restrict__ hist) {
    __shared__ int h[BINS];
    for (int i = threadIdx.x; i < BINS; i += NT) h[i] = 0;
    __syncthreads();
    const int base = blockIdx.x * NT * PER, lane = threadIdx.x & 31;
    u32 key[PER];
    #pragma unroll
    for (int p = 0; p < PER; ++p) {                      // all loads first
        const int i = base + p * NT + threadIdx.x;
        key[p] = i < n ? __float_as_uint(s[i]) : 0u;
    }
    int zeros = 0;
    #pragma unroll
    for (int p = 0; p < PER; ++p)
        zeros += hist_add(h, key[p], base + p * NT + (int)threadIdx.x < n);
    for (int o = 16; o > 0; o >>= 1) zeros += __shfl_xor_sync(0xffffffffu, zeros, o);
    if (lane == 0 && zeros) atomicAdd(&hist[BINS], zeros);
    __syncthreads();
    for (int i = threadIdx.x; i < BINS; i += NT)
        if (h[i]) atomicAdd(&hist[i], h[i]);
}
"""

SELECT_SRC = COMMON_SRC + r"""
// NT (256, 512 or 1024 threads) comes in as -D, from the launcher
#define BINS 4096
#define BPT (BINS / NT)                          // level-1 bins per thread
#define NSUB 8                                   // histograms per pass, NT / 256 warps to each
#define CAND 8192                                // candidate keys kept in shared memory
#define PER 8                                    // consecutive blocks per thread, slot pass
#define INF_KEY 0x7f800000u

struct Shared {
    u32 sub[NSUB][256];                          // a pass's histograms
    u32 total[256];
    u32 cand[CAND];                              // the keys left after 20 bits are chosen
    int sh[40];
};

// One pass of the radix select: among the `count` keys (global or shared memory) that match
// prefix on mask, the 8 bits at `shift` of the k-th smallest (from 0). Adds them to prefix
// and mask, makes k its rank among the keys that match the longer prefix, and returns how many
// keys do. Each load batch has 8 keys a thread in flight; lanes with the same digit add once.
// (Passes may overlap bits already chosen: those digits take one value, which changes nothing.)
__device__ int radix_pass(const u32* keys, int count, int shift, u32& prefix, u32& mask, int& k,
                          Shared& S) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int i = threadIdx.x; i < NSUB * 256; i += NT) (&S.sub[0][0])[i] = 0;
    __syncthreads();
    u32* h = S.sub[warp % NSUB];
    for (int base = 0; base < count; base += 8 * NT) {
        u32 kk[8];
        #pragma unroll
        for (int u = 0; u < 8; ++u) {
            const int i = base + u * NT + threadIdx.x;
            kk[u] = i < count ? keys[i] : 0u;
        }
        #pragma unroll
        for (int u = 0; u < 8; ++u) {
            const bool take = base + u * NT + (int)threadIdx.x < count && (kk[u] & mask) == prefix;
            const u32 digit = (kk[u] >> shift) & 255u;
            const unsigned act = __ballot_sync(0xffffffffu, take);
            if (take) {
                const unsigned peers = __match_any_sync(act, digit);
                if (lane == __ffs(peers) - 1) atomicAdd(&h[digit], __popc(peers));
            }
        }
    }
    __syncthreads();
    if (threadIdx.x < 256) {
        u32 c = 0;
        for (int w = 0; w < NSUB; ++w) c += S.sub[w][threadIdx.x];
        S.total[threadIdx.x] = c;
    }
    __syncthreads();
    if (warp == 0) {                                     // lane l sums digits 8l .. 8l + 7
        u32 c8 = 0;
        for (int d = 0; d < 8; ++d) c8 += S.total[8 * lane + d];
        u32 inc = c8;
        for (int o = 1; o < 32; o <<= 1) {
            const u32 v = __shfl_up_sync(0xffffffffu, inc, o);
            if (lane >= o) inc += v;
        }
        const unsigned hit = __ballot_sync(0xffffffffu, inc > (u32)k);
        if (lane == __ffs(hit) - 1) {                    // the first lane past rank k
            u32 before = inc - c8;
            int d = 8 * lane;
            while (before + S.total[d] <= (u32)k) before += S.total[d++];
            S.sh[0] = d;
            S.sh[1] = k - (int)before;
            S.sh[2] = S.total[d];
        }
    }
    __syncthreads();
    prefix |= (u32)S.sh[0] << shift;
    mask |= 255u << shift;
    k = S.sh[1];
    const int matched = S.sh[2];
    __syncthreads();
    return matched;
}

// Level 1 of the radix select in this CTA, for a small grid (the launcher runs no
// scale_histogram then): the histogram of the keys' top 12 bits into S.cand (free until kth_key
// collects its candidates there), as scale_histogram makes it. Returns the zero keys' count.
__device__ int own_histogram(const float* s, int n, Shared& S) {
    int* h = (int*)S.cand;
    const int lane = threadIdx.x & 31;
    for (int i = threadIdx.x; i < BINS; i += NT) h[i] = 0;
    if (threadIdx.x == 0) S.sh[38] = 0;
    __syncthreads();
    int zeros = 0;
    for (int base = 0; base < n; base += 8 * NT) {
        u32 kk[8];
        #pragma unroll
        for (int u = 0; u < 8; ++u) {                    // all loads first
            const int i = base + u * NT + threadIdx.x;
            kk[u] = i < n ? __float_as_uint(s[i]) : 0u;
        }
        #pragma unroll
        for (int u = 0; u < 8; ++u) zeros += hist_add(h, kk[u], base + u * NT + (int)threadIdx.x < n);
    }
    for (int o = 16; o > 0; o >>= 1) zeros += __shfl_xor_sync(0xffffffffu, zeros, o);
    if (lane == 0 && zeros) atomicAdd(&S.sh[38], zeros);
    __syncthreads();
    return S.sh[38];
}

// The k-th smallest (from 0) of the n keys s (the bits of floats >= 0 sort as the floats):
// the top 12 bits from scale_histogram's hist (which is zeroed here for the next call; nullptr:
// own_histogram's, in S.cand), 8 more by a pass over s, and the last 12 by two passes over the
// few keys that match those 20 bits, copied to shared memory (or over s again if more than CAND
// match). *above gets the number of keys greater than the result.
__device__ u32 kth_key(const float* s, int n, int k, int* hist, Shared& S, int* above) {
    const int target = k;
    int c[BPT], before, all, mine = 0;
    const int* h = hist ? hist : (const int*)S.cand;
    #pragma unroll
    for (int j = 0; j < BPT; ++j) mine += c[j] = h[BPT * threadIdx.x + j];
    before = cta_exclusive_sum<NT>(mine, S.sh, &all);
    #pragma unroll
    for (int j = 0; j < BPT; ++j) {
        if (before <= k && k < before + c[j]) {
            S.sh[34] = BPT * threadIdx.x + j;
            S.sh[35] = k - before;
        }
        before += c[j];
        if (hist) hist[BPT * threadIdx.x + j] = 0;       // (this thread's own bins, read above)
    }
    __syncthreads();
    u32 prefix = (u32)S.sh[34] << 20, mask = 0xfff00000u;
    k = S.sh[35];
    const u32* keys = (const u32*)s;
    const int matched = radix_pass(keys, n, 12, prefix, mask, k, S);
    int count = n;
    if (matched <= CAND) {                               // collect them
        if (threadIdx.x == 0) S.sh[36] = 0;
        __syncthreads();
        const int lane = threadIdx.x & 31;
        for (int base = 0; base < n; base += 8 * NT) {
            u32 kk[8];
            #pragma unroll
            for (int u = 0; u < 8; ++u) {
                const int i = base + u * NT + threadIdx.x;
                kk[u] = i < n ? keys[i] : ~0u;           // ~0: matches no prefix of a float
            }
            #pragma unroll
            for (int u = 0; u < 8; ++u) {
                const bool take = (kk[u] & mask) == prefix;
                const unsigned b = __ballot_sync(0xffffffffu, take);
                int at = 0;
                if (lane == 0 && b) at = atomicAdd(&S.sh[36], __popc(b));
                at = __shfl_sync(0xffffffffu, at, 0);
                if (take) S.cand[at + __popc(b & ((1u << lane) - 1))] = kk[u];
            }
        }
        __syncthreads();
        keys = S.cand;
        count = matched;
    }
    radix_pass(keys, count, 4, prefix, mask, k, S);
    const int equal = radix_pass(keys, count, 0, prefix, mask, k, S);   // all 32 bits chosen
    *above = n - (target - k) - equal;                   // k: the rank among the equal keys
    return prefix;
}

// Flags and slots of one tensor's scale grid s (n blocks, row-major; 16-byte aligned):
//   rule 0 'median': flag = s / med > threshold, med the lower median of the nonzero s (1 if
//                    there are none)
//   rule 1 'topk':   the k largest s that are > 0 (ties at the k-th value in block order)
// slot[i] = the number of flagged blocks before i if block i is flagged and that is < cap,
// else -1; idx[j] = the block in slot j, -1 for the spare slots (j >= the flagged count);
// counts = {flagged, flagged with a slot}. hist: scale_histogram's, run just before on s, or
// nullptr: a small grid, whose histogram this CTA makes itself (own_histogram).
extern "C" __global__ void __launch_bounds__(NT, 1)
plane_select_kernel(const float* __restrict__ s, int n, int rule, float threshold, int k,
                    int cap, int* __restrict__ hist, int* __restrict__ slot,
                    int* __restrict__ idx, int* __restrict__ counts) {
    __shared__ Shared S;
    int zeros;
    if (hist) {
        zeros = hist[BINS];
        __syncthreads();
        if (threadIdx.x == 0) hist[BINS] = 0;
    } else {
        zeros = own_histogram(s, n, S);
    }

    // median: flag = key > cut (s / med > threshold is monotone in s, so it is a cut on the
    // keys); topk: key > cut, or == cut for the first `need` such keys in block order
    u32 cut = INF_KEY;
    int need = 0;
    if (rule == 0) {
        const int m = n - zeros;                         // sorted, the zeros come first: the
        int above;
        const u32 mk = kth_key(s, n, (2 * n - 1 - m) / 2, hist, S, &above);   // lower median
        const float med = mk ? __uint_as_float(mk) : 1.0f;
        if (threadIdx.x < 32) {
            // the cut is within an ulp or two of med * threshold: the warp tests the 32 keys
            // around it at once, and bisects (one division a step) if the window misses it
            const u32 g = __float_as_uint(__fmul_rn(med, threshold)), lane = threadIdx.x;
            unsigned up = 0u;
            if (g >= 16u && g < INF_KEY - 16u)
                up = __ballot_sync(0xffffffffu,
                                   __fdiv_rn(__uint_as_float(g - 16u + lane), med) > threshold);
            u32 lo = g - 16u + __ffs(up) - 2;            // the key below the first flagged one
            if ((up == 0u || up == 0xffffffffu) && lane == 0) {
                u32 hi = INF_KEY;                        // lo: not flagged; hi: flagged
                lo = 0;
                if (!(__fdiv_rn(__uint_as_float(hi), med) > threshold)) lo = hi;
                while (hi - lo > 1) {
                    const u32 mid = lo + (hi - lo) / 2;
                    if (__fdiv_rn(__uint_as_float(mid), med) > threshold) hi = mid; else lo = mid;
                }
            }
            if (lane == 0) S.sh[37] = (int)lo;
        }
        __syncthreads();
        cut = (u32)S.sh[37];
    } else if (k > 0) {
        int above;
        cut = kth_key(s, n, n - k, hist, S, &above);     // the k-th largest
        need = k - above;
    } else if (hist) {
        for (int j = 0; j < BPT; ++j) hist[BPT * threadIdx.x + j] = 0;
    }

    // the slot pass: tiles of NT * PER blocks, PER consecutive ones a thread
    int rank0 = 0, tie0 = 0;
    for (int t0 = 0; t0 < n; t0 += NT * PER) {
        const int i0 = t0 + threadIdx.x * PER;
        u32 key[PER];
        #pragma unroll
        for (int j = 0; j < PER; j += 4) {
            if (i0 + j + 3 < n) {
                const uint4 v = *(const uint4*)(s + i0 + j);
                key[j] = v.x, key[j + 1] = v.y, key[j + 2] = v.z, key[j + 3] = v.w;
            } else {
                #pragma unroll
                for (int e = 0; e < 4; ++e)
                    key[j + e] = i0 + j + e < n ? __float_as_uint(s[i0 + j + e]) : 0u;
            }
        }
        int tie = 0, all;
        if (rule == 1) {                                 // ties at the cut before mine
            int ties = 0;
            #pragma unroll
            for (int j = 0; j < PER; ++j) ties += key[j] == cut && key[j] != 0u;
            tie = tie0 + cta_exclusive_sum<NT>(ties, S.sh, &all);
            tie0 += all;
        }
        bool f[PER];
        int mine = 0;
        #pragma unroll
        for (int j = 0; j < PER; ++j) {
            const u32 x = key[j];
            if (rule == 0) f[j] = x > cut && x <= INF_KEY;          // (NaN: not flagged)
            else f[j] = k > 0 && x != 0u && x <= INF_KEY && (x > cut || (x == cut && tie++ < need));
            mine += f[j];
        }
        int rank = rank0 + cta_exclusive_sum<NT>(mine, S.sh, &all);
        rank0 += all;
        int out[PER];
        #pragma unroll
        for (int j = 0; j < PER; ++j) {
            const bool kept = f[j] && rank < cap;
            out[j] = kept ? rank : -1;
            if (kept) idx[rank] = i0 + j;
            rank += f[j];
        }
        #pragma unroll
        for (int j = 0; j < PER; j += 4) {
            if (i0 + j + 3 < n) {
                *(int4*)(slot + i0 + j) = make_int4(out[j], out[j + 1], out[j + 2], out[j + 3]);
            } else {
                #pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (i0 + j + e < n) slot[i0 + j + e] = out[j + e];
            }
        }
    }
    const int used = min(rank0, cap);
    for (int j = used + threadIdx.x; j < cap; j += NT) idx[j] = -1;
    if (threadIdx.x == 0) {
        counts[0] = rank0;
        counts[1] = used;
    }
}
"""

RESIDUAL_SRC = r"""
typedef signed char i8;
#define NT 256
#define PER (QB * QB / NT)                     // elements of the block per thread: 4, 16, 64
#define LOG2E 1.4426950408889634f
#define GELU_K 0.7978845608028654f
#define GELU_C 0.044715f
#define GELU_P (-2.0f * GELU_K * LOG2E)

// sigmoid(z) = 1 / (1 + 2^e), e = -z log2(e) folded in by the caller: int8_gelu_cuda.py's
// formula, so that a recomputed block is the kernel's own output before rounding
__device__ __forceinline__ float sigmoid2(float e) {
    float x, y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(x) : "f"(e));
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(1.0f + x));
    return y;
}

// The op's float output y at (row r, column c) of the padded 2-D view, 0 in the padding.
// Sources (-DSRC): 0 copy: a float tensor x (rows, cols), fp32 or bf16 (-DBF16);
// 1 gelu and 2 swiglu of int8 h (hq, hs; swiglu: [gate | up], the up block Cb columns right);
// 3 layernorm / 4 rmsnorm of fp32 x (rows, cols) with per-row mean and rstd, weight, bias.
struct Source {
    const void* x; const float* xs; const float* mean; const float* rstd;
    const float* w; const float* b; int rows, cols, Cb;
    __device__ float operator()(int r, int c) const {
#if SRC == 0
        if (r >= rows || c >= cols) return 0.0f;
#if BF16
        return __uint_as_float((unsigned)((const unsigned short*)x)[(long long)r * cols + c] << 16);
#else
        return ((const float*)x)[(long long)r * cols + c];
#endif
#elif SRC == 1
        const int ncol = Cb * QB;
        const float h = __fmul_rn((float)((const i8*)x)[(long long)r * ncol + c],
                                  xs[(long long)(r / QB) * Cb + c / QB]);
        return h * sigmoid2(h * fmaf(GELU_P * GELU_C, h * h, GELU_P));
#elif SRC == 2
        const int ncol = 2 * Cb * QB;
        const i8* hq = (const i8*)x;
        const long long row = (long long)r * ncol, srow = (long long)(r / QB) * 2 * Cb;
        const float g = __fmul_rn((float)hq[row + c], xs[srow + c / QB]);
        const float u = __fmul_rn((float)hq[row + c + Cb * QB], xs[srow + c / QB + Cb]);
        return g * sigmoid2(-LOG2E * g) * u;
#else
        if (r >= rows || c >= cols) return 0.0f;
        float v = ((const float*)x)[(long long)r * cols + c];
#if SRC == 3
        v = __fsub_rn(v, mean[r]);
#endif
        v = __fmul_rn(__fmul_rn(v, rstd[r]), w[c]);
        if (b) v = __fadd_rn(v, b[c]);
        return v;
#endif
    }
};

// One CTA per slot j of q2: block idx[j] = (bi, bj) of the (Rb*QB, Cb*QB) int8 output q, s.
// r = y - q1 s1 over the block, s2 = absmax(r) / 127, q2 = round(r / s2); a spare slot
// (idx -1) gets zeros. The Source's fields come as arguments (null where unused).
extern "C" __global__ void __launch_bounds__(NT)
plane_residual_kernel(const int* __restrict__ idx, const i8* __restrict__ q,
                      const float* __restrict__ s, int Cb, const void* x, const float* xs,
                      const float* mean, const float* rstd, const float* w, const float* b,
                      int rows, int cols, i8* __restrict__ q2, float* __restrict__ s2) {
    const Source src{x, xs, mean, rstd, w, b, rows, cols, Cb};
    __shared__ float red[NT / 32];
    const int j = blockIdx.x, blk = idx[j];
    i8* out = q2 + (long long)j * QB * QB;
    if (blk < 0) {                                       // spare slot (uniform in the CTA)
        for (int e = threadIdx.x; e < QB * QB; e += NT) out[e] = 0;
        if (threadIdx.x == 0) s2[j] = 0.0f;
        return;
    }
    const int bi = blk / Cb, bj = blk % Cb, ncol = Cb * QB;
    const float s1 = s[blk];
    float r[PER], amax = 0.0f;
    #pragma unroll
    for (int p = 0; p < PER; ++p) {
        const int e = threadIdx.x + p * NT, row = bi * QB + e / QB, col = bj * QB + e % QB;
        const float q1 = (float)q[(long long)row * ncol + col];
        r[p] = __fsub_rn(src(row, col), __fmul_rn(q1, s1));
        amax = fmaxf(amax, fabsf(r[p]));
    }
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = red[0];
    for (int w = 1; w < NT / 32; ++w) amax = fmaxf(amax, red[w]);
    const float inv = amax > 0.0f ? __fmul_rn(__frcp_rn(fmaxf(amax, 1e-38f)), 127.0f) : 0.0f;
    #pragma unroll
    for (int p = 0; p < PER; ++p)
        out[threadIdx.x + p * NT] = (i8)(int)rintf(fminf(fmaxf(__fmul_rn(r[p], inv), -127.0f), 127.0f));
    if (threadIdx.x == 0) s2[j] = __fdiv_rn(amax, 127.0f);
}
"""

LISTS_SRC = COMMON_SRC + r"""
#define NT 256

// One CTA per list L: the RL row blocks L*RL .. L*RL + RL - 1 of the plane operand's slot grid
// (Rb, Kb). A K-block is listed when one of them has a slot in [0, n2). Writes the stable
// partition of 0..Kb-1 (the listed K-blocks ascending, then the rest ascending), their count,
// and per entry the RL slots (-1: none) and their scales s2 (0: none).
// The last CTA to finish (done: a counter, zero between calls) then writes `order`, the stable
// partition of the plane operand's 128-row tiles (`halves` lists each): those with a listed
// K-block first. The GEMM's CTAs walk the tiles in that order, so that tiles with plane stages,
// which take longer, go first and to different CTAs (flagged blocks come in runs of rows, such
// as a sequence's first tokens: in tile order a CTA could get several of them).
extern "C" __global__ void __launch_bounds__(NT)
plane_lists_kernel(const int* __restrict__ slot, int Rb, int Kb, int n2,
                   const float* __restrict__ s2, int* __restrict__ listed,
                   int* __restrict__ count, int* __restrict__ slots, float* __restrict__ scales,
                   int halves, int* __restrict__ order, int* __restrict__ done) {
    __shared__ int sh[33];
    __shared__ bool last;
    const int L = blockIdx.x, r0 = L * RL;
    auto slot_at = [&](int i, int k) -> int {            // -1 past the grid or outside q2
        if (r0 + i >= Rb) return -1;
        const int v = slot[(long long)(r0 + i) * Kb + k];
        return v < n2 ? v : -1;
    };
    auto listed_at = [&](int k) -> int {
        if (k >= Kb) return 0;
        int any = 0;
        for (int i = 0; i < RL; ++i) any |= slot_at(i, k) >= 0;
        return any;
    };
    int n_listed = 0, chunk;
    for (int k0 = 0; k0 < Kb; k0 += NT) n_listed += __syncthreads_count(listed_at(k0 + threadIdx.x));
    int before_f = 0, before_u = n_listed;               // positions taken so far
    for (int k0 = 0; k0 < Kb; k0 += NT) {
        const int k = k0 + threadIdx.x, f = listed_at(k);
        const int pre = cta_exclusive_sum<NT>(f, sh, &chunk);
        if (k < Kb) {
            const long long e = (long long)L * Kb + (f ? before_f + pre : before_u + threadIdx.x - pre);
            listed[e] = k;
            for (int i = 0; i < RL; ++i) {
                const int v = slot_at(i, k);
                slots[e * RL + i] = v;
                scales[e * RL + i] = v >= 0 ? s2[v] : 0.0f;
            }
        }
        before_f += chunk;
        before_u += min(NT, Kb - k0) - chunk;
    }
    if (threadIdx.x == 0) {
        count[L] = n_listed;
        __threadfence();                                 // the count, before the arrival
        last = atomicAdd(done, 1) == (int)gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();                                     // every CTA's count, after its arrival
    const int tiles = gridDim.x / halves;
    auto heavy = [&](int t) -> int {
        if (t >= tiles) return 0;
        int any = 0;
        for (int h = 0; h < halves; ++h) any |= __ldcg(count + t * halves + h) > 0;
        return any;
    };
    int n_heavy = 0;
    for (int t0 = 0; t0 < tiles; t0 += NT) n_heavy += __syncthreads_count(heavy(t0 + threadIdx.x));
    int before_h = 0, before_l = n_heavy;
    for (int t0 = 0; t0 < tiles; t0 += NT) {
        const int t = t0 + threadIdx.x, f = heavy(t);
        const int pre = cta_exclusive_sum<NT>(f, sh, &chunk);
        if (t < tiles) order[f ? before_h + pre : before_l + threadIdx.x - pre] = t;
        before_h += chunk;
        before_l += min(NT, tiles - t0) - chunk;
    }
    if (threadIdx.x == 0) *done = 0;                     // for the next call
}
"""


SOURCES = {"copy": 0, "gelu": 1, "swiglu": 2, "layernorm": 3, "rmsnorm": 4}


_scratch = {}


def scratch(name, n, device):
    """A per-device int32 buffer of n zeros that the kernels using it leave all zero between
    calls: 'hist', scale_histogram's BINS counts + the zero count (plane_select zeroes what it
    reads); 'done', plane_lists' arrival counter (its last CTA resets it)."""
    key = (name, device.index if device.index is not None else torch.cuda.current_device())
    if key not in _scratch:
        _scratch[key] = torch.zeros(n, dtype=torch.int32, device=device)
    return _scratch[key]


def select_cuda(s, rule, threshold, capacity):
    """scale_histogram + plane_select on a scale grid s (Rb, Cb) fp32 CUDA. capacity: slots in
    q2 (None: every block, for an exact count). Returns slot (Rb, Cb) int32, idx (capacity,)
    int32 and counts (2,) int32 = (flagged, flagged with a slot), on the device: no host
    sync."""
    if rule not in RULE_IDS:
        raise ValueError(f"plane_select takes the rules {tuple(RULE_IDS)}, got {rule!r}")
    n = s.numel()
    if n == 0 or n >= 2**31 - 1024 * 8:          # (the kernel's index math: int32, + a batch)
        raise ValueError(f"plane_select: a scale grid of {n} blocks is out of range")
    cap = n if capacity is None else capacity
    k = 0
    if rule == "topk":
        k = topk_count(threshold, n)
    else:
        check_threshold(threshold)
    dev = s.device
    if not s.is_contiguous() or s.data_ptr() % 16:
        s = s.clone(memory_format=torch.contiguous_format)
    buf = torch.empty((n + cap + 2,), dtype=torch.int32, device=dev)   # one allocation:
    slot, idx, counts = buf[:n].view(s.shape), buf[n:n + cap], buf[n + cap:]  # (host time)
    small = n <= SMALL_GRID                # plane_select makes the histogram itself
    hist = np.uint64(0)
    if not small:
        hist = scratch("hist", HIST_BINS + 1, dev)
        per_cta = HIST_THREADS * 16
        launch(get_kernel(HIST_SRC, "scale_histogram_kernel", (), dev), (-(-n // per_cta),),
               (HIST_THREADS,), (s, np.int32(n), hist))
    thr = np.float32(threshold if rule == "median" and math.isfinite(threshold) else 0.0)
    nt = SMALL_THREADS if small else 1024
    launch(get_kernel(SELECT_SRC, "plane_select_kernel", (f"NT={nt}",), dev), (1,), (nt,),
           (s, np.int32(n), np.int32(RULE_IDS[rule]), thr, np.int32(k), np.int32(cap), hist,
            slot, idx, counts))
    return slot, idx, counts


def residual_cuda(t, idx, source, x=None, xs=None, mean=None, rstd=None, w=None, b=None):
    """plane_residual: q2 (len(idx), QB, QB) int8 and s2 (len(idx),) fp32 of the blocks idx of
    QTensor t (a kernel's output), their float values recomputed by `source` (SOURCES) from
    the tensors given: copy x (t.rows, t.cols) fp32|bf16; gelu, swiglu xs = h_q.s and x = h_q.q;
    layernorm x, mean, rstd, w[, b]; rmsnorm x, rstd, w. All contiguous CUDA tensors."""
    QB, dev = t.qblock, t.q.device
    n = idx.numel()
    q2 = torch.empty((n, QB, QB), dtype=torch.int8, device=dev)
    s2 = torch.empty((n,), dtype=torch.float32, device=dev)
    if n == 0:
        return q2, s2
    bf16 = source == "copy" and x.dtype == torch.bfloat16
    kernel = get_kernel(RESIDUAL_SRC, "plane_residual_kernel",
                        (f"QB={QB}", f"SRC={SOURCES[source]}", f"BF16={int(bf16)}"), dev)
    ptrs = tuple(np.uint64(0) if v is None else v for v in (x, xs, mean, rstd, w, b))
    launch(kernel, (n,), (RESIDUAL_THREADS,),
           (idx, t.q, t.s, np.int32(t.s.shape[1])) + ptrs
           + (np.int32(t.rows), np.int32(t.cols), q2, s2))
    return q2, s2


def plane_lists_cuda(slot, s2, qblock, halves=1):
    """fallback's plane_lists (int8_gemm_sm90_plane.py) in one kernel: same outputs, bit for
    bit."""
    per = TILE // qblock
    rl = per // halves
    Rb, Kb = slot.shape
    lists = -(-Rb // per) * halves
    dev = slot.device
    listed = torch.empty((lists, Kb), dtype=torch.int32, device=dev)
    count = torch.empty((lists,), dtype=torch.int32, device=dev)
    slots = torch.empty((lists, Kb, rl), dtype=torch.int32, device=dev)
    scales = torch.empty((lists, Kb, rl), dtype=torch.float32, device=dev)
    order = torch.empty((lists // halves,), dtype=torch.int32, device=dev)
    kernel = get_kernel(LISTS_SRC, "plane_lists_kernel", (f"RL={rl}",), dev)
    launch(kernel, (lists,), (LIST_THREADS,),
           (slot.contiguous(), np.int32(Rb), np.int32(Kb), np.int32(s2.shape[0]), s2.contiguous(),
            listed, count, slots, scales, np.int32(halves), order, scratch("done", 1, dev)))
    return listed, count, slots, scales, order
