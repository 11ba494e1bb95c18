"""
Block-scaled INT8 GEMM for Hopper (sm_90a): wgmma from shared memory, warp-specialised.

Same math and contract as int8_gemm.py (read its docstring first): C = A @ B^T with a_q (Mp, Kp)
and b_q (Np, Kp) int8 row-major (K-contiguous: the only layout wgmma takes for 8-bit types),
a_s (Mp/QB, Kp/QB) and b_s (Np/QB, Kp/QB) fp32, QB = 32, 64 or 128. For each K-block the int32
partial sum P is exact; it is "promoted" into an fp32 accumulator as acc += float(P) * s_A * s_B
(DeepGEMM's FP8 promotion, here every QB of K). Epilogues are int8_gemm_mma.py's per-pair store
functions (GEMM_STORE_SRC): fp32 / bf16 (plus an fp32 tensor where given: accumulate or
residual), int8 RTN, int8 stochastic rounding.

One CTA = 3 warpgroups (384 threads), one per SM (persistent), walking the 128 x 128 tiles of C
(tiles b, b + gridDim.x, ...; the producer fills the ring for the next tile while the consumers
finish this one):

    warpgroup 0, producer (setmaxnreg 40):   TMA copies of A's and B's 128 x 128-byte tiles (and
                                             cp.async of the 4 B scales) into a STAGES-deep ring,
                                             counted on full[s]
    warpgroups 1, 2, consumers (232 regs):   rows 0-63 / 64-127 of the tile, all 128 columns

    producer   | load 0 | load 1 | load 2 | load 3 | load 4 | wait empty[0] | load 5 | ...
    consumer       wait full[0]
      K-block:   kb=0        kb=1              kb=2              kb=3
      wgmma      [D0 <- kb0] [D1 <- kb1]       [D0 <- kb2]       [D1 <- kb3]
      FP units               [acc += D0 * s0]  [acc += D1 * s1]  [acc += D0 * s2] ...
                             ^ wgmma.wait_group 1: kb0 done while kb1 runs on the tensor cores
    A stage (BK = 128 bytes of K) holds 128/QB K-blocks; after the last of them is promoted,
    every consumer thread arrives on empty[s] and the producer refills the slot.

The two consumer warpgroups interleave too: one's promotion runs while the other's wgmma
occupies the tensor cores. Partial tiles: rows past Mp / Np and K past Kp are zero-filled by
TMA, their scales load as 0, and the stores are masked; so any Mp, Np, Kp multiple of QB works.
The epilogues write the tile into shared memory (swizzled like the operands) and one thread stores
it with TMA, so the consumers go on to the next tile while the copy engine writes: int8 (2-byte
stores from the registers took longer than the rest of the epilogue, notes/epilogue_probe.log),
and fp32 / bf16 (out_mode: the weight gradient's accumulate is a TMA reduce-add into C, a
residual is TMA-loaded into the C tile during the K loop; 0.85-0.98x the time of the register
stores, which rows not 16-byte aligned keep: notes/tma_out_ab.log).

A weight gradient added into .grad (the ACCUMULATE epilogue) with few output tiles runs each
tile as K splits (split_k; a 768 x 768 gradient is 36 tiles for 132 SMs): the CTAs walk (tile,
split) units, and the splits add into C in split order, so the sums are the same at every run.

The shared-memory layout, the PTX wrappers and the producer are in int8_gemm_sm90_ring.py; the
fused fallback plane (the fallback operand's second plane, fallback.py, run as extra K-blocks
before the plain ones) in int8_gemm_sm90_plane.py. This file holds the consumers, the epilogues,
the kernels and the launcher.

Two promotions, one K loop each (consume()); _source() picks one per launch:
  exact (SM90_CONSUME_SRC)        acc = fma(float(D), s_A s_B, acc): I2FP + FFMA per element per
                                  K-block, bit for bit the reference's rounding order but for FMA
  magic (SM90_CONSUME_MAGIC_SRC)  D is seeded with the bits of 1.5 * 2^23, so that it *is* a float
                                  and acc = fma(coef, D, acc) needs no conversion (its comment
                                  derives it); the default where K splits into its groups
                                  of K-blocks (512 of K at QB = 128, 256 or 512 at 32 and 64).
                                  Error: about one unit of the largest s_A s_B in the group
                                  per K-block (~4e-5 relative on random data, 100x below what
                                  int8 rounding of the operands costs; an outlier block sets
                                  the unit for its group: 7e-4 on GLU-like data,
                                  notes/fallback_ab.log).
The promotion, not the tensor cores, bounds the kernel: at QB = 32 the wgmma work alone runs at
~1.3 POPS, but the promotion does not overlap it (notes/gemm_sm90.md), so every instruction per
element per K-block counts. Hence the consumers build no address in the K loop: the wgmma
descriptors are made once and moved by constant or per-stage offsets, the stage's slot and
phase are carried along (Stage), and the scales come as one vector load of B's. SASS per element
per K-block (consumer loop, QB = 32, notes/gemm_sm90_build.py --sass): exact 2.31 (I2FP 1,
FFMA 1, other 0.31), magic 1.58 with K-groups of 16 (FFMA 1.17, seeding MOV 0.13, other 0.28);
before that 2.62 and 1.90 (other 0.62).

Measured on an H100 (results/bench_gpu.md), against cuBLAS bf16 over the 15 GEMM rows, before
the descriptor change: QB = 32 magic 0.37-0.78x, exact 0.34-0.63x; QB = 64 magic 0.43-0.97x;
QB = 128 0.47-1.07x. Since then (notes/gemm_sm90.md, v4 and v6): hoisted descriptors (2-7%
at QB = 32), TMA loads (0.81-1.00x the time), a persistent grid (0.85-1.04x) and the TMA-stored
int8 epilogue (up to 0.7x the time at K = 768). Limits: the promotion's issue work at QB = 32
and 64, operand delivery (128 x 128 tiles, no multicast) at 128.
"""
from functools import lru_cache

import numpy as np
import torch

from int8_gemm import cdiv
from int8_gemm_mma import GEMM_STORE_SRC, TILE_ORIGIN_SRC
from int8_gemm_sm90_plane import (CONSUME_PLANE_SRC, NO_MAP, PLANE_SRC, PLANE_STAGES_SRC,
                                  plane_args)
from int8_gemm_sm90_ring import (SM90_PLAIN_STAGES_SRC, SM90_PRODUCE_SRC,
                                 SM90_PTX_SRC, TILE, _smem_bytes, _wgmma_wrapper)
