"""
Block-scaled INT8 GEMM for Hopper (sm_90a): wgmma from shared memory, warp-specialised.

Same math and contract as int8_gemm.py (read its docstring first): C = A @ B^T with a_q (Mp, Kp)
and b_q (Np, Kp) int8 row-major (K-contiguous: the only layout wgmma takes for 8-bit types),
a_s (Mp/QB, Kp/QB) and b_s (Np/QB, Kp/QB) fp32, QB = 32, 64 or 128. For each K-block the int32
partial sum P is exact; it is "promoted" into an fp32 accumulator as acc += float(P) * s_A * s_B
(DeepGEMM's FP8 promotion, here every QB of K). Epilogues are int8_gemm_mma.py's per-pair store
functions (GEMM_STORE_SRC): fp32 / bf16 / += fp32, int8 RTN, int8 stochastic rounding.

One CTA = 3 warpgroups (384 threads) and one 128 x 128 tile of C:

    warpgroup 0, producer (setmaxnreg 40):   cp.async 16 B chunks of A, B (and 4 B scales) into a
                                             STAGES-deep ring; cp.async.mbarrier.arrive on full[s]
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
cp.async (src-size 0), their scales load as 0, and the stores are masked; so any Mp, Np, Kp
multiple of QB works.

The fallback operand's second plane (fallback.py) rides the same kernel, read in its compact form
(slot -> q2 block): device-built lists (plane_lists, no host sync) of the K-blocks holding a
flagged block, per 128-row tile, or per 64-row consumer half of a tile when the plane is on A
and few blocks are flagged (_halves), each entry with its row blocks' slots and scales
gathered. After the plain stages the producer loads the listed K-blocks (a half's into its own
K-block columns of a stage), taking each flagged QB x QB block straight from q2[slot] into the
swizzled tile (zeros where there is none) and the other operand's same K-block as usual; the
consumers run them after the plain K loop (consume_plane). So the plane costs in proportion to
the (tile or half, K-block) pairs it touches, and nothing is expanded to a dense plane. Overhead
against the plain exact GEMM (H100, uniform flags, QB = 32, notes/gemm_sm90.md): +9-11% at 1%
flagged, +22-29% at 5%.

Two promotions, one K loop each (consume()); _source() picks one per launch:
  exact (SM90_CONSUME_SRC)        acc = fma(float(D), s_A s_B, acc): I2FP + FFMA per element per
                                  K-block, bit for bit the reference's rounding order but for FMA
  magic (SM90_CONSUME_MAGIC_SRC)  D is seeded with the bits of 1.5 * 2^23, so that it *is* a float
                                  and acc = fma(coef, D, acc) needs no conversion (its comment
                                  derives it); the default at QB = 32 and 64 when K splits into
                                  groups of 256 or 512. Error: within about one unit of each
                                  K-block's s_A s_B of the exact sums (~4e-5 relative on random
                                  data), 100x below what int8 rounding of the operands costs.
The promotion, not the tensor cores, bounds the kernel: at QB = 32 the wgmma work alone runs at
~1.3 POPS, but the promotion does not overlap it (notes/gemm_sm90.md), so every instruction per
element per K-block counts. SASS per element per K-block (consumer loop, QB = 32): exact 2.62
(I2FP 1, FFMA 1, other 0.62), magic 1.90 with K-groups of 16 (FFMA 1.15, seeding MOV 0.13,
other 0.62).

Measured on an H100 (results/bench_gpu.md), against cuBLAS bf16 over the 15 GEMM rows: QB = 32
magic 0.37-0.78x, exact 0.34-0.63x; QB = 64 magic 0.43-0.97x; QB = 128 0.47-1.07x. Limits: the
promotion's issue work at QB = 32 and 64, operand delivery (cp.async, 128 x 128 tiles) at 128.
"""
from functools import lru_cache

import numpy as np
import torch

from int8_gemm import cdiv
from int8_gemm_mma import GEMM_STORE_SRC
from quantize import get_kernel, launch

TILE = 128                                   # BM = BN of the kernel
STAGES = 5                                   # 5 x (16 + 16 KB) ring
THREADS = 384                                # producer + 2 consumer warpgroups
SPLIT_HALVES = True                          # allow one K-block list per consumer half (_halves)


def _wgmma_wrapper(n):
    """C++ source of wgmma_m64n{n}k32_s8: D (64 x n s32, n/2 registers per thread) = A (64 x 32
    s8, smem descriptor) * B (n x 32 s8, smem descriptor) [+ D]. The operand list is written out
    by this function because inline asm takes no arrays."""
    regs = n // 2
    d = ", ".join(f"%{i}" for i in range(regs))
    outs = ", ".join(f'"+r"(d[{i}])' for i in range(regs))
    return (f"__device__ __forceinline__ void wgmma_m64n{n}k32_s8(int (&d)[{regs}], "
            f"unsigned long long desc_a, unsigned long long desc_b, int accumulate) {{\n"
            f'    asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{regs + 2}, 0;\\n"\n'
            f'                 "wgmma.mma_async.sync.aligned.m64n{n}k32.s32.s8.s8 "\n'
            f'                 "{{{d}}}, %{regs}, %{regs + 1}, p;\\n}}\\n"\n'
            f"                 : {outs}\n"
            f'                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));\n}}\n')


