"""
The shared-memory ring under the Hopper wgmma GEMM (int8_gemm_sm90.py: read its docstring
first): the tile constants and the shared-memory layout, one wrapper per PTX instruction the
kernel uses, and the producer warpgroup that fills the ring. The kernel source is assembled in
int8_gemm_sm90.py from these pieces, its own and the fallback plane's (int8_gemm_sm90_plane.py).

Shared memory of one CTA, its base rounded up to 1024 bytes (the 128 B swizzle atom):

    [A ring: STAGES x 16 KB][B ring: STAGES x 16 KB][C tile: 64 KB, the epilogue's]
    [scale ring: STAGES x SCALE_FLOATS fp32][full barriers: STAGES x 8 B][empty barriers: STAGES x 8 B]
    [C barrier: 8 B][block absmax: 3 x RBS x CBS int32]

A stage is BK = 128 bytes of K for the tile's 128 rows of A and 128 rows of B, so 128 / QB
K-blocks, with their scales s_A [KBS][RBS] and s_B [KBS][CBS]. Each 128-byte row is stored with
the 128-byte swizzle (the comment above desc_lo), as TMA writes it. (A fallback plane stage lays
the same 16 KB out by K-block instead: produce_plane_stage.) The C tile holds the tile's output
on its way to TMA stores: 128 x 128 int8 (16 KB), bf16 (32 KB) or fp32 (64 KB), in boxes of
128 rows x 128 bytes with the same swizzle; the C barrier counts a residual tile's TMA load into
it. In all: 231,320 bytes at QB = 32 (_smem_bytes, SMEM_BYTES) of the 232,448 (227 KB) an H100
CTA may use.

PTX wrappers (SM90_PTX_SRC): TMA (the tensor map, cp.async.bulk.tensor, mbarrier expect_tx),
cp.async of 4 bytes for the scales (src-size 0 writes zeros), mbarrier init / arrive / try_wait,
cp.async.mbarrier.arrive (an arrival once this thread's copies have landed), fence.proxy.async
(cp.async writes through the generic proxy, wgmma reads through the async one), wgmma fence /
commit / wait, a compiler fence on D (fence_operands), setmaxnreg, the consumers' named barrier,
and the wgmma descriptor (desc_lo, desc_at). The wgmma itself is generated (_wgmma_wrapper):
inline asm takes no arrays.

The producer (warpgroup 0, 128 threads, setmaxnreg 40) runs the stages in order: wait, once the
ring has been filled, for the slot's empty barrier (all 256 consumer threads); thread 0 sets the
slot's full barrier to expect 32 KB and issues two TMA copies, the 128 x 128-byte boxes of A
and B (tensor maps from tma.py; rows past Mp / Np and K past Kp read as zeros); thread
t < SCALE_FLOATS cp.asyncs one scale (0 past the edges); then every producer thread arrives on
the full barrier, which completes when all have arrived and the 32 KB have landed. (TMA against
the earlier 128-thread cp.async of the tiles with copy_plain: 0.81-1.00x the time over bench.py's
45 GEMM rows, notes/tma_ab.log; that producer is in git history before commit 3051b06.) Before
a tile's plain stages it runs the fallback plane's (produce_plane_stage), TMA copies of one
K-block or one flagged block each, into K-block columns with the QB-byte swizzle.
"""
TILE = 128                                   # BM = BN of the kernel
STAGES = 5                                   # 5 x (16 + 16 KB) ring


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
static_assert(BM == 128 && BN == 128 && BK == 128, "the ring's stages are 128 x 128 B tiles");
// shared memory: [A ring][B ring][C tile][scale ring][full barriers][empty barriers][C barrier]
// [block absmax]
constexpr int SMEM_B = STAGES * TILE_BYTES, SMEM_C = 2 * STAGES * TILE_BYTES;
constexpr int C_BOX = BM * 128;              // a C box: 128 rows x 128 bytes (16 KB, 1024-aligned)
constexpr int SMEM_S = SMEM_C + 4 * BM * BN; // C tile: up to 4 boxes (fp32)
constexpr int SMEM_BAR = SMEM_S + STAGES * SCALE_FLOATS * 4, SMEM_CBAR = SMEM_BAR + 16 * STAGES;
constexpr int SMEM_BMAX = SMEM_CBAR + 8;
constexpr int SMEM_BYTES = SMEM_BMAX + 3 * 4 * RBS * CBS + 1024;   // + 1024: base alignment slack
static_assert(SMEM_BYTES <= 227 * 1024, "the ring must fit in an H100's 227 KB of shared memory");

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
// cp.async global -> shared of 4 bytes (the scales); src_bytes = 0 writes zeros.
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
// TMA: a tensor map (built by the host, tma.py) describes a 2-D int8 array in global memory and
// the 128 x 128-byte box that one cp.async.bulk.tensor moves into shared memory, swizzled as
// desc_lo below expects and zero past the array's edges. The copy counts its bytes down on an
// mbarrier (complete_tx) that expect_tx counted up first. Maps come as __grid_constant__ kernel
// parameters; the instruction takes their generic address.
struct alignas(64) TensorMap { unsigned long long opaque[16]; };   // CUtensorMap's 128 bytes
__device__ __forceinline__ void tma_prefetch(const TensorMap* map) {
    asm volatile("prefetch.tensormap [%0];\n" :: "l"(map) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" :: "r"(bar), "r"(bytes) : "memory");
}
// expect_tx and one arrival (the C barrier's only one)
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(bar), "r"(bytes) : "memory");
}
// the box whose first element is (row, k) -> dst, counted on bar
__device__ __forceinline__ void tma_load(unsigned dst, const TensorMap* map, int k, int row, unsigned bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3}], [%4];\n"
                 :: "r"(dst), "l"(map), "r"(k), "r"(row), "r"(bar) : "memory");
}
// src -> the box whose first element is (row, col), clipped at the array's edges (col counts
// the map's elements); ADD: added into the array instead, element by element in the map's type
// (fp32), by the L2. Issued copies form a bulk group at bulk_commit, whose reads of src
// bulk_wait_read waits for.
template <bool ADD = false>
__device__ __forceinline__ void tma_store(const TensorMap* map, int col, int row, unsigned src) {
    if constexpr (ADD)
        asm volatile("cp.reduce.async.bulk.tensor.2d.global.shared::cta.add.tile.bulk_group"
                     " [%0, {%1, %2}], [%3];\n" :: "l"(map), "r"(col), "r"(row), "r"(src) : "memory");
    else
        asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.tile.bulk_group [%0, {%1, %2}], [%3];\n"
                     :: "l"(map), "r"(col), "r"(row), "r"(src) : "memory");
}
__device__ __forceinline__ void bulk_commit() {
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void bulk_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
// Split-K's turns (SM90_PLAIN_STAGES_SRC, store_tile): wait until the tile's turn counter says
// `split`, or make the bulk group's global writes complete and pass the turn on. The proxy
// fences order the TMA's (async proxy) adds against the counter's (generic proxy) accesses.
// The wait's loop is PTX's own: as a C++ loop in the epilogue it made ptxas spill in the K loop.
__device__ __forceinline__ void wait_turn(const int* turn, int split) {
    asm volatile("{\n.reg .s32 t;\n.reg .pred p;\n"
                 "WAIT_TURN:\n"
                 "ld.acquire.gpu.global.s32 t, [%0];\n"
                 "setp.ne.s32 p, t, %1;\n"
                 "@p nanosleep.u32 64;\n"
                 "@p bra WAIT_TURN;\n"
                 "}\n" :: "l"(turn), "r"(split) : "memory");
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
}
__device__ __forceinline__ void pass_turn(int* turn) {
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
    asm volatile("red.release.gpu.global.add.s32 [%0], 1;\n" :: "l"(turn) : "memory");
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
// Only the low word depends on the address, so the consumers build it once (desc_lo) and move
// it by adding bytes >> 4 (desc_at). That add never carries out of bits 0-13: a shared::cta
// address is below 228 KB < 2^18 on sm_90 (the whole shared memory of an SM), so the address
// it lands on, itself inside the ring, still has addr >> 4 < 2^14.
constexpr unsigned DESC_HI = 64u | (1u << 30);         // bits 32-63: stride 1024 B, 128 B swizzle
__device__ __forceinline__ unsigned desc_lo(unsigned addr) {
    return ((addr & 0x3FFFF) >> 4) | (1u << 16);
}
__device__ __forceinline__ unsigned long long desc_at(unsigned lo) {
    return (unsigned long long)DESC_HI << 32 | lo;
}
"""

# The plain K loop's length (plain_stages) and the tile count, used by the producer and the kernel
# body; the CTA ->
# tile order (tile_origin) is the mma kernel's TILE_ORIGIN_SRC, and the plane's struct
# (int8_gemm_sm90_plane.py) comes between the two in the kernel source.
SM90_PLAIN_STAGES_SRC = r"""// Stages of the plain K loop: Kp / BK rounded up to whole consumer groups (K past Kp is
// zero-filled: it adds nothing)
__device__ __forceinline__ int plain_stages(int Kp) {
    return ((Kp + BK - 1) / BK + KT_ROUND - 1) / KT_ROUND * KT_ROUND;
}
// The tiles this CTA computes: tile blockIdx.x, then every gridDim.x-th after it (the grid is at
// most one CTA per SM, so the producer fills the ring for the next tile while the consumers
// store this one)
__device__ __forceinline__ int tile_count(int Mp, int Np) {
    return ((Mp + BM - 1) / BM) * ((Np + BN - 1) / BN);
}
// Split-K (the float kernel's, for outputs of few tiles: the weight gradients). The CTAs walk
// units, unit u = split u % splits of tile u / splits, a split being a run of whole consumer
// groups of the plain stages (the fallback plane's stages go with split 0). Each split adds
// its sums into C (the ACCUMULATE epilogue: the weight gradient into .grad) in split order,
// passing a per-tile turn counter on (wait_turn / pass_turn), so the sums are the same at every
// run. splits = 1: units are tiles. (A split waits only on units of lower index, which run on
// CTAs that are all resident: one CTA per SM, grid <= SMs.)
struct Unit {
    int tile, split, k0, kn;     // tile, split, first plain stage, plain stages
};
__device__ __forceinline__ Unit unit_at(int u, int splits, int Kp) {
    const int groups = plain_stages(Kp) / KT_ROUND, s = u % splits;
    const int g0 = s * groups / splits, g1 = (s + 1) * groups / splits;
    return Unit{u / splits, s, g0 * KT_ROUND, (g1 - g0) * KT_ROUND};
}
"""

# The producer warpgroup's loop over the stages: the plain ones, then the plane's
SM90_PRODUCE_SRC = r"""
// Thread t < SCALE_FLOATS loads one scale of the stage: s_A[m0/QB + rb, kb_j] -> [j][rb], then
// s_B likewise; its block and K-block column j:
__device__ __forceinline__ void scale_role(int t, int m0, int n0, bool& is_a, int& blk, int& j) {
    is_a = t < RBS * KBS;
    const int u = is_a ? t : t - RBS * KBS, nb = is_a ? RBS : CBS;
    blk = (is_a ? m0 : n0) / QB + u % nb;
    j = u / nb;
}


// The fallback plane's stages of a tile (plane_stages): the listed K-blocks, the plane in place
// of its operand. Each K-block column j of a plane stage has a region of its own in the operand's
// slot, BM rows x QB bytes at j * BM * QB, with the QB-byte swizzle (PLANE_DESC_HI), so that TMA
// fills it one K-block at a time: thread j < KBS copies the other operand's K-block of column j
// (o_map: a BM x QB box at its tile's rows), thread KBS + RBS j + rb the plane's block of row
// block rb in column j (q_map: q2 as (n2 QB, QB) rows, a QB x QB box from row slot * QB), where
// the list has one; each expects its bytes on the stage's full barrier before it copies. A row
// block with no flagged block is not written: its scale is 0 and the plane's promotion is exact,
// so whatever it holds adds 0. PlaneCopy is one thread's part for one tile; it reads its entry
// (K-block or slot) a stage ahead.
struct PlaneCopy {
    int n;                   // the tile's plane stages
    bool is_col, copies;     // copies the other operand's column (is_col) or a plane block
    unsigned dst;            // where to, in slot 0
    int row;                 // the other operand's tile rows (is_col)
    int first, count, rbl;   // my column's list entries (plane_column) and my row block in it
    int next;                // my entry in the next stage, -1: none
};
__device__ __forceinline__ int plane_entry(const Plane& pl, const PlaneCopy& c, int e) {
    const int i = e * (KBS / pl.halves);
    if (!c.copies || i >= c.count) return -1;
    return c.is_col ? pl.list[c.first + i]
                    : pl.slot[(long long)(c.first + i) * (RBS / pl.halves) + c.rbl];
}
__device__ __forceinline__ PlaneCopy plane_copy(unsigned base, const Plane& pl, int m0, int n0) {
    const int t = threadIdx.x, u = t - KBS;
    PlaneCopy c;
    c.n = plane_stages(pl, m0, n0);
    if (!pl.count) {                                    // no plane
        c.copies = false;
        c.next = -1;
        return c;
    }
    c.is_col = t < KBS;
    const bool is_blk = u >= 0 && u < KBS * RBS;
    const int j = c.is_col ? t : is_blk ? u / RBS : 0, rb = u % RBS;
    const PlaneColumn col = plane_column(pl, m0, n0, j);
    c.rbl = rb - col.h * (RBS / pl.halves);
    c.copies = c.is_col || (is_blk && c.rbl >= 0 && c.rbl < RBS / pl.halves);
    const unsigned ring = (c.is_col != (bool)pl.on_b) ? SMEM_B : 0;     // the ring it fills
    c.dst = base + ring + j * (BM * QB) + (c.is_col ? 0 : rb * (QB * QB));
    c.row = pl.on_b ? m0 : n0;
    c.first = col.first;
    c.count = col.n;
    c.next = plane_entry(pl, c, 0);
    return c;
}
// Plane stage e of the tile at ring stage g: my copy, and thread t < SCALE_FLOATS one scale
__device__ __forceinline__ void produce_plane_stage(unsigned base, const TensorMap* o_map,
        const TensorMap* q_map, const float* As, const float* Bs, int Mp, int Np, int Kp, int m0,
        int n0, const Plane& pl, PlaneCopy& c, int e, int g) {
    const int t = threadIdx.x, slot = g % STAGES, v = c.next;
    const unsigned full = base + SMEM_BAR + 8 * slot;
    c.next = plane_entry(pl, c, e + 1);
    if (g >= STAGES) mbar_wait(base + SMEM_BAR + 8 * STAGES + 8 * slot, (g / STAGES + 1) & 1);
    if (v >= 0) {
        mbar_expect_tx(full, c.is_col ? BM * QB : QB * QB);
        if (c.is_col) tma_load(c.dst + slot * TILE_BYTES, o_map, v * QB, c.row, full);
        else tma_load(c.dst + slot * TILE_BYTES, q_map, 0, v * QB, full);
    }
    if (t < SCALE_FLOATS) {
        bool is_a;
        int blk, j;
        scale_role(t, m0, n0, is_a, blk, j);
        const PlaneColumn cj = plane_column(pl, m0, n0, j);
        const int rl = RBS / pl.halves, i = e * (KBS / pl.halves);
        const int rbj = blk - (pl.on_b ? n0 : m0) / QB - cj.h * rl;
        const float* src = nullptr;
        if (is_a != pl.on_b) {                          // the plane's: from the gathered scales
            if (i < cj.n && rbj >= 0 && rbj < rl) src = pl.s2 + (long long)(cj.first + i) * rl + rbj;
        } else if (i < cj.n && blk < (is_a ? Mp : Np) / QB) {
            src = (is_a ? As : Bs) + (long long)blk * (Kp / QB) + pl.list[cj.first + i];
        }
        cp_async4(base + SMEM_S + 4 * t + 4 * slot * SCALE_FLOATS, src ? src : As, src ? 4 : 0);
    }
    cp_async_arrive(full);
}

// Producer warpgroup, over this CTA's units (unit_at: tiles, or their K splits): per plain stage,
// the A and B tiles (TMA) and, thread t < SCALE_FLOATS, one scale; then one arrival on the
// stage's full barrier per thread. The ring's stages are counted over all tiles (g: slot
// g % STAGES, its phase g / STAGES), so the next tile's first stages load while the consumers
// still finish this one. A tile's plane stages
// (produce_plane_stage) come before its plain ones: so they load while the consumers run the
// last tile's plain stages, which take longer than plane ones. (After them, or spread between
// the groups of plain stages, measured slower at 1-5% flagged: notes/plane_profile.log.)
__device__ void produce(unsigned base, const TensorMap* a_map, const TensorMap* b_map,
                        const TensorMap* o_map, const TensorMap* q_map, const float* As,
                        const float* Bs, int Mp, int Np, int Kp, const Plane& pl, int splits) {
    const int t = threadIdx.x, Kb = Kp / QB;
    const unsigned s_dst = base + SMEM_S + 4 * t;
    int g = 0;
    for (int u = blockIdx.x; u < tile_count(Mp, Np) * splits; u += gridDim.x) {
        const Unit w = unit_at(u, splits, Kp);
        int m0, n0;
        plane_tile_origin(pl, w.tile, Mp, Np, m0, n0);
        PlaneCopy pc = plane_copy(base, pl, m0, n0);
        if (w.split) pc.n = 0;                        // (a tile's plane stages: split 0's)
        bool is_a;
        int blk, j;
        scale_role(t, m0, n0, is_a, blk, j);
        for (int e = 0; e < pc.n; ++e, ++g)
            produce_plane_stage(base, o_map, q_map, As, Bs, Mp, Np, Kp, m0, n0, pl, pc, e, g);
        for (int kt = w.k0; kt < w.k0 + w.kn; ++kt, ++g) {
            const int slot = g % STAGES;
            const unsigned full = base + SMEM_BAR + 8 * slot;
            if (g >= STAGES) mbar_wait(base + SMEM_BAR + 8 * STAGES + 8 * slot, (g / STAGES + 1) & 1);
            if (t == 0) {                    // one thread moves both 16 KB tiles
                mbar_expect_tx(full, 2 * TILE_BYTES);
                tma_load(base + slot * TILE_BYTES, a_map, kt * BK, m0, full);
                tma_load(base + SMEM_B + slot * TILE_BYTES, b_map, kt * BK, n0, full);
            }
            if (t < SCALE_FLOATS) {
                const int kbj = kt * KBS + j;
                const bool ok = kbj < Kb && blk < (is_a ? Mp : Np) / QB;
                const float* src = (is_a ? As : Bs) + (ok ? (long long)blk * Kb + kbj : 0);
                cp_async4(s_dst + 4 * slot * SCALE_FLOATS, src, ok ? 4 : 0);
            }
            cp_async_arrive(full);
        }
    }
}
"""


def _smem_bytes(qblock):
    """SMEM_BYTES of the kernel source: the A and B rings, the C tile (fp32), the scale ring,
    2 x STAGES + 1 barriers, the block absmax (3 tiles' worth), and 1024 bytes to align the base
    to the 128 B swizzle atom."""
    blocks, kblocks = TILE // qblock, 128 // qblock      # RBS = CBS, and KBS per stage
    scales = STAGES * 2 * blocks * kblocks * 4
    return (2 * STAGES * TILE * 128 + 4 * TILE * TILE + scales + 16 * STAGES + 8
            + 3 * 4 * blocks * blocks + 1024)