from quantize import get_kernel, launch
from quantize_cuda import sr_salt
from tma import tile_map

THREADS = 384                                # producer + 2 consumer warpgroups

# The consumers' steps for one K-block: wait for its stage, issue its wgmma, promote it, free the
# stage. consume() below, consume_plane (int8_gemm_sm90_plane.py) and the ping-pong consume()
# (int8_gemm_sm90_pp.py) are built from them.
SM90_KBLOCK_SRC = r"""
// A consumer thread's handles on the ring, made once before the K loop: what a K-block needs is
// one of these plus a compile-time or per-stage offset, so the loop builds no address.
struct Consumer {
    unsigned base;                // the ring's shared base (1024-aligned)
    int wg;                       // consumer warpgroup: rows 64 wg .. 64 wg + 63 of the tile
    unsigned desc_a, desc_b;      // descriptor low words (desc_lo) of slot 0, K 0: my A rows; B
    int rb;                       // my row block: every row of the thread lies in it
};
// wg and rb must be warp-uniform values the compiler can see as such (__shfl_sync): then the
// descriptors and scale addresses live in uniform registers, where wgmma reads them (no R2UR).
__device__ __forceinline__ Consumer make_consumer(unsigned base, int wg, int rb) {
    return Consumer{base, wg, desc_lo(base + wg * 64 * BK), desc_lo(base + SMEM_B), rb};
}

// Stage g of the ring (counted over all of the CTA's tiles) as the consumers see it: its slot
// g % STAGES and the parity of the phase of its full barrier that they wait for (the producer's
// stage g completes phase g / STAGES of the slot). Stage{0, 0} is the first.
struct Stage {
    int slot;
    unsigned parity;
};
__device__ __forceinline__ Stage next_stage(Stage s) {
    return s.slot == STAGES - 1 ? Stage{0, s.parity ^ 1} : Stage{s.slot + 1, s.parity};
}

// Wait for stage st to land
__device__ __forceinline__ void wait_full(const Consumer& cs, Stage st) {
    mbar_wait(cs.base + SMEM_BAR + 8 * st.slot, st.parity);
    fence_proxy_async();
}
// Hand stage st's slot back to the producer
__device__ __forceinline__ void release(const Consumer& cs, Stage st) {
    mbar_arrive(cs.base + SMEM_BAR + 8 * STAGES + 8 * st.slot);
}
// KSTEPS wgmma k32 steps of K-block column j of stage st into d, one commit group. Its operands
// start slot * TILE_BYTES + j * QB + 32 s bytes past slot 0's, so each descriptor is the
// consumer's plus that >> 4 (desc_lo says why the add cannot carry): with j and s constants, one
// uniform add per descriptor per step. The first step overwrites D (scale-d = 0) unless SEEDED:
// then every step adds to D (the magic-number promotion seeds D).
template <bool SEEDED = false>
__device__ __forceinline__ void issue_wgmma(int (&d)[NACC], const Consumer& cs, Stage st, int j) {
    const unsigned off = st.slot * (TILE_BYTES / 16) + j * (QB / 16);
    wgmma_fence();
    #pragma unroll
    for (int s = 0; s < KSTEPS; ++s)
        wgmma_m64n128k32_s8(d, desc_at(cs.desc_a + off + 2 * s), desc_at(cs.desc_b + off + 2 * s),
                            SEEDED || s > 0);
    wgmma_commit();
}

// c[cb] = s_A[rb] * s_B[cb] of K-block column j of stage st (landed); B's CBS scales of the
// K-block are adjacent ([KBS][CBS]): one vector load
__device__ __forceinline__ void scale_products(float (&c)[CBS], const Consumer& cs, Stage st, int j) {
    const float* s = (const float*)__cvta_shared_to_generic(cs.base + SMEM_S
                                                            + 4 * st.slot * SCALE_FLOATS);
    const float sa = s[j * RBS + cs.rb], *pb = s + RBS * KBS + j * CBS;
    float sb[CBS];
    if constexpr (CBS == 4) {
        const float4 v = *(const float4*)pb;
        sb[0] = v.x, sb[1] = v.y, sb[2] = v.z, sb[3] = v.w;
    } else if constexpr (CBS == 2) {
        const float2 v = *(const float2*)pb;
        sb[0] = v.x, sb[1] = v.y;
    } else {
        sb[0] = *pb;
    }
    #pragma unroll
    for (int cb = 0; cb < CBS; ++cb) c[cb] = sa * sb[cb];
}
// acc += P * c of the finished K-block in d: P = float(D) (exact), or SEEDED: D holds the bits of
// the float MAGIC + S, used as it is, and c is the magic promotion's coefficient.
template <bool SEEDED = false>
__device__ __forceinline__ void promote(float (&acc)[NACC], int (&d)[NACC], const float (&c)[CBS]) {
    fence_operands(d);
    #pragma unroll
    for (int i = 0; i < NACC; ++i) {
        const float x = SEEDED ? __int_as_float(d[i]) : __int2float_rn(d[i]);
        acc[i] = fmaf(x, c[(i / 4) * 8 / QB], acc[i]);
    }
}
// Wait until at most N wgmma groups are in flight, then promote K-block column j of stage st
// from d, exactly. (Reading the scales before the wait would hide their latency, but at QB = 32
// keeps 5 more registers live next to 2 D buffers + acc: ptxas spills.) SKIP_ZERO: a warp whose
// scale products are all 0 skips it (it would add 0; warp-uniform, as c depends on rb and the
// stage alone): the fallback plane's K-blocks (consume_plane, int8_gemm_sm90_plane.py).
template <int N, bool SKIP_ZERO = false>
__device__ __forceinline__ void promote_kblock(float (&acc)[NACC], int (&d)[NACC],
                                               const Consumer& cs, Stage st, int j) {
    wgmma_wait<N>();
    float c[CBS];
    scale_products(c, cs, st, j);
    if constexpr (SKIP_ZERO) {
        bool nonzero = false;
        #pragma unroll
        for (int cb = 0; cb < CBS; ++cb) nonzero |= c[cb] != 0.f;
        if (!nonzero) return;
    }
    promote(acc, d, c);
}
// promote_kblock, and the last K-block column of a stage frees its slot
template <int N>
__device__ __forceinline__ void finish_kblock(float (&acc)[NACC], int (&d)[NACC],
                                              const Consumer& cs, Stage st, int j) {
    promote_kblock<N>(acc, d, cs, st, j);
    if (j == KBS - 1) release(cs, st);
}
// Issue K-block column j of stage st into d, waiting for the stage to land at its first column
template <bool SEEDED = false>
__device__ __forceinline__ void issue_kblock(int (&d)[NACC], const Consumer& cs, Stage st, int j) {
    if (j == 0) wait_full(cs, st);
    issue_wgmma<SEEDED>(d, cs, st, j);
}
// The G / KBS stages of a consumer group from stage st on: K-block g of the group is column
// g % KBS of s[g / KBS]. Returns the stage after them.
__device__ __forceinline__ Stage group_stages(Stage (&s)[G / KBS], Stage st) {
    #pragma unroll
    for (int i = 0; i < G / KBS; ++i) {
        s[i] = st;
        st = next_stage(st);
    }
    return st;
}
"""