SM90_PTX_SRC = r"""
#ifndef QB
#define QB 32
#endif
constexpr int BM = 128, BN = 128;            // CTA tile of C; each consumer warpgroup 64 x 128
constexpr int BK = 128;                      // bytes of K per stage: one 128-byte swizzle row
constexpr int STAGES = 5;
constexpr int KBS = BK / QB;                 // K-blocks per stage: 4, 2, 1
constexpr int KSTEPS = QB / 32;              // wgmma k32 steps per K-block: 1, 2, 4
constexpr int RBS = BM / QB, CBS = BN / QB;  // scale blocks along a tile side: 4, 2, 1
constexpr int TILE_BYTES = BM * BK;          // 16 KB, 1024-aligned (the swizzle atom)
constexpr int SCALE_FLOATS = (RBS + CBS) * KBS;        // per stage: s_A [KBS][RBS], s_B [KBS][CBS]
constexpr int NACC = BN / 2;                 // accumulators per consumer thread: 64 x 128 / 128
#ifndef KGROUP
#define KGROUP (KBS > 2 ? KBS : 2)
#endif
constexpr int G = KGROUP;                    // K-blocks per consumer loop iteration: 4, 2, 2
constexpr int KT_ROUND = G / KBS;            // stages per iteration: K rounds up to a multiple
static_assert(QB == 32 || QB == 64 || QB == 128, "QB must be 32, 64 or 128");
static_assert(BM == 128 && BN == 128 && BK == 128, "the copy mapping below assumes 128 x 128 B");
// shared memory: [A ring][B ring][scale ring][full barriers][empty barriers][block absmax]
constexpr int SMEM_B = STAGES * TILE_BYTES, SMEM_S = 2 * STAGES * TILE_BYTES;
constexpr int SMEM_BAR = SMEM_S + STAGES * SCALE_FLOATS * 4, SMEM_BMAX = SMEM_BAR + 16 * STAGES;
constexpr int SMEM_BYTES = SMEM_BMAX + 4 * RBS * CBS + 1024;   // + 1024: base alignment slack
static_assert(SMEM_BYTES <= 227 * 1024, "the ring must fit in an H100's 227 KB of shared memory");

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
// cp.async global -> shared, BYTES = 16 (L2 only) or 4; src_bytes = 0 writes zeros.
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" :: "r"(dst), "l"(src), "r"(src_bytes));
}
// mbarrier: a 64-bit shared word counting arrivals; its phase flips when `count` have arrived.
__device__ __forceinline__ void mbar_init(unsigned bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(bar), "r"(count));
}
// arrives on bar once all of this thread's earlier cp.async have landed (count set at init)
__device__ __forceinline__ void cp_async_arrive(unsigned bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" :: "r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" :: "r"(bar) : "memory");
}
// wait until the phase of parity `parity` has completed
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
    unsigned done;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n" : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
}
// cp.async wrote through the generic proxy; wgmma reads through the async proxy
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory");
}
// keeps the compiler from moving reads of D across wgmma.wait_group (CUTLASS's fence_operand)
__device__ __forceinline__ void fence_operands(int (&d)[NACC]) {
    #pragma unroll
    for (int i = 0; i < NACC; ++i) asm volatile("" : "+r"(d[i]) :: "memory");
}
template <int REGS> __device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" :: "n"(REGS));
}
template <int REGS> __device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" :: "n"(REGS));
}
__device__ __forceinline__ void consumer_sync() {      // named barrier 1: the 256 consumer threads
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
}

// Shared-memory tile layout (what TMA's SWIZZLE_128B writes, done here by hand): row r of the
// tile (a row of A or B) is 128 bytes of K at offset 128 * r, and its 16-byte chunk c sits at
// chunk c ^ (r % 8). 8 rows x 128 B = 1024 B form one swizzle atom (tiles are 1024-aligned).
//
// wgmma matrix descriptor (64 bits) for a K-major operand in that layout:
//   bits  0-13  start address >> 4   (the k32 step inside the 128 B row just adds 32 bytes:
//                                     the hardware applies the XOR to the final address)
//   bits 16-29  leading byte offset >> 4: unused for swizzled K-major (K fits in one row); 1
//   bits 32-45  stride byte offset >> 4: from one 8-row group to the next = 1024 B -> 64
//   bits 49-51  base offset: 0 (atoms are 1024-aligned)
//   bits 62-63  swizzle mode: 1 = 128 B
__device__ __forceinline__ unsigned long long smem_desc(unsigned addr) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}
"""