# consume(): the consumer warpgroups' K loop; int8_gemm_sm90_pp.py swaps in its ping-pong one
SM90_CONSUME_SRC = r"""
// Consumer warpgroup cs.wg: acc += its 64 x 128 slice of the tile from the KT stages starting at
// st; returns the stage after them. Register i of a thread (warp w
// of the warpgroup, lane l) is row 16 w + l/4 + 8 ((i/2) % 2), col 8 (i/4) + 2 (l%4) + i%2:
// per n8 column tile the mma.sync m16n8 layout, {0, 1} on row g and {2, 3} on row g + 8.
// K-blocks go in groups of G, ping-ponging between D[0] and D[1]; every group ends with no
// wgmma in flight (ptxas serialises all wgmma (C7514) if one is in flight across a loop edge).
__device__ __forceinline__ Stage consume(float (&acc)[NACC], const Consumer& cs, Stage st, int KT) {
    int d[2][NACC];
    for (int kt = 0; kt < KT; kt += G / KBS) {      // KT: plain_stages(), a multiple of G / KBS
        Stage s[G / KBS];
        st = group_stages(s, st);
        issue_kblock(d[0], cs, s[0], 0);
        #pragma unroll
        for (int g = 1; g < G; ++g) {
            issue_kblock(d[g % 2], cs, s[g / KBS], g % KBS);  // g is unrolled: d[g % 2] is static
            // K-block g - 1 is done once at most 1 group (g) is in flight
            finish_kblock<1>(acc, d[(g - 1) % 2], cs, s[(g - 1) / KBS], (g - 1) % KBS);
        }
        finish_kblock<0>(acc, d[(G - 1) % 2], cs, s[G / KBS - 1], KBS - 1);
    }
    return st;
}

"""

# consume() with the magic-number promotion: 1 FFMA per accumulator element per K-block
SM90_CONSUME_MAGIC_SRC = r"""
// The magic-number promotion. Seed D with the bits of 1.5 * 2^23 (MAGIC_BITS) and let every
// wgmma *add* its int32 sums into D: after K-blocks k1..k of a buffer, D's bits are those of the
// float F_k = MAGIC + S_k, S_k = P_k1 + ... + P_k, exactly, as long as |S_k| < 2^22 (the floats
// in [2^23, 2^24) are the integers, and an integer add moves along them). So D is read as a
// float with no conversion instruction. The promotion wants sum_k c_k P_k (c_k = s_A s_B of
// K-block k) and P_k = S_k - S_k', with k' the buffer's previous K-block, so by Abel summation
//     sum_k c_k P_k = sum_k (c_k - c_next(k)) F_k  -  MAGIC * c_first       (c_next(last) = 0)
// one FFMA per element per K-block (acc += coef * F_k), plus per group of G K-blocks: re-seeding
// both buffers (2 MOV) and the two bias terms (2 FFMA). Each buffer sums G/2 K-blocks of at most
// QB * 127^2, so G/2 * QB <= 256 keeps |S| < 2^22. The bias of a buffer is subtracted before its
// last term is added, so that with unit scales every intermediate is an integer below 2^24 and
// the result is exact. With general scales the intermediates carry ~MAGIC * c, so each FFMA
// rounds at ~0.5 ulp(2^24 c) = c/2 in absolute terms: about 1e-5 of a typical output, 100x
// below the int8 quantization error of P, but not the exact fp32 promotion of int8_gemm_sm90.
constexpr int MAGIC_BITS = 0x4B400000;       // 12582912.f = 1.5 * 2^23
constexpr float MAGIC = 12582912.f;
static_assert(G % 2 == 0 && G / 2 * QB <= 256, "a D buffer may sum at most 256 of K (|S| < 2^22)");

__device__ __forceinline__ void sub_bias(float (&acc)[NACC], const float (&c)[CBS]) {
    #pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = fmaf(-MAGIC, c[(i / 4) * 8 / QB], acc[i]);
}

// Consumer warpgroup cs.wg: as consume() in SM90_CONSUME_SRC (same register layout, groups of G
// K-blocks alternating between D[0] and D[1], no wgmma in flight across the loop edge), with the
// magic-number promotion: buffer b takes K-blocks b, b + 2, ... of the group. Promoting K-block
// g - 1 needs c of K-block g + 1 (its buffer's next), read ahead: a stage opened by a K-block
// x >= 2 is waited for there (iteration x - 1), before its first wgmma is issued.
__device__ __forceinline__ Stage consume(float (&acc)[NACC], const Consumer& cs, Stage st, int KT) {
    int d[2][NACC];
    for (int kt = 0; kt < KT; kt += G / KBS) {      // KT: plain_stages(), a multiple of G / KBS
        Stage s[G / KBS];
        st = group_stages(s, st);
        #pragma unroll
        for (int i = 0; i < NACC; ++i) d[0][i] = d[1][i] = MAGIC_BITS;
        fence_operands(d[0]);                 // seed both buffers here, before any wgmma is in
        fence_operands(d[1]);                 // flight (else ptxas waits on one to seed the other)
        float c[2][CBS], c1_first[CBS];      // c of each buffer's next K-block to promote
        wait_full(cs, s[0]);
        issue_wgmma<true>(d[0], cs, s[0], 0);
        scale_products(c[0], cs, s[0], 0);
        sub_bias(acc, c[0]);                  // buffer 0's bias, before any of its terms
        #pragma unroll
        for (int g = 1; g < G; ++g) {
            if (KBS == 1 && g == 1) wait_full(cs, s[1]);  // K-block 1 opens a stage: not read ahead
            issue_wgmma<true>(d[g % 2], cs, s[g / KBS], g % KBS);
            if (g == 1) {
                scale_products(c[1], cs, s[1 / KBS], 1 % KBS);
                #pragma unroll
                for (int cb = 0; cb < CBS; ++cb) c1_first[cb] = c[1][cb];
            }
            // K-block g - 1: coef = c - c of g + 1, or c when g + 1 is past the group's end
            float coef[CBS];
            if (g + 1 < G) {
                if ((g + 1) % KBS == 0) wait_full(cs, s[(g + 1) / KBS]);   // g + 1 opens it
                float cn[CBS];
                scale_products(cn, cs, s[(g + 1) / KBS], (g + 1) % KBS);
                #pragma unroll
                for (int cb = 0; cb < CBS; ++cb) {
                    coef[cb] = c[(g - 1) % 2][cb] - cn[cb];
                    c[(g - 1) % 2][cb] = cn[cb];
                }
            } else {
                #pragma unroll
                for (int cb = 0; cb < CBS; ++cb) coef[cb] = c[(g - 1) % 2][cb];
            }
            wgmma_wait<1>();                  // K-block g - 1 is done, g runs
            promote<true>(acc, d[(g - 1) % 2], coef);
            if ((g - 1) % KBS == KBS - 1) release(cs, s[(g - 1) / KBS]);
            if (g == G - 1) sub_bias(acc, c1_first);    // buffer 1's bias, before its last term
        }
        wgmma_wait<0>();
        promote<true>(acc, d[(G - 1) % 2], c[(G - 1) % 2]);
        release(cs, s[G / KBS - 1]);
    }
    return st;
}

"""

SM90_EPILOGUE_SRC = r"""
// A consumer thread's accumulators -> int8, into the C tile in shared memory (ctile), rows of
// 128 bytes with the 128-byte swizzle (16-byte chunk c of row r at chunk c ^ (r % 8), as TMA's
// SWIZZLE_128B reads it: a warp's 8 rows then hit 8 different chunks, no bank conflict). r, c0:
// the thread's first pair in the tile; row, col0: in C (the SR hash is of C's coordinates).
template <bool SR>
__device__ __forceinline__ void stage_int8_rows(const float (&acc)[NACC], const float (&inv)[CBS],
                                                unsigned ctile, int r, int c0, int row, int col0,
                                                unsigned seed) {
    #pragma unroll
    for (int i = 0; i < NACC; i += 4) {
        const float s = inv[(i / 4) * 8 / QB];
        const int c = c0 + 2 * i;                      // (i / 4) * 8 + 2 (lane % 4)
        #pragma unroll
        for (int h = 0; h < 2; ++h) {                  // rows r and r + 8: the same r % 8
            const unsigned short p = int8_pair<SR>(acc[i + 2 * h], acc[i + 2 * h + 1], s, seed,
                                                   row + 8 * h, col0 + 2 * i);
            const unsigned at = ctile + (r + 8 * h) * 128 + (((c / 16) ^ (r % 8)) << 4) + c % 16;
            asm volatile("st.shared.u16 [%0], %1;\n" :: "r"(at), "h"(p) : "memory");
        }
    }
}

// The C tile's boxes of 128 rows x 128 bytes (`cols` fp32 or bf16 columns each) that hold any of
// the tile at column n0 of C's N: the rest lie wholly past N and are neither loaded nor stored.
__device__ __forceinline__ int c_boxes(int N, int n0, int cols) {
    return min(128 / cols, (N - n0 + cols - 1) / cols);
}
// the C tile address of the thread's pair i (acc[i], acc[i + 1]) in stage_float_rows' layout
template <bool BF16>
__device__ __forceinline__ unsigned float_pair_at(unsigned ctile, int r, int c0, int i) {
    constexpr int ESZ = BF16 ? 2 : 4, PER_BOX = 128 / ESZ, PER_CHUNK = 16 / ESZ;
    const int c = c0 + 2 * (i / 4 * 4), rr = r + 8 * (i / 2 % 2);
    return ctile + c / PER_BOX * C_BOX + rr * 128 + ((c % PER_BOX / PER_CHUNK ^ rr % 8) << 4)
           + c % PER_CHUNK * ESZ;
}
// A consumer thread's accumulators -> the C tile as fp32 (or BF16) rows, in TMA's boxes of 128
// rows x 128 bytes (32 fp32 / 64 bf16 columns; box j at C_BOX j), 128-byte swizzled like the
// int8 rows above: a warp's pair stores touch each bank at most twice (fp32) / once (bf16).
// RESIDUAL: the C tile holds the residual's tile (TMA-loaded, landed): out = acc + residual, the
// old pairs of a chunk loaded before its stores.
template <bool BF16, bool RESIDUAL>
__device__ __forceinline__ void stage_float_rows(const float (&acc)[NACC], unsigned ctile, int r,
                                                 int c0) {
    constexpr int CHUNK = 16;                          // values loaded ahead of their stores
    // the addresses depend on the thread alone: hidden from the compiler, which would otherwise
    // make all 32 once per CTA and spill them across the K loop
    asm volatile("mov.u32 %0, %0;\n" : "+r"(ctile));
    #pragma unroll
    for (int i0 = 0; i0 < NACC; i0 += CHUNK) {
        float old[CHUNK];
        #pragma unroll
        for (int i = 0; i < CHUNK; i += 2) {
            old[i] = old[i + 1] = 0.f;
            if (RESIDUAL) asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(old[i]),
                                       "=f"(old[i + 1]) : "r"(float_pair_at<BF16>(ctile, r, c0, i0 + i)));
        }
        #pragma unroll
        for (int i = 0; i < CHUNK; i += 2) {
            const unsigned at = float_pair_at<BF16>(ctile, r, c0, i0 + i);
            if constexpr (BF16) {
                const unsigned p = bf16_bits(acc[i0 + i]) | ((unsigned)bf16_bits(acc[i0 + i + 1]) << 16);
                asm volatile("st.shared.u32 [%0], %1;\n" :: "r"(at), "r"(p) : "memory");
            } else {
                const float v0 = RESIDUAL ? acc[i0 + i] + old[i] : acc[i0 + i];
                const float v1 = RESIDUAL ? acc[i0 + i + 1] + old[i + 1] : acc[i0 + i + 1];
                asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" :: "r"(at), "f"(v0), "f"(v1)
                             : "memory");
            }
        }
    }
}

// The residual's tile at (m0, n0) -> the C tile, counted on the C barrier; by one thread, before
// the tile's K loop, so that it lands while the tile is computed. The C tile is free once the
// last tile's store has read it.
__device__ __forceinline__ void load_residual(const TensorMap* add_map, unsigned base, int m0,
                                              int n0, int N) {
    const int boxes = c_boxes(N, n0, 32);
    bulk_wait_read();
    mbar_arrive_expect_tx(base + SMEM_CBAR, boxes * C_BOX);
    for (int j = 0; j < boxes; ++j) tma_load(base + SMEM_C + j * C_BOX, add_map, n0 + 32 * j, m0,
                                             base + SMEM_CBAR);
}

// acc += add (M x N fp32: the output itself to accumulate, or a residual) for the thread's
// pairs: every value loaded before the first store. Pair by pair (load, add, store), the compiler
// may not move a load above the store before it (add might alias out), so each of the 32 loads
// waited on DRAM in turn: +0.2 ms a width-4096 wgrad.
__device__ __forceinline__ void add_old(float (&acc)[NACC], const float* add, int M, int N,
                                        int row, int col0) {
    float old[NACC];                                   // (the dead wgmma registers' room)
    #pragma unroll
    for (int i = 0; i < NACC; i += 2) {
        const int r = row + 8 * (i / 2 % 2), c = col0 + 2 * (i / 4 * 4);
        const long long at = (long long)r * N + c;
        const bool in = r < M && c < N, two = in && c + 1 < N;
        if (two && N % 2 == 0) {
            const float2 v = *(const float2*)(add + at);
            old[i] = v.x;
            old[i + 1] = v.y;
        } else {
            old[i] = in ? add[at] : 0.0f;
            old[i + 1] = two ? add[at + 1] : 0.0f;
        }
    }
    #pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] += old[i];
}

// How the float kernel writes C (the launcher's choice, out_mode): from the registers (REGS: rows
// not 16-byte aligned), or through the C tile and TMA with out_map: a store (STORE, fp32 or
// bf16), an add into C (ACCUMULATE: the weight gradient's out += acc), or a store of acc plus the
// residual that load_residual put in the C tile (RESIDUAL, add_map). The register path stores
// 64 KB a tile from the consumers, which then wait on it (and on DRAM for add's values): through
// TMA the consumers go on to the next tile while the copy engine writes.
enum OutMode { REGS = 0, STORE = 1, ACCUMULATE = 2, RESIDUAL = 3 };

// Consumer thread ct's share of the tile at (m0, n0), the CTA's n-th: out = acc (fp32 / bf16),
// + add (fp32) where add is not null (add == out: out += acc), as out_mode says; or the
// int8 blocks of acc with their scales (through the C tile in shared memory and a TMA store by
// thread 0, with q_map). bmax: this tile's RBS x CBS block absmax words (zero),
// bmax_next the next tile's, zeroed here: the CTA's tiles take turns over three sets of them, so
// that the one zeroed was last read two tiles ago, before every consumer thread passed the
// previous tile's consumer_sync, and is next written after this one's.
template <int OUT_INT8>
__device__ __forceinline__ void store_tile(float (&acc)[NACC], int ct, int rb, int m0, int n0,
        int n, int Mp, int Np, int M, int N, void* out, int out_bf16, const float* add, float* q_s,
        int stochastic, unsigned seed, int* bmax, int* bmax_next, unsigned base,
        const TensorMap* q_map, const TensorMap* out_map, int out_mode, int* turn, int split) {
    const int wg = ct / 128, warp = ct / 32 % 4, lane = ct % 32;
    const int row = m0 + 64 * wg + 16 * warp + lane / 4, col0 = n0 + 2 * (lane % 4);
    const unsigned ctile = base + SMEM_C;
    const int r = row - m0, c0 = col0 - n0;
    if (!OUT_INT8 && out_mode == REGS) {
        if (add) add_old(acc, add, M, N, row, col0);
        #pragma unroll
        for (int i = 0; i < NACC; i += 4) {
            store_float_pair(out, out_bf16, 0, M, N, row, col0 + 2 * i, acc[i], acc[i + 1]);
            store_float_pair(out, out_bf16, 0, M, N, row + 8, col0 + 2 * i, acc[i + 2], acc[i + 3]);
        }
        return;
    }
    if (!OUT_INT8) {
        if (out_mode == RESIDUAL) mbar_wait(base + SMEM_CBAR, n & 1);   // the residual landed
        else {
            if (ct == 0) {
                bulk_wait_read();                     // the last tile's store has read the C tile
                // split-K: the splits before mine have added (waiting here, not right before the
                // adds below, keeps ptxas from spilling in the K loop)
                if (turn) wait_turn(turn, split);
            }
            consumer_sync();
        }
        if (out_bf16) stage_float_rows<true, false>(acc, ctile, r, c0);
        else if (out_mode == RESIDUAL) stage_float_rows<false, true>(acc, ctile, r, c0);
        else stage_float_rows<false, false>(acc, ctile, r, c0);
        fence_proxy_async();                          // st.shared -> visible to the TMA's reads
        consumer_sync();
        if (ct == 0) {
            const int cols = out_bf16 ? 64 : 32, boxes = c_boxes(N, n0, cols);
            for (int j = 0; j < boxes; ++j) {
                if (out_mode == ACCUMULATE) tma_store<true>(out_map, n0 + cols * j, m0, ctile + j * C_BOX);
                else tma_store(out_map, n0 + cols * j, m0, ctile + j * C_BOX);
            }
            bulk_commit();
            if (turn) pass_turn(turn);
        }
        return;
    }
    // int8: absmax per QB x QB block = thread max -> warp max -> shared atomicMax (the bits of a
    // float >= 0 order like ints) over the tile's RBS x CBS blocks
    float amax[CBS];
    #pragma unroll
    for (int cb = 0; cb < CBS; ++cb) amax[cb] = 0.f;
    #pragma unroll
    for (int i = 0; i < NACC; ++i) amax[(i / 4) * 8 / QB] = fmaxf(amax[(i / 4) * 8 / QB], fabsf(acc[i]));
    #pragma unroll
    for (int cb = 0; cb < CBS; ++cb) {
        #pragma unroll
        for (int off = 16; off > 0; off /= 2) amax[cb] = fmaxf(amax[cb], __shfl_xor_sync(0xffffffffu, amax[cb], off));
        if (lane == 0) atomicMax(&bmax[rb * CBS + cb], __float_as_int(amax[cb]));
    }
    if (ct < RBS * CBS) bmax_next[ct] = 0;
    if (ct == 0) bulk_wait_read();                    // the last tile's store has read the C tile
    consumer_sync();
    if (ct < RBS * CBS) {
        const int bi = m0 / QB + ct / CBS, bj = n0 / QB + ct % CBS;
        if (bi < Mp / QB && bj < Np / QB) q_s[(long long)bi * (Np / QB) + bj] = __int_as_float(bmax[ct]) / 127.f;
    }
    float inv[CBS];                                   // 127 / absmax, 0 for a zero block
    #pragma unroll
    for (int cb = 0; cb < CBS; ++cb) {
        const float m = __int_as_float(bmax[rb * CBS + cb]);
        inv[cb] = m > 0.f ? 127.f / m : 0.f;
    }
    // the tile's int8 -> the C tile in shared memory -> one TMA store (full 128-byte rows; 2-byte
    // stores straight from the registers cost more than the rest of the epilogue)
    if (stochastic) stage_int8_rows<true>(acc, inv, ctile, r, c0, row, col0, seed);
    else stage_int8_rows<false>(acc, inv, ctile, r, c0, row, col0, seed);
    fence_proxy_async();                              // st.shared -> visible to the TMA's reads
    consumer_sync();
    if (ct == 0) {
        tma_store(q_map, n0, m0, ctile);
        bulk_commit();
    }
}

// The kernel body. The grid is at most one CTA per SM (it holds 231 KB of shared memory at
// QB = 32 and all 64K registers); CTA b computes tiles b, b + gridDim.x, ... (tile_origin's
// order), the producer running ahead into the next tile while the consumers finish this one.
// With split-K (splits > 1, the float kernel's ACCUMULATE epilogue) it walks units (unit_at)
// instead, turns: one counter per tile, zeroed by the launcher.
template <int OUT_INT8>
__device__ __forceinline__ void gemm_sm90(const TensorMap* a_map, const TensorMap* b_map,
        const TensorMap* q_map, const float* As, const float* Bs, int Mp, int Np, int Kp, int M,
        int N, void* out, int out_bf16, const float* add, float* q_s, int stochastic, unsigned seed,
        const Plane& pl, const TensorMap* po_map, const TensorMap* pq_map,
        const TensorMap* out_map, const TensorMap* add_map, int out_mode, int splits, int* turns) {
    extern __shared__ unsigned char smem_raw[];
    const unsigned base = (smem_u32(smem_raw) + 1023) & ~1023u;   // swizzle atoms are 1024-aligned
    int* bmax = (int*)__cvta_shared_to_generic(base + SMEM_BMAX);
    if (threadIdx.x < STAGES) {
        mbar_init(base + SMEM_BAR + 8 * threadIdx.x, 128);                  // full: producer threads
        mbar_init(base + SMEM_BAR + 8 * STAGES + 8 * threadIdx.x, 256);     // empty: consumer threads
        if (threadIdx.x == 0) mbar_init(base + SMEM_CBAR, 1);               // C: load_residual
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    if (threadIdx.x < 3 * RBS * CBS) bmax[threadIdx.x] = 0;
    __syncthreads();
    if (threadIdx.x < 128) {
        setmaxnreg_dec<40>();
        if (threadIdx.x == 0) tma_prefetch(a_map), tma_prefetch(b_map);
        produce(base, a_map, b_map, po_map, pq_map, As, Bs, Mp, Np, Kp, pl, splits);
        return;
    }
    setmaxnreg_inc<232>();
    // the consumer warp (0-7) from lane 0: the compiler then sees wg, warp and rb warp-uniform
    const int ct = threadIdx.x - 128, cw = __shfl_sync(0xffffffffu, ct / 32, 0);
    const int wg = cw / 4, warp = cw % 4;
    const int rb = (64 * wg + 16 * warp) / QB;        // the thread's rows lie in one row block
    const Consumer cs = make_consumer(base, wg, rb);
    const int units = tile_count(Mp, Np) * splits;
    Stage st{0, 0};
    // A tile's plane stages come before its plain ones (produce), in its split 0; their count is
    // read one unit ahead, across the epilogue.
    int np = plane_stages_of(pl, blockIdx.x, splits, Mp, Np);
    for (int u = blockIdx.x, n = 0; u < units; u += gridDim.x, ++n) {
        int m0, n0;
        plane_tile_origin(pl, u / splits, Mp, Np, m0, n0);
        if (!OUT_INT8 && out_mode == RESIDUAL && ct == 0) load_residual(add_map, base, m0, n0, N);
        float acc[NACC];
        #pragma unroll
        for (int i = 0; i < NACC; ++i) acc[i] = 0.f;
        if (np && pl.halves == 2) st = consume_plane<(KBS > 1 ? KBS / 2 : 1)>(acc, cs, st, np, wg * KBS / 2);
        else if (np) st = consume_plane<KBS>(acc, cs, st, np, 0);
        st = consume(acc, cs, st, unit_at(u, splits, Kp).kn);
        // the unit's tile and split, made anew from an opaque copy of u: kept from before the K
        // loop they would take registers that its accumulators need (ptxas spilled)
        int v = u;
        asm volatile("mov.u32 %0, %0;\n" : "+r"(v));
        const Unit w = unit_at(v, splits, Kp);
        np = plane_stages_of(pl, v + gridDim.x, splits, Mp, Np);
        store_tile<OUT_INT8>(acc, ct, rb, m0, n0, n, Mp, Np, M, N, out, out_bf16, add, q_s,
                             stochastic, seed, bmax + n % 3 * RBS * CBS, bmax + (n + 1) % 3 * RBS * CBS,
                             base, q_map, out_map, out_mode, splits > 1 ? turns + w.tile : nullptr,
                             w.split);
    }
    if (ct == 0) bulk_wait_read();                    // the C tile must outlive the last store's reads
}

// p_*: the second plane (struct Plane; p_count = nullptr for none) and the tensor maps of its
// stages' copies (produce_plane_stage): p_omap, the other operand's K-blocks; p_qmap, q2's blocks
extern "C" __global__ void __launch_bounds__(384, 1)
gemm_sm90_float_kernel(const __grid_constant__ TensorMap a_map, const __grid_constant__ TensorMap b_map,
                       const float* __restrict__ As, const float* __restrict__ Bs, void* out,
                       int M, int N, int Mp, int Np, int Kp, int out_bf16, const float* add,
                       const __grid_constant__ TensorMap out_map,
                       const __grid_constant__ TensorMap add_map, int out_mode, int splits,
                       int* turns, const int* p_list, const int* p_count,
                       const int* p_slot, const float* p_s2, const int* p_order,
                       int p_stride, int p_halves,
                       int p_on_b, const __grid_constant__ TensorMap p_omap,
                       const __grid_constant__ TensorMap p_qmap) {
    gemm_sm90<0>(&a_map, &b_map, nullptr, As, Bs, Mp, Np, Kp, M, N, out, out_bf16, add, nullptr, 0, 0u,
                 Plane{p_list, p_count, p_slot, p_s2, p_order, p_stride, p_halves, p_on_b}, &p_omap, &p_qmap,
                 &out_map, &add_map, out_mode, splits, turns);
}

extern "C" __global__ void __launch_bounds__(384, 1)
gemm_sm90_int8_kernel(const __grid_constant__ TensorMap a_map, const __grid_constant__ TensorMap b_map,
                      const __grid_constant__ TensorMap q_map, const float* __restrict__ As,
                      const float* __restrict__ Bs, float* q_s, int Mp, int Np, int Kp,
                      int stochastic, unsigned seed, const unsigned* __restrict__ salt,
                      const int* p_list, const int* p_count,
                      const int* p_slot, const float* p_s2, const int* p_order,
                      int p_stride, int p_halves,
                      int p_on_b, const __grid_constant__ TensorMap p_omap,
                      const __grid_constant__ TensorMap p_qmap) {
    if (stochastic) seed ^= *salt;                 // (quantize_cuda.sr_salt: CUDA graph replays)
    gemm_sm90<1>(&a_map, &b_map, &q_map, As, Bs, Mp, Np, Kp, Mp, Np, nullptr, 0, nullptr, q_s,
                 stochastic, seed,
                 Plane{p_list, p_count, p_slot, p_s2, p_order, p_stride, p_halves, p_on_b}, &p_omap, &p_qmap,
                 nullptr, nullptr, 0, 1, nullptr);
}
"""