SM90_MAINLOOP_SRC = r"""
// CTA -> tile of C, in groups of 8 tile-rows so that consecutive CTAs share A and B in L2.
__device__ __forceinline__ void tile_origin(int Mp, int Np, int& m0, int& n0) {
    const int tiles_m = (Mp + BM - 1) / BM, tiles_n = (Np + BN - 1) / BN, GROUP = 8;
    int pid = blockIdx.x, group = pid / (GROUP * tiles_n);
    int first = group * GROUP, size = min(tiles_m - first, GROUP);
    m0 = (first + (pid % (GROUP * tiles_n)) % size) * BM;
    n0 = ((pid % (GROUP * tiles_n)) / size) * BN;
}

// The fallback operand's second plane, in the compact form of fallback.py: q2 (n2, QB, QB) int8,
// each flagged block row-major, found through a slot grid (-1: a plain block). When `count` is
// set, the tile's K loop runs its plain stages and then the plane's: K-blocks from device-built
// lists of those holding a flagged block, with the plane in place of its operand against the same
// K-block of the other one. The producer reads each flagged block straight from q2 and
// zero-fills the rest (a plain block's plane is zero, and so is its scale), so they add exactly
// s2 * s_other * (q2 . q_other) for the flagged pairs.
//
// Which K-blocks: halves = 1, one list per 128-row tile of the plane operand (the K-blocks
// flagged anywhere in its rows), KBS to a stage, both consumer warpgroups taking all of them.
// halves = 2 (the plane on A, QB <= 64): one list per 64-row consumer half, which then runs only
// its own: a stage's K-block columns 0 .. KBS/2-1 hold half 0's next K-blocks (A rows 0-63),
// columns KBS/2 .. KBS-1 half 1's (A rows 64-127), and B holds each column's K-block. A K-block
// flagged in one half's rows costs that half alone, and the two halves run side by side.
// Each list entry comes with the slots of the list's RL = RBS / halves row blocks in that
// K-block and their scales (gathered on the host), so the producer's loads per stage do not
// wait on one another (a chain of dependent loads per stage made the producer the bottleneck).
struct Plane {
    const signed char* q2;       // (n2, QB, QB) int8, the flagged blocks
    const int* list;             // (lists, stride) int32: each list's K-blocks, flagged first
    const int* count;            // (lists,) int32, lists = tiles * halves; nullptr: no plane
    const int* slot;             // (lists, stride, RL) int32: q2 index of each row block, or -1
    const float* s2;             // (lists, stride, RL) fp32: its scale, or 0
    int stride, halves, on_b;    // on_b: the plane belongs to B (tile rows: n0) not A
};

// The tile of the plane operand that this CTA's rows (A) or columns (B) fall in
__device__ __forceinline__ int plane_tile(const Plane& pl, int m0, int n0) {
    return (pl.on_b ? n0 : m0) / BM;
}
// Stages of the plain K loop: Kp / BK rounded up to whole consumer groups (K past Kp is
// zero-filled: it adds nothing)
__device__ __forceinline__ int plain_stages(int Kp) {
    return ((Kp + BK - 1) / BK + KT_ROUND - 1) / KT_ROUND * KT_ROUND;
}
// Stages of the plane: KBS / halves K-blocks of each list per stage, for the longest list
__device__ __forceinline__ int plane_stages(const Plane& pl, int m0, int n0) {
    if (!pl.count) return 0;
    const int first = plane_tile(pl, m0, n0) * pl.halves, per = KBS / pl.halves;
    int n = 0;
    for (int h = 0; h < pl.halves; ++h) n = max(n, (pl.count[first + h] + per - 1) / per);
    return n;
}
// Column j of the plane's stages: its list (the tile's, or consumer half h's), the index of its
// entry in stage 0 (stage e: e * per further), and n: stage e has an entry while e * per < n
struct PlaneColumn {
    int h, first, n;
};
__device__ __forceinline__ PlaneColumn plane_column(const Plane& pl, int m0, int n0, int j) {
    const int per = KBS / pl.halves, list = plane_tile(pl, m0, n0) * pl.halves + j / per;
    return PlaneColumn{j / per, list * pl.stride + j % per, pl.count[list] - j % per};
}

// An opaque copy of x, made anew where it is used: keeps the compiler from hoisting the per-row
// offsets out of the stage loop (8 rows x 2 operands of them do not fit the producer's 40
// registers: it spills).
__device__ __forceinline__ int opaque(int x) {
    asm volatile("" : "+r"(x));
    return x;
}

// The producer's share of one tile (A or B) per stage: thread t copies chunk c = t % 8 of rows
// r0 + 16 i (r0 = t / 8, i < 8; 8 threads read one row's 128 contiguous bytes). Chunk c holds
// bytes 16 c % QB .. + 15 of K-block kb (its column j = 16 c / QB of the stage). Rows past
// `rows` and kb = -1 are zero-filled.
__device__ __forceinline__ void copy_plain(unsigned tile, unsigned dst, const signed char* P,
                                           int row0, int rows, int Kp, int kb, int r0, int c) {
    const int left = kb >= 0 ? rows - row0 - r0 : 0, step = opaque(16 * Kp);
    const signed char* p = P + (long long)(row0 + r0) * Kp + kb * QB + 16 * c % QB;
    #pragma unroll
    for (int i = 0; i < 8; ++i) {
        const bool ok = 16 * i < left;
        cp_async16(tile + dst + 2048 * i, ok ? p : P, ok ? 16 : 0);
        p += step;
    }
}
// The plane operand's tile from the compact plane: thread t copies chunk c of rows 8 g .. 8 g + 7
// (g = t / 8), which lie in one row block, whose block q2[slot] holds row r at byte QB * (r % QB):
// so the 16 bytes land in shared memory exactly where a dense plane's would (row r's chunk c at
// chunk c ^ (r % 8) = c ^ i). slot = -1: zeros.
__device__ __forceinline__ void copy_plane(unsigned tile, const signed char* q2, int slot, int g,
                                           int c) {
    const signed char* p = q2 + (long long)max(slot, 0) * (QB * QB) + 8 * g % QB * QB + 16 * c % QB;
    #pragma unroll
    for (int i = 0; i < 8; ++i)
        cp_async16(tile + (8 * g + i) * BK + ((c ^ i) << 4), p + i * QB, slot >= 0 ? 16 : 0);
}

// Thread t < SCALE_FLOATS loads one scale of the stage: s_A[m0/QB + rb, kb_j] -> [j][rb], then
// s_B likewise; its block and K-block column j:
__device__ __forceinline__ void scale_role(int t, int m0, int n0, bool& is_a, int& blk, int& j) {
    is_a = t < RBS * KBS;
    const int u = is_a ? t : t - RBS * KBS, nb = is_a ? RBS : CBS;
    blk = (is_a ? m0 : n0) / QB + u % nb;
    j = u / nb;
}

// Producer warpgroup: per stage, the A and B tiles (copy_plain / copy_plane) and, thread
// t < SCALE_FLOATS, one scale; then one arrival on the stage's full barrier per thread. Two
// loops, the plain stages and then the plane's, so that neither carries the other's registers
// (the producer has 40).
__device__ void produce(unsigned base, const signed char* A, const float* As, const signed char* B,
                        const float* Bs, int Mp, int Np, int Kp, int m0, int n0, const Plane& pl) {
    const int t = threadIdx.x, c = t % 8, r0 = t / 8, Kb = Kp / QB;
    const unsigned dst = r0 * BK + ((c ^ (r0 % 8)) << 4);     // + 2048 i: (r0 + 16 i) % 8 == r0 % 8
    bool is_a;
    int blk, j;
    scale_role(t, m0, n0, is_a, blk, j);
    const unsigned s_dst = base + SMEM_S + 4 * t;
    const int KT0 = plain_stages(Kp), KT = KT0 + plane_stages(pl, m0, n0);
    int kt = 0;
    for (; kt < KT0; ++kt) {
        const int slot = kt % STAGES, kb = kt * KBS + 16 * c / QB;
        if (kt >= STAGES) mbar_wait(base + SMEM_BAR + 8 * STAGES + 8 * slot, (kt / STAGES + 1) & 1);
        copy_plain(base + slot * TILE_BYTES, dst, A, m0, Mp, Kp, kb < Kb ? kb : -1, r0, c);
        copy_plain(base + SMEM_B + slot * TILE_BYTES, dst, B, n0, Np, Kp, kb < Kb ? kb : -1, r0, c);
        if (t < SCALE_FLOATS) {
            const int kbj = kt * KBS + j;
            const bool ok = kbj < Kb && blk < (is_a ? Mp : Np) / QB;
            const float* src = (is_a ? As : Bs) + (ok ? (long long)blk * Kb + kbj : 0);
            cp_async4(s_dst + 4 * slot * SCALE_FLOATS, src, ok ? 4 : 0);
        }
        cp_async_arrive(base + SMEM_BAR + 8 * slot);
    }
    if (KT == KT0) return;
    // The plane's stages. My chunk's column has one list (col); my plane rows 8 g .. 8 g + 7 one
    // row block in it (rb; outside it when halves = 2 and the rows are the other half's: not
    // copied, that half never reads this column). The list entries (K-block, slot) of each stage
    // are loaded one stage ahead, so the copies never wait for them.
    const int per = KBS / pl.halves, rl = RBS / pl.halves, g = t / 8;
    const PlaneColumn col = plane_column(pl, m0, n0, 16 * c / QB);
    const int rb = 8 * g / QB - col.h * rl;
    const bool has_rows = rb >= 0 && rb < rl;
    int kb_next = -1, slot_next = -1;
    auto fetch = [&](int e) {                            // the entries of the plane's stage e
        const int i = e * per;
        kb_next = i < col.n ? pl.list[col.first + i] : -1;
        slot_next = i < col.n && has_rows ? pl.slot[(long long)(col.first + i) * rl + rb] : -1;
    };
    fetch(0);
    for (int e = 0; kt < KT; ++kt, ++e) {
        const int slot = kt % STAGES, kb = kb_next, s = slot_next;
        fetch(e + 1);
        if (kt >= STAGES) mbar_wait(base + SMEM_BAR + 8 * STAGES + 8 * slot, (kt / STAGES + 1) & 1);
        const unsigned sA = base + slot * TILE_BYTES, sB = base + SMEM_B + slot * TILE_BYTES;
        if (pl.on_b) {
            copy_plain(sA, opaque(dst), A, m0, Mp, Kp, kb, r0, c);
            copy_plane(sB, pl.q2, s, g, c);
        } else {
            if (has_rows) copy_plane(sA, pl.q2, s, g, c);
            copy_plain(sB, opaque(dst), B, n0, Np, Kp, kb, r0, c);
        }
        if (t < SCALE_FLOATS) {          // (its role recomputed: fewer registers live in the loop)
            scale_role(opaque(t), m0, n0, is_a, blk, j);
            const PlaneColumn cj = plane_column(pl, m0, n0, j);
            const int i = e * per, rbj = blk - (pl.on_b ? n0 : m0) / QB - cj.h * rl;
            const float* src = nullptr;
            if (is_a != pl.on_b) {                      // the plane's: from the gathered scales
                if (i < cj.n && rbj >= 0 && rbj < rl)
                    src = pl.s2 + (long long)(cj.first + i) * rl + rbj;
            } else if (i < cj.n && blk < (is_a ? Mp : Np) / QB) {
                src = (is_a ? As : Bs) + (long long)blk * Kb + pl.list[cj.first + i];
            }
            cp_async4(s_dst + 4 * slot * SCALE_FLOATS, src ? src : As, src ? 4 : 0);
        }
        cp_async_arrive(base + SMEM_BAR + 8 * slot);
    }
}

// acc += float(P) * s_A * s_B for the finished K-block kb held in d.
__device__ __forceinline__ void promote(float (&acc)[NACC], int (&d)[NACC], unsigned base,
                                        int kb, int rb) {
    fence_operands(d);
    const float* s = (const float*)__cvta_shared_to_generic(
        base + SMEM_S + 4 * ((kb / KBS) % STAGES * SCALE_FLOATS));
    const int j = kb % KBS;
    const float sa = s[j * RBS + rb];
    float sab[CBS];
    #pragma unroll
    for (int cb = 0; cb < CBS; ++cb) sab[cb] = sa * s[RBS * KBS + j * CBS + cb];
    #pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = fmaf(__int2float_rn(d[i]), sab[(i / 4) * 8 / QB], acc[i]);
}

// Wait for the stage of K-block kb to land (at its first K-block)
__device__ __forceinline__ void wait_full(unsigned base, int kb) {
    const int kt = kb / KBS;
    if (kb % KBS == 0) {
        mbar_wait(base + SMEM_BAR + 8 * (kt % STAGES), (kt / STAGES) & 1);
        fence_proxy_async();
    }
}
// KSTEPS wgmma k32 steps of K-block kb into d, one commit group. The first step overwrites D
// (scale-d = 0) unless SEEDED: then every step adds to D (the magic-number promotion seeds D).
template <bool SEEDED = false>
__device__ __forceinline__ void issue_wgmma(int (&d)[NACC], unsigned base, int kb, int wg) {
    const int j = kb % KBS, slot = kb / KBS % STAGES;
    const unsigned sA = base + slot * TILE_BYTES + wg * 64 * BK, sB = base + SMEM_B + slot * TILE_BYTES;
    wgmma_fence();
    #pragma unroll
    for (int s = 0; s < KSTEPS; ++s)
        wgmma_m64n128k32_s8(d, smem_desc(sA + j * QB + 32 * s), smem_desc(sB + j * QB + 32 * s), SEEDED || s > 0);
    wgmma_commit();
}
// Issue K-block kb into d once its stage has landed
template <bool SEEDED = false>
__device__ __forceinline__ void issue_kblock(int (&d)[NACC], unsigned base, int kb, int wg) {
    wait_full(base, kb);
    issue_wgmma<SEEDED>(d, base, kb, wg);
}

// Promote the finished K-block kb from d; the last K-block of a stage frees its slot.
__device__ __forceinline__ void finish_kblock(float (&acc)[NACC], int (&d)[NACC], unsigned base,
                                              int kb, int rb) {
    promote(acc, d, base, kb, rb);
    if (kb % KBS == KBS - 1) mbar_arrive(base + SMEM_BAR + 8 * STAGES + 8 * ((kb / KBS) % STAGES));
}

// The plane's stages kt0 .. KT-1 (after consume()'s loop over the plain ones): per stage, this
// warpgroup's N K-block columns from j0 (all KBS, or its half's KBS / 2), D[0] / D[1]
// alternating, the exact promotion; the stage is freed after its last.
template <int N>
__device__ __forceinline__ void consume_plane(float (&acc)[NACC], unsigned base, int kt0, int KT,
                                              int j0, int wg, int rb) {
    int d[2][NACC];
    for (int kt = kt0; kt < KT; ++kt) {
        const int kb = kt * KBS + j0;
        wait_full(base, kt * KBS);
        issue_wgmma(d[0], base, kb, wg);
        #pragma unroll
        for (int g = 1; g < N; ++g) {
            issue_wgmma(d[g % 2], base, kb + g, wg);
            wgmma_wait<1>();
            promote(acc, d[(g - 1) % 2], base, kb + g - 1, rb);
        }
        wgmma_wait<0>();
        promote(acc, d[(N - 1) % 2], base, kb + N - 1, rb);
        mbar_arrive(base + SMEM_BAR + 8 * STAGES + 8 * (kt % STAGES));
    }
}

"""