# The producer's and the consumers' device code in declaration order (C++ wants each function
# before its first use): the ring's pieces, the plane's, and the K-block steps
SM90_MAINLOOP_SRC = (TILE_ORIGIN_SRC + PLANE_SRC + SM90_PLAIN_STAGES_SRC + PLANE_STAGES_SRC
                     + SM90_PRODUCE_SRC + SM90_KBLOCK_SRC + CONSUME_PLANE_SRC)
SM90_SRC = (SM90_PTX_SRC + _wgmma_wrapper(TILE) + GEMM_STORE_SRC + SM90_MAINLOOP_SRC
            + SM90_CONSUME_SRC + SM90_EPILOGUE_SRC)
SM90_MAGIC_SRC = (SM90_PTX_SRC + _wgmma_wrapper(TILE) + GEMM_STORE_SRC + SM90_MAINLOOP_SRC
                  + SM90_CONSUME_MAGIC_SRC + SM90_EPILOGUE_SRC)


@lru_cache(maxsize=None)
def _kernel(name, qblock, device_index, source, defines=()):
    kernel = get_kernel(source, name, (f"QB={qblock}",) + defines, torch.device("cuda", device_index))
    kernel.max_dynamic_shared_size_bytes = _smem_bytes(qblock)
    return kernel


def _source(qblock, Kp, exact, source):
    """(CUDA source, extra defines) for one launch. The magic-number promotion (SM90_MAGIC_SRC),
    with the largest K-group that splits Kp without zero padding (each D buffer sums at most 256
    of K: 16 or 8 K-blocks at QB = 32, 8 or 4 at 64, 4 at 128); otherwise, or when exact=True,
    the exact one. At QB = 128 magic with groups of 4 takes 0.98x the exact kernel's time (median
    of 36 shapes, 0.91-1.03x; groups of 2 take 1.13x: notes/kgroup_ab.log). `source` (the
    ping-pong variant's) overrides."""
    if source is not None:
        return source, ()
    if not exact:
        for group in {32: (16, 8), 64: (8, 4), 128: (4,)}[qblock]:
            if Kp % (group * qblock) == 0:
                return SM90_MAGIC_SRC, (f"KGROUP={group}",)
    return SM90_SRC, ()


def _check(a, b):
    """What the kernel itself assumes (gemm_cuda has checked dtypes, devices and shapes)."""
    assert a.qblock in (32, 64, 128) and a.qblock == b.qblock, f"unsupported QB {a.qblock}"
    assert a.q.shape[1] == b.q.shape[1] and a.q.shape[1] % a.qblock == 0, "padded K differs"
    assert a.q.is_contiguous() and b.q.is_contiguous(), "operands must be row-major"
    assert a.q.data_ptr() % 16 == 0 and b.q.data_ptr() % 16 == 0, "TMA needs 16 B alignment"