# consume(): the consumer warpgroups' K loop; int8_gemm_sm90_pp.py swaps in its ping-pong one
SM90_CONSUME_SRC = r"""
// Consumer warpgroup wg (0 or 1): acc = its 64 x 128 slice of the tile. Register i of a thread
// (warp w of the warpgroup, lane l) is row 16 w + l/4 + 8 ((i/2) % 2), col 8 (i/4) + 2 (l%4) + i%2:
// per n8 column tile the mma.sync m16n8 layout, {0, 1} on row g and {2, 3} on row g + 8.
// K-blocks go in groups of G, ping-ponging between D[0] and D[1]; every group ends with no
// wgmma in flight (ptxas serialises all wgmma (C7514) if one is in flight across a loop edge).
__device__ __forceinline__ void consume(float (&acc)[NACC], unsigned base, int KT, int wg, int rb) {
    const int KB = KT * KBS;                  // KT: plain_stages(), a multiple of G / KBS
    int d[2][NACC];
    #pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = 0.f;
    for (int kb = 0; kb < KB; kb += G) {
        issue_kblock(d[0], base, kb, wg);
        #pragma unroll
        for (int g = 1; g < G; ++g) {
            issue_kblock(d[g % 2], base, kb + g, wg);     // g is unrolled: d[g % 2] is static
            wgmma_wait<1>();                      // K-block kb + g - 1 is done, kb + g runs
            finish_kblock(acc, d[(g - 1) % 2], base, kb + g - 1, rb);
        }
        wgmma_wait<0>();
        finish_kblock(acc, d[(G - 1) % 2], base, kb + G - 1, rb);
    }
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

__device__ __forceinline__ void wait_stage(unsigned base, int kb) {
    const int kt = kb / KBS;
    mbar_wait(base + SMEM_BAR + 8 * (kt % STAGES), (kt / STAGES) & 1);
}
// c[cb] = s_A[rb, kb] * s_B[cb, kb]: the scale products of K-block kb (its stage has landed)
__device__ __forceinline__ void scale_products(float (&c)[CBS], unsigned base, int kb, int rb) {
    const float* s = (const float*)__cvta_shared_to_generic(
        base + SMEM_S + 4 * ((kb / KBS) % STAGES * SCALE_FLOATS));
    const int j = kb % KBS;
    const float sa = s[j * RBS + rb];
    #pragma unroll
    for (int cb = 0; cb < CBS; ++cb) c[cb] = sa * s[RBS * KBS + j * CBS + cb];
}
__device__ __forceinline__ void sub_bias(float (&acc)[NACC], const float (&c)[CBS]) {
    #pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = fmaf(-MAGIC, c[(i / 4) * 8 / QB], acc[i]);
}
// acc += (c_kb - c_{kb+2}) * F_kb. c holds c_kb on entry and c_{kb+2} on exit (the next
// K-block of this buffer, read ahead from its stage); `last`: no next K-block in this group.
__device__ __forceinline__ void promote_magic(float (&acc)[NACC], int (&d)[NACC], float (&c)[CBS],
                                              unsigned base, int kb, int rb, bool last) {
    fence_operands(d);
    float coef[CBS];
    if (last) {
        #pragma unroll
        for (int cb = 0; cb < CBS; ++cb) coef[cb] = c[cb];
    } else {
        if ((kb + 2) % KBS < 2) wait_stage(base, kb + 2);      // kb + 2 starts the next stage
        float cn[CBS];
        scale_products(cn, base, kb + 2, rb);
        #pragma unroll
        for (int cb = 0; cb < CBS; ++cb) { coef[cb] = c[cb] - cn[cb]; c[cb] = cn[cb]; }
    }
    #pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = fmaf(coef[(i / 4) * 8 / QB], __int_as_float(d[i]), acc[i]);
    if (kb % KBS == KBS - 1) mbar_arrive(base + SMEM_BAR + 8 * STAGES + 8 * ((kb / KBS) % STAGES));
}

// Consumer warpgroup wg: as consume() in SM90_CONSUME_SRC (same register layout, groups of G
// K-blocks alternating between D[0] and D[1], no wgmma in flight across the loop edge), with the
// magic-number promotion: buffer b takes K-blocks kb + b, kb + b + 2, ... of the group.
__device__ __forceinline__ void consume(float (&acc)[NACC], unsigned base, int KT, int wg, int rb) {
    const int KB = KT * KBS;                  // KT: plain_stages(), a multiple of G / KBS
    int d[2][NACC];
    #pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = 0.f;
    for (int kb = 0; kb < KB; kb += G) {
        float c[2][CBS], c1_first[CBS];      // each buffer's next K-block's scale products
        #pragma unroll
        for (int i = 0; i < NACC; ++i) d[0][i] = d[1][i] = MAGIC_BITS;
        fence_operands(d[0]);                 // seed both buffers here, before any wgmma is in
        fence_operands(d[1]);                 // flight (else ptxas waits on one to seed the other)
        issue_kblock<true>(d[0], base, kb, wg);
        scale_products(c[0], base, kb, rb);
        sub_bias(acc, c[0]);                  // buffer 0's bias, before any of its terms
        #pragma unroll
        for (int g = 1; g < G; ++g) {
            issue_kblock<true>(d[g % 2], base, kb + g, wg);
            if (g == 1) {
                scale_products(c[1], base, kb + 1, rb);
                #pragma unroll
                for (int cb = 0; cb < CBS; ++cb) c1_first[cb] = c[1][cb];
            }
            wgmma_wait<1>();                  // K-block kb + g - 1 is done, kb + g runs
            promote_magic(acc, d[(g - 1) % 2], c[(g - 1) % 2], base, kb + g - 1, rb, g + 1 >= G);
            if (g == G - 1) sub_bias(acc, c1_first);   // buffer 1's bias, before its last term
        }
        wgmma_wait<0>();
        promote_magic(acc, d[(G - 1) % 2], c[(G - 1) % 2], base, kb + G - 1, rb, true);
    }
}

"""