@lru_cache(maxsize=None)
def _sm_count(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _arguments(a, b, args, out_map=()):
    """A kernel's argument list: the operands' tensor maps, out_map (the int8 kernel's output
    map), args, then the fallback plane's."""
    (Mp, Kp), Np = a.q.shape, b.q.shape[0]
    maps = (tile_map(a.q.data_ptr(), Mp, Kp), tile_map(b.q.data_ptr(), Np, Kp))
    return maps + out_map + args + plane_args(a, b)


def _launch(name, a, b, args, exact, source, persistent, out_map=(), splits=1):
    """Launch kernel `name` over the tiles of C = A @ B^T (its arguments: _arguments), each in
    `splits` K splits (split_k).
    persistent: one CTA per SM walks the 128 x 128 tiles (else one CTA per tile, the kernel
    before persistence, kept for A/B timing)."""
    _check(a, b)
    (Mp, Kp), Np = a.q.shape, b.q.shape[0]
    units = cdiv(Mp, TILE) * cdiv(Np, TILE) * splits
    grid = (min(units, _sm_count(a.q.device.index)) if persistent else units,)
    code, defines = _source(a.qblock, Kp, exact, source)
    kernel = _kernel(name, a.qblock, a.q.device.index, code, defines)
    launch(kernel, grid, (THREADS,), _arguments(a, b, args, out_map),
           shared_mem=_smem_bytes(a.qblock))


OUT_REGS, OUT_STORE, OUT_ACCUMULATE, OUT_RESIDUAL = range(4)     # the kernel's enum OutMode


def out_mode(c, add, N, tma_out=True):
    """The float kernel's OutMode for C (M x N, c) += add: through the C tile and TMA where C's
    rows (and add's) are 16-byte aligned, STORE / ACCUMULATE (add is c) / RESIDUAL; else REGS,
    which tma_out=False also forces (the epilogue before TMA stores, kept for A/B timing)."""
    aligned = c.data_ptr() % 16 == 0 and N * c.element_size() % 16 == 0
    if not tma_out or not aligned or (add is not None and (c.dtype != torch.float32
                                                           or add.data_ptr() % 16)):
        return OUT_REGS
    if add is None:
        return OUT_STORE
    return OUT_ACCUMULATE if add.data_ptr() == c.data_ptr() else OUT_RESIDUAL


def float_args(a, b, c, M, N, add=None, tma_out=True, splits=1, mode=None):
    """The float kernel's own arguments (args of _arguments); add: None or an fp32 tensor of
    M * N elements added to C (c itself to accumulate). C's tensor map has boxes of 128 rows x
    128 bytes (32 fp32 or 64 bf16 columns), as the epilogue's C tile holds them. mode: out_mode's,
    if the caller has it. splits > 1 (split_k; the ACCUMULATE mode only) comes with a turn
    counter per tile, zeroed for this launch (a fresh buffer, not a cached one: under CUDA graph
    capture it belongs to the graph, and the replay zeroes it again)."""
    (Mp, Kp), Np = a.q.shape, b.q.shape[0]
    mode = out_mode(c, add, N, tma_out) if mode is None else mode
    assert splits == 1 or mode == OUT_ACCUMULATE, "split-K adds into C"
    elem = c.element_size()
    out_map = tile_map(c.data_ptr(), M, N * elem, TILE, 128, elem) if mode != OUT_REGS else NO_MAP
    add_map = tile_map(add.data_ptr(), M, N * 4, TILE, 128, 4) if mode == OUT_RESIDUAL else NO_MAP
    turns = (torch.zeros(cdiv(Mp, TILE) * cdiv(Np, TILE), dtype=torch.int32, device=c.device)
             if splits > 1 else np.uint64(0))
    return (a.s, b.s, c, np.int32(M), np.int32(N), np.int32(Mp), np.int32(Np),
            np.int32(Kp), np.int32(c.dtype == torch.bfloat16), np.uint64(0) if add is None else add,
            out_map, add_map, np.int32(mode), np.int32(splits), turns)


def float_kernel_args(a, b, c, M, N, add=None, tma_out=True):
    """The float kernel's whole argument list for C = A @ B^T (+ add) (for notes/ scripts that
    launch their own builds of the kernel)."""
    return _arguments(a, b, float_args(a, b, c, M, N, add, tma_out))


SPLIT_MAX = 8               # K splits of a tile at most
SPLIT_MIN_STAGES = 8        # plain stages of a split at least (1024 of K)
UNIT_COST = 4               # a unit's own cost (ring fill, epilogue, its turn), in plain stages


def split_k(tiles, stages, group, sms):
    """K splits per tile for a float output of `tiles` tiles, each `stages` plain stages long
    (whole consumer groups of `group` stages): the count with the least waves x (the longest
    split's stages + UNIT_COST), the persistent grid walking tiles x splits units on `sms` SMs. An output
    of few tiles leaves most SMs idle without it (a GPT-2 small weight gradient, 768 x 768: 36
    tiles on 132 SMs), and one of a few more than the SMs runs a second, nearly empty, wave."""
    groups = stages // group
    best, cost = 1, cdiv(tiles, sms) * (stages + UNIT_COST)
    for s in range(2, SPLIT_MAX + 1):
        longest = cdiv(groups, s) * group                     # the longest split's stages
        if groups < s or stages // s < SPLIT_MIN_STAGES:
            break
        c = cdiv(tiles * s, sms) * (longest + UNIT_COST)
        if c < cost:
            best, cost = s, c
    return best


def _splits(a, b, exact, source):
    """split_k for the float kernel's C = A @ B^T: its tiles and plain stages."""
    (Mp, Kp), Np = a.q.shape, b.q.shape[0]
    kbs = TILE // a.qblock                           # K-blocks per stage
    defines = dict(d.split("=") for d in _source(a.qblock, Kp, exact, source)[1])
    group = int(defines.get("KGROUP", max(kbs, 2))) // kbs          # KT_ROUND
    stages = cdiv(cdiv(Kp, TILE), group) * group
    return split_k(cdiv(Mp, TILE) * cdiv(Np, TILE), stages, group, _sm_count(a.q.device.index))


def launch_float(a, b, c, M, N, add=None, exact=False, source=None, persistent=True,
                 tma_out=True, splits=None):
    """C (M x N fp32 / bf16) = A @ B^T (+ add, fp32: c itself to accumulate, or a residual);
    operands already checked by gemm_cuda.
    exact: the exact promotion even where the magic-number one applies (see _source);
    persistent=False: one CTA per tile (the kernel before persistence, kept for A/B timing);
    tma_out=False: C stored from the registers (out_mode);
    splits: K splits per tile, None: split_k's choice where C accumulates through TMA (the
    weight gradients into .grad), else 1. Only there: C += A @ B^T then adds the splits' sums
    one by one, a rounding of its own, where a fresh C (or the residual or int8 epilogue) keeps
    the one sum of the unsplit kernel, bit for bit the same in every epilogue."""
    mode = out_mode(c, add, N, tma_out)
    if splits is None:
        fits = persistent and mode == OUT_ACCUMULATE
        splits = _splits(a, b, exact, source) if fits else 1
    _launch("gemm_sm90_float_kernel", a, b, float_args(a, b, c, M, N, add, tma_out, splits, mode),
            exact, source, persistent, splits=splits)


def launch_int8(a, b, q, s, stochastic, seed, exact=False, source=None, persistent=True):
    """q (Mp x Np int8), s (Mp/QB x Np/QB fp32) = quantize(A @ B^T), RTN or stochastic."""
    (Mp, Kp), Np = a.q.shape, b.q.shape[0]
    _launch("gemm_sm90_int8_kernel", a, b,
            (a.s, b.s, s, np.int32(Mp), np.int32(Np), np.int32(Kp),
             np.int32(stochastic), np.uint32(seed), sr_salt(a.q.device)),
            exact, source, persistent, out_map=(tile_map(q.data_ptr(), Mp, Np),))