SM90_EPILOGUE_SRC = r"""
template <int OUT_INT8>
__device__ __forceinline__ void gemm_sm90(const signed char* A, const float* As, const signed char* B,
        const float* Bs, int Mp, int Np, int Kp, int M, int N, void* out, int out_bf16, int accumulate,
        float* q_s, int stochastic, unsigned seed, const Plane& pl) {
    extern __shared__ unsigned char smem_raw[];
    const unsigned base = (smem_u32(smem_raw) + 1023) & ~1023u;   // swizzle atoms are 1024-aligned
    int* bmax = (int*)__cvta_shared_to_generic(base + SMEM_BMAX);
    int m0, n0;
    tile_origin(Mp, Np, m0, n0);
    if (threadIdx.x < STAGES) {
        mbar_init(base + SMEM_BAR + 8 * threadIdx.x, 128);                  // full: producer threads
        mbar_init(base + SMEM_BAR + 8 * STAGES + 8 * threadIdx.x, 256);     // empty: consumer threads
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    if (threadIdx.x < RBS * CBS) bmax[threadIdx.x] = 0;
    __syncthreads();
    if (threadIdx.x < 128) {
        setmaxnreg_dec<40>();
        produce(base, A, As, B, Bs, Mp, Np, Kp, m0, n0, pl);
        return;
    }
    setmaxnreg_inc<232>();
    const int ct = threadIdx.x - 128, wg = ct / 128, warp = (ct % 128) / 32, lane = ct % 32;
    const int rb = (64 * wg + 16 * warp) / QB;        // the thread's rows lie in one row block
    float acc[NACC];
    const int KT0 = plain_stages(Kp), KT = KT0 + plane_stages(pl, m0, n0);
    consume(acc, base, KT0, wg, rb);
    if (pl.halves == 2)
        consume_plane<(KBS > 1 ? KBS / 2 : 1)>(acc, base, KT0, KT, wg * KBS / 2, wg, rb);
    else consume_plane<KBS>(acc, base, KT0, KT, 0, wg, rb);
    const int row = m0 + 64 * wg + 16 * warp + lane / 4, col0 = n0 + 2 * (lane % 4);
    if (!OUT_INT8) {
        #pragma unroll
        for (int i = 0; i < NACC; i += 4) {
            store_float_pair(out, out_bf16, accumulate, M, N, row, col0 + 2 * i, acc[i], acc[i + 1]);
            store_float_pair(out, out_bf16, accumulate, M, N, row + 8, col0 + 2 * i, acc[i + 2], acc[i + 3]);
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
    signed char* q = (signed char*)out;
    #pragma unroll
    for (int i = 0; i < NACC; i += 4) {
        const float s = inv[(i / 4) * 8 / QB];
        store_int8_pair(q, Mp, Np, row, col0 + 2 * i, acc[i], acc[i + 1], s, stochastic, seed);
        store_int8_pair(q, Mp, Np, row + 8, col0 + 2 * i, acc[i + 2], acc[i + 3], s, stochastic, seed);
    }
}

// p_*: the second plane (struct Plane); p_count = nullptr for none
extern "C" __global__ void __launch_bounds__(384, 1)
gemm_sm90_float_kernel(const signed char* __restrict__ A, const float* __restrict__ As,
                       const signed char* __restrict__ B, const float* __restrict__ Bs, void* out,
                       int M, int N, int Mp, int Np, int Kp, int out_bf16, int accumulate,
                       const signed char* p_q2, const int* p_list, const int* p_count,
                       const int* p_slot, const float* p_s2, int p_stride, int p_halves,
                       int p_on_b) {
    gemm_sm90<0>(A, As, B, Bs, Mp, Np, Kp, M, N, out, out_bf16, accumulate, nullptr, 0, 0u,
                 Plane{p_q2, p_list, p_count, p_slot, p_s2, p_stride, p_halves, p_on_b});
}

extern "C" __global__ void __launch_bounds__(384, 1)
gemm_sm90_int8_kernel(const signed char* __restrict__ A, const float* __restrict__ As,
                      const signed char* __restrict__ B, const float* __restrict__ Bs,
                      signed char* q, float* q_s, int Mp, int Np, int Kp, int stochastic, unsigned seed,
                      const signed char* p_q2, const int* p_list, const int* p_count,
                      const int* p_slot, const float* p_s2, int p_stride, int p_halves,
                      int p_on_b) {
    gemm_sm90<1>(A, As, B, Bs, Mp, Np, Kp, Mp, Np, q, 0, 0, q_s, stochastic, seed,
                 Plane{p_q2, p_list, p_count, p_slot, p_s2, p_stride, p_halves, p_on_b});
}
"""

SM90_SRC = (SM90_PTX_SRC + _wgmma_wrapper(TILE) + GEMM_STORE_SRC + SM90_MAINLOOP_SRC
            + SM90_CONSUME_SRC + SM90_EPILOGUE_SRC)
SM90_MAGIC_SRC = (SM90_PTX_SRC + _wgmma_wrapper(TILE) + GEMM_STORE_SRC + SM90_MAINLOOP_SRC
                  + SM90_CONSUME_MAGIC_SRC + SM90_EPILOGUE_SRC)


def _smem_bytes(qblock):
    """SMEM_BYTES of the kernel source: the A and B rings, the scale ring, 2 x STAGES barriers,
    the block absmax, and 1024 bytes to align the base to the 128 B swizzle atom."""
    blocks, kblocks = TILE // qblock, 128 // qblock      # RBS = CBS, and KBS per stage
    scales = STAGES * 2 * blocks * kblocks * 4
    return 2 * STAGES * TILE * 128 + scales + 16 * STAGES + 4 * blocks * blocks + 1024


@lru_cache(maxsize=None)
def _kernel(name, qblock, device_index, source, defines=()):
    kernel = get_kernel(source, name, (f"QB={qblock}",) + defines, torch.device("cuda", device_index))
    kernel.max_dynamic_shared_size_bytes = _smem_bytes(qblock)
    return kernel


def _source(qblock, Kp, exact, source):
    """(CUDA source, extra defines) for one launch. The magic-number promotion (SM90_MAGIC_SRC)
    where it pays, QB = 32 and 64 (QB = 128 promotes rarely enough that it gains 2-3%), with the
    largest K-group that splits Kp without zero padding (each D buffer sums at most 256 of K);
    otherwise, or when exact=True, the exact one. `source` (the ping-pong variant's) overrides."""
    if source is not None:
        return source, ()
    if not exact and qblock in (32, 64):
        for group in ((16, 8) if qblock == 32 else (8, 4)):
            if Kp % (group * qblock) == 0:
                return SM90_MAGIC_SRC, (f"KGROUP={group}",)
    return SM90_SRC, ()


def _check(a, b):
    """What the kernel itself assumes (gemm_cuda has checked dtypes, devices and shapes)."""
    assert a.qblock in (32, 64, 128) and a.qblock == b.qblock, f"unsupported QB {a.qblock}"
    assert a.q.shape[1] == b.q.shape[1] and a.q.shape[1] % a.qblock == 0, "padded K differs"
    assert a.q.data_ptr() % 16 == 0 and b.q.data_ptr() % 16 == 0, "cp.async needs 16 B alignment"


def flagged_lists(flags, qblock, group, halves=1):
    """Per 128-row tile (halves = 1) or per 64-row half of a tile (halves = 2) of a (R/QB, K/QB)
    bool grid of flagged blocks, the K-positions (in units of `group` K-blocks) holding a flagged
    block in those rows, ascending and first in their row, and their count. Returns
    (tiles * halves, positions) int32 and (tiles * halves,) int32, computed on the device without
    a host sync (so the lists have a fixed shape; the kernel reads count[list] entries)."""
    per = TILE // qblock                             # row blocks per tile
    Rb, Kb = flags.shape
    f = torch.zeros(cdiv(Rb, per) * per, cdiv(Kb, group) * group, dtype=torch.bool,
                    device=flags.device)
    f[:Rb, :Kb] = flags
    f = f.view(-1, per // halves, f.shape[1] // group, group).any(3).any(1)
    listed = torch.argsort((~f).to(torch.int8), dim=1, stable=True).to(torch.int32)
    return listed.contiguous(), f.sum(1, dtype=torch.int32)


def flagged_stages(s2, qblock):
    """Per 128-row tile, the 128-wide K-stages holding a flagged block of a dense scale grid
    (s2 != 0, second_plane's): bench.py's measure of how much of the K loop a plane touches."""
    return flagged_lists(s2 != 0, qblock, TILE // qblock)


def flagged_kblocks(slot, qblock, halves=1):
    """Per 128-row tile of the plane operand (or per 64-row half: halves = 2), the K-blocks
    holding a flagged block (slot >= 0): the lists the fused kernel runs."""
    return flagged_lists(slot >= 0, qblock, 1, halves)


def plane_lists(slot, s2, qblock, halves=1):
    """What the fused kernel reads besides q2: the K-block lists of flagged_kblocks, and for each
    list entry the slot of each of the list's 128 / QB / halves row blocks (-1: none) and its
    scale (0: none), gathered here so that the kernel's loads per stage do not depend on one
    another. Returns listed (lists, Kb), count (lists,), slots (lists, Kb, RL) int32 and scales
    (lists, Kb, RL) fp32. A slot outside q2 counts as none (never read out of bounds)."""
    per = TILE // qblock                             # row blocks per tile
    rl = per // halves                               # row blocks per list
    Rb, Kb = slot.shape
    grid = torch.full((cdiv(Rb, per) * per, Kb), -1, dtype=torch.int32, device=slot.device)
    grid[:Rb] = torch.where(slot < s2.shape[0], slot, -1)
    listed, count = flagged_kblocks(grid, qblock, halves)
    rows = grid.view(-1, rl, Kb)                                       # (lists, RL, Kb)
    slots = rows.gather(2, listed.long()[:, None, :].expand_as(rows)).transpose(1, 2).contiguous()
    scales = s2.index_select(0, slots.view(-1).clamp(min=0).long()).view(slots.shape)
    return listed, count, slots, scales.masked_fill_(slots < 0, 0.0)


def _plane(t):
    """The compact plane of t (slot, q2, s2), checked against t's block grid, as the kernel reads
    it: q2 contiguous and 16-byte aligned for cp.async (copied if not: it is small)."""
    QB, grid = t.qblock, (t.q.shape[0] // t.qblock, t.q.shape[1] // t.qblock)
    slot, q2, s2 = t.slot, t.q2, t.s2
    if slot.dtype != torch.int32 or tuple(slot.shape) != grid:
        raise ValueError(f"gemm_cuda: the plane's slot must be {grid} int32 (one per block), got "
                         f"{tuple(slot.shape)} {slot.dtype}")
    if q2.dtype != torch.int8 or q2.dim() != 3 or tuple(q2.shape[1:]) != (QB, QB):
        raise ValueError(f"gemm_cuda: the plane's q2 must be (n, {QB}, {QB}) int8, got "
                         f"{tuple(q2.shape)} {q2.dtype}")
    if s2.dtype != torch.float32 or tuple(s2.shape) != (q2.shape[0],):
        raise ValueError(f"gemm_cuda: the plane's s2 must be ({q2.shape[0]},) fp32, got "
                         f"{tuple(s2.shape)} {s2.dtype}")
    if not (slot.device == q2.device == s2.device == t.q.device):
        raise ValueError("gemm_cuda: the plane's slot, q2 and s2 must be on the operand's device")
    if not q2.is_contiguous() or q2.data_ptr() % 16:
        q2 = q2.clone(memory_format=torch.contiguous_format)
    return slot, q2, s2


def _halves(t, on_a):
    """K-block lists per 64-row consumer half (2) or per 128-row tile (1). Per half needs the
    plane on A (the halves split A's rows) and whole blocks in a half (QB <= 64); measured
    (notes/gemm_sm90.md, uniform flags) it pays only at QB = 32 with few blocks flagged (1-5%:
    1-2.5 points less overhead) and costs at 20% and more (more, emptier stages) and at QB = 64.
    n_flagged is known on the host: no sync."""
    few = t.q2.shape[0] <= 0.1 * t.slot.numel()
    return 2 if SPLIT_HALVES and on_a and t.qblock == 32 and few else 1


def _plane_args(a, b):
    """The kernels' p_* arguments: the compact second plane of the one operand that has one
    (fallback.py) and its lists (plane_lists, per tile or per half: _halves); null pointers when
    neither has."""
    t = a if a.has_plane else b if b.has_plane else None
    if t is None:
        return (np.uint64(0),) * 5 + (np.int32(0),) * 3
    slot, q2, s2 = _plane(t)
    halves = _halves(t, t is a)
    listed, count, slots, scales = plane_lists(slot, s2, t.qblock, halves)
    return (q2, listed, count, slots, scales, np.int32(listed.shape[1]), np.int32(halves),
            np.int32(t is not a))


def launch_float(a, b, c, M, N, accumulate, exact=False, source=None):
    """C (M x N fp32 / bf16, or += fp32) = A @ B^T; operands already checked by gemm_cuda.
    exact: the exact promotion even where the magic-number one applies (see _source)."""
    _check(a, b)
    (Mp, Kp), Np = a.q.shape, b.q.shape[0]
    grid = (cdiv(Mp, TILE) * cdiv(Np, TILE),)       # one CTA per 128 x 128 tile
    kernel = _kernel("gemm_sm90_float_kernel", a.qblock, a.q.device.index,
                     *_source(a.qblock, Kp, exact, source))
    launch(kernel, grid, (THREADS,),
           (a.q, a.s, b.q, b.s, c, np.int32(M), np.int32(N), np.int32(Mp), np.int32(Np),
            np.int32(Kp), np.int32(c.dtype == torch.bfloat16), np.int32(accumulate))
           + _plane_args(a, b), shared_mem=_smem_bytes(a.qblock))


def launch_int8(a, b, q, s, stochastic, seed, exact=False, source=None):
    """q (Mp x Np int8), s (Mp/QB x Np/QB fp32) = quantize(A @ B^T), RTN or stochastic."""
    _check(a, b)
    (Mp, Kp), Np = a.q.shape, b.q.shape[0]
    grid = (cdiv(Mp, TILE) * cdiv(Np, TILE),)
    kernel = _kernel("gemm_sm90_int8_kernel", a.qblock, a.q.device.index,
                     *_source(a.qblock, Kp, exact, source))
    launch(kernel, grid, (THREADS,),
           (a.q, a.s, b.q, b.s, q, s, np.int32(Mp), np.int32(Np), np.int32(Kp),
            np.int32(stochastic), np.uint32(seed)) + _plane_args(a, b),
           shared_mem=_smem_bytes(a.qblock))
