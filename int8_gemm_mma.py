"""
The mma.sync block-scaled INT8 GEMM kernel (m16n8k32 s8, sm_80 and newer): CUDA source only.
The math, the layout and the launcher are in int8_gemm.py (read its docstring first).

The kernel, per CTA (a 128 x 128 tile of C, 8 warps, each warp a 64 x 32 tile):
  - cp.async copies 16-byte chunks of A and B into a STAGES-deep shared-memory ring
    (rows XOR-swizzled, so ldmatrix reads are free of bank conflicts);
  - per 32 of K each warp loads its fragments with ldmatrix.x4 and issues 4 x 4 mma.sync, one
    16-row slice (4 mma.sync) at a time;
  - the int32 partial sum P of one K-block and slice stays in the mma's D registers. Its C
    operand starts at the magic integer 0x4B400000 (the bits of 1.5 * 2^23), so the tensor core
    adds the bias for free and, as long as |P| < 2^22, the bits of D read as a float are exactly
    12582912 + P: one FADD recovers float(P) exactly (no slow I2F), one FFMA applies the scale
    product s_A * s_B. Unit scales therefore give the exact product.
  - the slice is rescaled as soon as its K-block is done, so only 16 D registers are live: the
    kernel fits 128 registers a thread, and two CTAs (16 warps) share an SM, one warp's rescale
    hiding behind the others' mma.sync (1 CTA of ~250 registers before: 0.8-0.86x the time at
    QB = 32, 0.73-0.78x at QB = 64, 0.92-1.07x at QB = 128; notes/gemm.md, v3).
  - the epilogue writes floats, or reduces each QB x QB block's absmax through shared memory
    and writes int8 + scales (RTN, or stochastic rounding with a counter-based hash seeded per
    call from torch's generator, so torch.manual_seed makes it reproducible).
The tile loop and the epilogues are separate device functions, per (row, col, v0, v1) pair,
so a Hopper wgmma variant can reuse the epilogues.
"""

# ---------------------------------------------------------------------------------------------
# CUDA source, part 1: tile shape, PTX wrappers, shared-memory layout

GEMM_COMMON_SRC = r"""
#ifndef QB
#define QB 32
#endif
constexpr int BM = 128, BN = 128;              // CTA tile of C
constexpr int WM = 64, WN = 32;                // warp tile of C
constexpr int WARPS_M = BM / WM, WARPS_N = BN / WN;
constexpr int THREADS = 32 * WARPS_M * WARPS_N;            // 2 x 4 warps = 256 threads
constexpr int BK = QB > 64 ? QB : 64;          // bytes of K per pipeline stage
constexpr int STAGES = BK == 64 ? 4 : 3;       // 4 x 16 KB or 3 x 32 KB of shared memory
constexpr int CHUNKS = BK / 16;                // 16-byte chunks per shared-memory row
constexpr int STAGE_BYTES = (BM + BN) * BK;
constexpr int MI = WM / 16, NI = WN / 8;       // 4 x 4 mma tiles (m16 x n8) per warp
constexpr int KSTEPS = BK / 32;                // mma k-steps (k32) per stage
constexpr int STEPS_PER_QB = QB / 32;          // k-steps per K-block
constexpr int KB_STAGE = BK / QB;              // K-blocks per stage: 2, 1, 1
constexpr int RB_WARP = WM > QB ? WM / QB : 1; // row blocks of scales per warp tile: 2, 1, 1
constexpr int MAGIC = 0x4B400000;              // bits of 12582912.0f = 1.5 * 2^23
#ifndef MIN_CTAS
#define MIN_CTAS 2                             // CTAs per SM: <= 128 registers a thread
#endif
static_assert(QB == 32 || QB == 64 || QB == 128, "QB must be 32, 64 or 128");
static_assert(BK % QB == 0 && BK % 32 == 0, "a stage holds whole K-blocks of whole k-steps");
static_assert(BM % WM == 0 && BN % WN == 0 && WM % 16 == 0 && WN % 16 == 0, "warp tiling");
static_assert(BM % QB == 0 && BN % QB == 0 && QB % WN == 0, "a warp's columns share one block");
constexpr int COPY_ROWS = THREADS / CHUNKS;   // rows one pass of cp.async covers: 64 or 32
constexpr int A_COPIES = BM / COPY_ROWS, B_COPIES = BN / COPY_ROWS;   // 16 B copies per thread
static_assert(THREADS % CHUNKS == 0 && BM % COPY_ROWS == 0 && BN % COPY_ROWS == 0, "copies");
static_assert(COPY_ROWS % 8 == 0 && 16 % 8 == 0, "the swizzle repeats every 8 rows");

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// cp.async 16 B global -> shared, bypassing L1; src_bytes = 0 writes 16 zero bytes (the rows
// of a tile past the end of A or B, the K tail of the last stage).
__device__ __forceinline__ void cp_async16(unsigned dst_smem, const void* src_gmem, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(dst_smem), "l"(src_gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
}

// ldmatrix.x4: four 8x8 b16 matrices = four (8 rows x 16 bytes) int8 tiles. Lane l gives the
// address of row l%8 of matrix l/8; register j receives matrix j, row lane/4, bytes 4*(lane%4)..+3.
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// D (16x8 s32) = A (16x32 s8, row) * B (32x8 s8, col) + C (16x8 s32)
__device__ __forceinline__ void mma_m16n8k32_s8(int (&d)[4], const unsigned (&a)[4],
                                                const unsigned (&b)[2], const int (&c)[4]) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]));
}

// Shared-memory tile: rows of BK bytes = CHUNKS 16-byte chunks; chunk c of row r lives at chunk
// c ^ swz(r). One ldmatrix phase reads the same chunk of 8 consecutive rows (8 x 16 B = 128 B):
//   BK = 64:  two rows per 128-byte bank line, swz = (r/2)%4  -> 8 distinct 16 B bank groups
//   BK = 128: one row per bank line,           swz = r%8      -> 8 distinct 16 B bank groups
// cp.async writes (consecutive threads -> consecutive chunks of a row) are conflict-free too.
__device__ __forceinline__ int smem_offset(int row, int chunk) {
    return row * BK + ((chunk ^ ((row / (128 / BK)) % CHUNKS)) << 4);
}
"""

# CTA -> tile order, shared with the wgmma kernel (int8_gemm_sm90.py): both define BM and BN.
TILE_ORIGIN_SRC = r"""
// Tile pid of C -> its origin, in groups of 8 tile-rows so that consecutive tiles share A and B
// in L2 (the mma kernel runs tile blockIdx.x; the wgmma kernel's CTAs walk the tiles).
__device__ __forceinline__ void tile_origin(int pid, int Mp, int Np, int& m0, int& n0) {
    const int tiles_m = (Mp + BM - 1) / BM, tiles_n = (Np + BN - 1) / BN, GROUP = 8;
    const int group = pid / (GROUP * tiles_n);
    int first = group * GROUP, size = min(tiles_m - first, GROUP);
    m0 = (first + (pid % (GROUP * tiles_n)) % size) * BM;
    n0 = ((pid % (GROUP * tiles_n)) / size) * BN;
}
"""


# ---------------------------------------------------------------------------------------------
# CUDA source, part 2: the tile loop (shared by every epilogue)

GEMM_MAINLOOP_SRC = r"""
#ifndef PLANE
#define PLANE 0
#endif
// The fallback plane (the build with PLANE = 1; int8_gemm.gemm_cuda passes nulls to the plain
// one): the operand's second plane in fallback.py's compact form (q2 blocks of QB x QB bytes,
// found by slot) and its K-block lists per 128-row tile of that operand, as
// fallback_cuda.plane_lists_cuda builds them for the wgmma kernel too. A tile's listed K-blocks
// run first, KB_STAGE to a stage, as extra stages of the ring: the plane operand's rows from q2
// (zeros for a row block with no flagged block there), the other operand's same K-block, and
// their scales (s2: 0 where nothing is flagged), promoted exactly like the plain ones. So the
// plane costs in proportion to the (tile, K-block) pairs it touches.
struct Plane {
    const int* list;                           // (lists, stride): each list's K-blocks
    const int* count;                          // (lists,): its length
    const int* slot;                           // (lists, stride, RL): q2 index per row block, or -1
    const float* s2;                           // (lists, stride, RL): its scale, or 0
    const signed char* q2;                     // (n2, QB, QB)
    int stride, on_b;                          // on_b: the plane is B's (lists per 128 rows of B)
    int base, n, stages;                       // this tile's list: entries base.., n of them
    int rb, cb;                                // this warp's first row block / its column block in the tile
};

// Everything the stages need that does not change with K, set up once per CTA. The swizzle
// repeats every 8 rows, so each offset below is one number plus compile-time row steps.
struct Loop {
    unsigned smem;                                 // shared address of stage 0
    const signed char* A; const signed char* B;
    int a_src[A_COPIES], b_src[B_COPIES];  // row * Kp + 16 * chunk of this thread's copies, -1 past the edge
    int dst;                               // shared offset of copy 0 in a tile; copy i adds i * COPY_ROWS * BK
    int c16;                               // K offset of the thread's copy chunk
    int a_frag[KSTEPS], b_frag[KSTEPS];    // ldmatrix offset per k-step; tile mi (or pair j) adds 16 * BK
    const float* sa[RB_WARP]; const float* sb;     // this warp's rows of scales
    int Kp, Kb, KT;                        // KT: the plain stages
    int total;                             // stages of the K loop: the plane's, then the plain ones
#if PLANE
    Plane P;
#endif
};

// cp.async one stage: K bytes k0..k0+BK of the CTA's A rows and B rows; zeros past the edges.
__device__ __forceinline__ void load_stage(const Loop& L, int slot, int k0) {
    const unsigned sA = L.smem + slot * STAGE_BYTES, sB = sA + BM * BK;
    const bool k_ok = k0 + L.c16 < L.Kp;
    #pragma unroll
    for (int i = 0; i < A_COPIES; ++i) {
        const bool ok = k_ok && L.a_src[i] >= 0;
        cp_async16(sA + L.dst + i * COPY_ROWS * BK, L.A + (ok ? L.a_src[i] + k0 : 0), ok ? 16 : 0);
    }
    #pragma unroll
    for (int i = 0; i < B_COPIES; ++i) {
        const bool ok = k_ok && L.b_src[i] >= 0;
        cp_async16(sB + L.dst + i * COPY_ROWS * BK, L.B + (ok ? L.b_src[i] + k0 : 0), ok ? 16 : 0);
    }
}

#if PLANE
constexpr int RL = BM / QB;                    // row blocks of a tile: slots and scales per entry

// cp.async one plane stage: list entries s * KB_STAGE .. + KB_STAGE - 1 of the tile, one K-block
// column each; past the list's end, zeros (and scale 0).
__device__ __forceinline__ void load_plane_stage(const Loop& L, int slot, int s) {
    const Plane& P = L.P;
    const unsigned sA = L.smem + slot * STAGE_BYTES, sB = sA + BM * BK;
    const int i = L.c16 / QB, kc = L.c16 % QB;             // the thread's K-block column, its byte
    const int e = s * KB_STAGE + i, entry = P.base + e;
    const bool ok = e < P.n;
    const int kb = ok ? __ldg(P.list + entry) : 0;
    const int r0 = threadIdx.x / CHUNKS;
    static_assert(A_COPIES == B_COPIES, "a plane stage pairs each plane row copy with one of the other");
    #pragma unroll
    for (int j = 0; j < A_COPIES; ++j) {
        const int r = r0 + j * COPY_ROWS;                  // row of the tile
        const int q = ok ? __ldg(P.slot + entry * RL + r / QB) : -1;
        const int o = P.on_b ? L.a_src[j] : L.b_src[j];    // the other operand's row * Kp + c16
        const bool o_ok = ok && o >= 0;
        const signed char* plane_src = q >= 0 ? P.q2 + ((long long)q * QB + r % QB) * QB + kc : L.A;
        const signed char* other_src = (P.on_b ? L.A : L.B) + (o_ok ? o - L.c16 + kb * QB + kc : 0);
        const unsigned dst = L.dst + j * COPY_ROWS * BK;
        cp_async16((P.on_b ? sB : sA) + dst, plane_src, q >= 0 ? 16 : 0);
        cp_async16((P.on_b ? sA : sB) + dst, other_src, o_ok ? 16 : 0);
    }
}
#endif

// Stage s of the K loop: the plane's stages first, then the plain ones.
__device__ __forceinline__ void load_any(const Loop& L, int slot, int s) {
#if PLANE
    if (s < L.P.stages) { load_plane_stage(L, slot, s); return; }
    s -= L.P.stages;
#endif
    load_stage(L, slot, s * BK);
}

// The scales of one stage for this warp: s_A of its RB_WARP row blocks, s_B of its column block,
// per K-block of the stage. A K-block past the end (the odd tail when QB = 32) gets scale 0; a
// row block past the edge was clamped in setup: both multiply zero-filled data.
struct StageScales { float a[KB_STAGE][RB_WARP]; float b[KB_STAGE]; };

__device__ __forceinline__ void load_scales(const Loop& L, StageScales& s, int kb0) {
    #pragma unroll
    for (int i = 0; i < KB_STAGE; ++i) {
        const bool ok = kb0 + i < L.Kb;
        #pragma unroll
        for (int r = 0; r < RB_WARP; ++r) s.a[i][r] = ok ? __ldg(L.sa[r] + kb0 + i) : 0.f;
        s.b[i] = ok ? __ldg(L.sb + kb0 + i) : 0.f;
    }
}

__device__ __forceinline__ void scales_any(const Loop& L, StageScales& s, int stage) {
#if PLANE
    const Plane& P = L.P;
    if (stage < P.stages) {
        #pragma unroll
        for (int i = 0; i < KB_STAGE; ++i) {
            const int e = stage * KB_STAGE + i, entry = P.base + e;
            const bool ok = e < P.n;
            const int kb = ok ? __ldg(P.list + entry) : 0;
            #pragma unroll
            for (int r = 0; r < RB_WARP; ++r)
                s.a[i][r] = !ok ? 0.f : P.on_b ? __ldg(L.sa[r] + kb) : __ldg(P.s2 + entry * RL + P.rb + r);
            s.b[i] = !ok ? 0.f : P.on_b ? __ldg(P.s2 + entry * RL + P.cb) : __ldg(L.sb + kb);
        }
        return;
    }
    stage -= P.stages;
#endif
    load_scales(L, s, stage * KB_STAGE);
}

// The warp's accumulators, m16n8 tile (mi, ni) of its 64 x 32 tile; g = lane/4, t = lane%4:
//
//              col 2t   col 2t+1        row mi*16 + g      -> acc[mi][ni][0], [1]
//   row g      [ 0 ]    [ 1 ]           row mi*16 + g + 8  -> acc[mi][ni][2], [3]
//   row g+8    [ 2 ]    [ 3 ]           col ni*8 + 2t (+1)
//
// A fragment (16 rows x 32 bytes of K), one ldmatrix.x4; lane l addresses row (l%8) + 8*((l/8)%2),
// bytes 16*(l/16):  a0 = rows 0-7 k 0-15 | a1 = rows 8-15 k 0-15 | a2 = rows 0-7 k 16-31 | a3 = 8-15
// B fragments of n8 tiles 2j and 2j+1 (16 rows of B x 32 bytes), one ldmatrix.x4; lane l
// addresses row (l%8) + 8*(l/16), bytes 16*((l/8)%2):  {b0, b1} of tile 2j, then of tile 2j+1
//
// One K-block (kbl of the stage's KB_STAGE): B's fragments for its STEPS_PER_QB k-steps, then
// for each 16-row slice mi of the warp tile its NI partial sums P (int32, in d: the C operand of
// the K-block's first mma is the magic integer) and their rescale into acc[mi] right away:
//     acc += (float(bits of 12582912 + P) - 12582912) * s_A * s_B      (FADD + FFMA, exact)
// Only one slice's d (16 registers) is live, so the kernel fits 128 registers a thread and two
// CTAs (16 warps) share an SM: while one warp rescales, others keep the tensor cores busy.
__device__ __forceinline__ void mma_kblock(const Loop& L, unsigned sA, unsigned sB, int kbl,
                                           float (&acc)[MI][NI][4], const float (&sab)[RB_WARP]) {
    const int magic[4] = {MAGIC, MAGIC, MAGIC, MAGIC};
    unsigned b[STEPS_PER_QB][NI][2];
    #pragma unroll
    for (int s = 0; s < STEPS_PER_QB; ++s)
        #pragma unroll
        for (int j = 0; j < NI / 2; ++j) {
            unsigned r[4];
            ldmatrix_x4(r, sB + L.b_frag[kbl * STEPS_PER_QB + s] + 16 * BK * j);
            b[s][2 * j][0] = r[0]; b[s][2 * j][1] = r[1]; b[s][2 * j + 1][0] = r[2]; b[s][2 * j + 1][1] = r[3];
        }
    #pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
        int d[NI][4];
        #pragma unroll
        for (int s = 0; s < STEPS_PER_QB; ++s) {
            unsigned a[4];
            ldmatrix_x4(a, sA + L.a_frag[kbl * STEPS_PER_QB + s] + 16 * BK * mi);
            #pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
                if (s == 0) mma_m16n8k32_s8(d[ni], a, b[s][ni], magic);
                else        mma_m16n8k32_s8(d[ni], a, b[s][ni], d[ni]);
            }
        }
        #pragma unroll
        for (int ni = 0; ni < NI; ++ni)
            #pragma unroll
            for (int j = 0; j < 4; ++j)
                acc[mi][ni][j] = fmaf(__int_as_float(d[ni][j]) - 12582912.0f, sab[16 * mi / QB],
                                      acc[mi][ni][j]);
    }
}

// One pipeline stage: wait for it, refill the slot freed by the stage before, prefetch the
// next stage's scales, and run its K-blocks.
__device__ __forceinline__ void mma_stage(const Loop& L, int kt, float (&acc)[MI][NI][4],
                                          StageScales& cur, StageScales& nxt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();                       // stage kt has landed; everyone is done with kt - 1
    if (kt + STAGES - 1 < L.total) load_any(L, (kt + STAGES - 1) % STAGES, kt + STAGES - 1);
    cp_async_commit();
    scales_any(L, nxt, kt + 1);                                // used by the next stage
    const unsigned sA = L.smem + (kt % STAGES) * STAGE_BYTES, sB = sA + BM * BK;
    #pragma unroll
    for (int kbl = 0; kbl < KB_STAGE; ++kbl) {
        float sab[RB_WARP];                                    // s_A * s_B of this K-block
        #pragma unroll
        for (int r = 0; r < RB_WARP; ++r) sab[r] = cur.a[kbl][r] * cur.b[kbl];
        mma_kblock(L, sA, sB, kbl, acc, sab);
    }
    cur = nxt;
}

__device__ __forceinline__ void gemm_mainloop(float (&acc)[MI][NI][4], unsigned char* smem,
        const signed char* __restrict__ A, const float* __restrict__ As,
        const signed char* __restrict__ B, const float* __restrict__ Bs,
        int Mp, int Np, int Kp, int m0, int n0, const Plane& plane) {
    const int tid = threadIdx.x, warp_id = tid / 32, lane = tid % 32;
    const int warp_m = warp_id / WARPS_N, warp_n = warp_id % WARPS_N;
    Loop L;
    L.smem = smem_u32(smem); L.A = A; L.B = B;
    L.Kp = Kp; L.Kb = Kp / QB; L.KT = (Kp + BK - 1) / BK;
    const int c = tid % CHUNKS, r0 = tid / CHUNKS;             // thread -> copy chunk
    L.c16 = 16 * c;
    L.dst = smem_offset(r0, c);
    #pragma unroll
    for (int i = 0; i < A_COPIES; ++i) {
        const int m = m0 + r0 + i * COPY_ROWS;
        L.a_src[i] = m < Mp ? m * Kp + 16 * c : -1;
    }
    #pragma unroll
    for (int i = 0; i < B_COPIES; ++i) {
        const int n = n0 + r0 + i * COPY_ROWS;
        L.b_src[i] = n < Np ? n * Kp + 16 * c : -1;
    }
    const int a_row = warp_m * WM + lane % 8 + 8 * ((lane / 8) % 2), a_chunk = lane / 16;
    const int b_row = warp_n * WN + lane % 8 + 8 * (lane / 16), b_chunk = (lane / 8) % 2;
    #pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
        L.a_frag[ks] = smem_offset(a_row, 2 * ks + a_chunk);
        L.b_frag[ks] = smem_offset(b_row, 2 * ks + b_chunk);
    }
    const int Mb = Mp / QB, Nb = Np / QB, rb0 = (m0 + warp_m * WM) / QB;
    #pragma unroll
    for (int r = 0; r < RB_WARP; ++r) L.sa[r] = As + (long long)min(rb0 + r, Mb - 1) * L.Kb;
    L.sb = Bs + (long long)min((n0 + warp_n * WN) / QB, Nb - 1) * L.Kb;
    L.total = L.KT;
#if PLANE
    L.P = plane;
    const int list = (plane.on_b ? n0 : m0) / BM;
    L.P.base = list * plane.stride;
    L.P.n = plane.count[list];
    L.P.stages = (L.P.n + KB_STAGE - 1) / KB_STAGE;
    L.P.rb = warp_m * WM / QB;
    L.P.cb = warp_n * WN / QB;
    L.total += L.P.stages;
#endif

    #pragma unroll
    for (int mi = 0; mi < MI; ++mi)
        #pragma unroll
        for (int ni = 0; ni < NI; ++ni)
            #pragma unroll
            for (int j = 0; j < 4; ++j) acc[mi][ni][j] = 0.f;

    #pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {                     // prologue: stages 0..S-2 in flight
        if (s < L.total) load_any(L, s, s);
        cp_async_commit();
    }
    StageScales cur, nxt;
    scales_any(L, cur, 0);
    for (int kt = 0; kt < L.total; ++kt) mma_stage(L, kt, acc, cur, nxt);
    cp_async_wait<0>();
}
"""


# ---------------------------------------------------------------------------------------------
# CUDA source, part 3: epilogues (per (row, col) pair, cols col and col+1) and the kernels.
# GEMM_STORE_SRC depends on no tile constant: the Hopper kernel (int8_gemm_sm90.py) shares it.

GEMM_STORE_SRC = r"""
__device__ __forceinline__ unsigned short bf16_bits(float f) {     // round to nearest even
    const unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;             // NaN stays NaN
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// C[row, col..col+1] (M x N, row-major) = (v0, v1) in fp32 or bf16, plus add's (M x N fp32)
// pair where add is not null (add == out: += into fp32 C).
__device__ __forceinline__ void store_float_pair(void* out, int out_bf16, const float* add,
                                                 int M, int N, int row, int col, float v0, float v1) {
    if (row >= M || col >= N) return;
    const long long i = (long long)row * N + col;
    const bool two = col + 1 < N, vec = two && N % 2 == 0;     // vec: 8- or 4-byte aligned
    if (out_bf16) {
        unsigned short* o = (unsigned short*)out + i;
        if (vec) { *(unsigned*)o = bf16_bits(v0) | ((unsigned)bf16_bits(v1) << 16); return; }
        o[0] = bf16_bits(v0);
        if (two) o[1] = bf16_bits(v1);
        return;
    }
    float* o = (float*)out + i;
    if (vec) {
        float2 v = make_float2(v0, v1);
        if (add) { const float2 old = *(const float2*)(add + i); v.x += old.x; v.y += old.y; }
        *(float2*)o = v;
        return;
    }
    o[0] = add ? add[i] + v0 : v0;
    if (two) o[1] = add ? add[i + 1] + v1 : v1;
}

__device__ __forceinline__ unsigned hash32(unsigned x) {    // lowbias32 (C. Wellons)
    x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
    return x;
}

// q = round(y) (half to even) or sign(y) * floor(|y| + u), u = 24 random bits / 2^24, exactly as
// quantize.py does it, for y = v * inv clamped to +-127. No conversion instruction: FRND and F2I
// issue at 16 a clock per SM on Hopper (a quarter of the integer rate), and an int8 epilogue is
// two of them per element. Instead, adding MAGIC = 1.5 * 2^23 to |x| < 2^22 leaves round(x) in the
// low bits of the sum (the floats in [2^23, 2^24) are the integers), and the add rounded toward
// zero leaves floor(x) for x >= 0.
template <bool SR>
__device__ __forceinline__ int quantize_one(float v, float inv, unsigned h) {
    constexpr float MAGIC = 12582912.f;
    constexpr int MAGIC_BITS = 0x4B400000;
    const float y = fminf(fmaxf(v * inv, -127.f), 127.f);
    if (!SR) return __float_as_int(y + MAGIC) - MAGIC_BITS;
    const float t = fabsf(y) + (float)(h >> 8) * (1.0f / 16777216.0f);      // < 128
    const int r = __float_as_int(__fadd_rz(t, MAGIC)) - MAGIC_BITS;
    return y < 0.f ? -r : r;
}

// The int8 pair (v0, v1) of C[row, col..col+1] as 2 bytes, RTN or SR (a template argument: a
// runtime flag per pair compiles to branches around every element); the random stream is a hash
// of (seed, row, col), so each row's hash is shared by its pairs.
template <bool SR>
__device__ __forceinline__ unsigned short int8_pair(float v0, float v1, float inv, unsigned seed,
                                                    int row, int col) {
    const unsigned hr = SR ? hash32(seed ^ ((unsigned)row * 0x9e3779b9u)) : 0u;
    const int q0 = quantize_one<SR>(v0, inv, SR ? hash32(hr + col) : 0u);
    const int q1 = quantize_one<SR>(v1, inv, SR ? hash32(hr + col + 1) : 0u);
    return (unsigned short)((q0 & 0xff) | (q1 << 8));
}

// q[row, col..col+1] (Mp x Np int8). Computed whether or not the pair is inside C, and only the
// store is skipped past its edges: no branch around the arithmetic, so the compiler interleaves
// the pairs of an epilogue.
template <bool SR>
__device__ __forceinline__ void store_int8_pair(signed char* q, int Mp, int Np, int row, int col,
                                                float v0, float v1, float inv, unsigned seed) {
    const unsigned short p = int8_pair<SR>(v0, v1, inv, seed, row, col);
    if (row < Mp && col < Np) *(unsigned short*)(q + (long long)row * Np + col) = p;
}
"""

GEMM_EPILOGUE_SRC = r"""
__device__ __forceinline__ void epilogue_float(const float (&acc)[MI][NI][4], int m0, int n0,
                                               int M, int N, void* out, int out_bf16, const float* add) {
    const int warp_id = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row0 = m0 + (warp_id / WARPS_N) * WM + lane / 4;
    const int col0 = n0 + (warp_id % WARPS_N) * WN + 2 * (lane % 4);
    #pragma unroll
    for (int mi = 0; mi < MI; ++mi)
        #pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
            const int row = row0 + 16 * mi, col = col0 + 8 * ni;
            store_float_pair(out, out_bf16, add, M, N, row, col, acc[mi][ni][0], acc[mi][ni][1]);
            store_float_pair(out, out_bf16, add, M, N, row + 8, col, acc[mi][ni][2], acc[mi][ni][3]);
        }
}

// Re-quantize the tile in QB x QB blocks. A warp tile (64 x 32) lies in RB_WARP blocks of one
// block column: absmax per block = thread max -> warp shuffle max -> shared atomicMax (the bits
// of a float >= 0 order like ints) over the CTA's (BM/QB) x (BN/QB) blocks.
// The warp's MI x NI m16n8 accumulator tiles -> int8 (row0, col0: this thread's first pair)
template <bool SR>
__device__ __forceinline__ void store_int8_tile(const float (&acc)[MI][NI][4], const float (&inv)[RB_WARP],
                                                signed char* q, int Mp, int Np, int row0, int col0,
                                                unsigned seed) {
    #pragma unroll
    for (int mi = 0; mi < MI; ++mi)
        #pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
            const int row = row0 + 16 * mi, col = col0 + 8 * ni;
            const float s = inv[16 * mi / QB];
            store_int8_pair<SR>(q, Mp, Np, row, col, acc[mi][ni][0], acc[mi][ni][1], s, seed);
            store_int8_pair<SR>(q, Mp, Np, row + 8, col, acc[mi][ni][2], acc[mi][ni][3], s, seed);
        }
}

__device__ __forceinline__ void epilogue_int8(const float (&acc)[MI][NI][4], int m0, int n0,
                                              int Mp, int Np, signed char* q, float* q_s,
                                              int stochastic, unsigned seed) {
    constexpr int BLOCKS_N = BN / QB, BLOCKS = (BM / QB) * BLOCKS_N;   // 16, 4 or 1 per tile
    __shared__ int bmax[BLOCKS];
    const int warp_id = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int warp_m = warp_id / WARPS_N, warp_n = warp_id % WARPS_N;
    const int blk0 = (warp_m * WM / QB) * BLOCKS_N + warp_n * WN / QB;    // this warp's first block
    for (int i = threadIdx.x; i < BLOCKS; i += THREADS) bmax[i] = 0;
    __syncthreads();
    float amax[RB_WARP];
    #pragma unroll
    for (int r = 0; r < RB_WARP; ++r) amax[r] = 0.f;
    #pragma unroll
    for (int mi = 0; mi < MI; ++mi)
        #pragma unroll
        for (int ni = 0; ni < NI; ++ni)
            #pragma unroll
            for (int j = 0; j < 4; ++j) amax[16 * mi / QB] = fmaxf(amax[16 * mi / QB], fabsf(acc[mi][ni][j]));
    #pragma unroll
    for (int r = 0; r < RB_WARP; ++r) {
        #pragma unroll
        for (int off = 16; off > 0; off /= 2)
            amax[r] = fmaxf(amax[r], __shfl_xor_sync(0xffffffffu, amax[r], off));
        if (lane == 0) atomicMax(&bmax[blk0 + r * BLOCKS_N], __float_as_int(amax[r]));
    }
    __syncthreads();
    float inv[RB_WARP];                                        // 127 / absmax, 0 for a zero block
    #pragma unroll
    for (int r = 0; r < RB_WARP; ++r) {
        const float m = __int_as_float(bmax[blk0 + r * BLOCKS_N]);
        inv[r] = m > 0.f ? 127.f / m : 0.f;
    }
    for (int i = threadIdx.x; i < BLOCKS; i += THREADS) {
        const int bi = m0 / QB + i / BLOCKS_N, bj = n0 / QB + i % BLOCKS_N;
        if (bi < Mp / QB && bj < Np / QB) q_s[(long long)bi * (Np / QB) + bj] = __int_as_float(bmax[i]) / 127.f;
    }
    const int row0 = m0 + warp_m * WM + lane / 4, col0 = n0 + warp_n * WN + 2 * (lane % 4);
    if (stochastic) store_int8_tile<true>(acc, inv, q, Mp, Np, row0, col0, seed);
    else store_int8_tile<false>(acc, inv, q, Mp, Np, row0, col0, seed);
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_CTAS)
gemm_float_kernel(const signed char* __restrict__ A, const float* __restrict__ As,
                  const signed char* __restrict__ B, const float* __restrict__ Bs, void* out,
                  int M, int N, int Mp, int Np, int Kp, int out_bf16, const float* add,
                  const int* p_list, const int* p_count, const int* p_slot, const float* p_s2,
                  const signed char* p_q2, int p_stride, int p_on_b) {
    extern __shared__ __align__(128) unsigned char smem[];
    int m0, n0;
    tile_origin(blockIdx.x, Mp, Np, m0, n0);
    float acc[MI][NI][4];
    const Plane plane{p_list, p_count, p_slot, p_s2, p_q2, p_stride, p_on_b};  // (PLANE = 1 only)
    gemm_mainloop(acc, smem, A, As, B, Bs, Mp, Np, Kp, m0, n0, plane);
    epilogue_float(acc, m0, n0, M, N, out, out_bf16, add);
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_CTAS)
gemm_int8_kernel(const signed char* __restrict__ A, const float* __restrict__ As,
                 const signed char* __restrict__ B, const float* __restrict__ Bs,
                 signed char* q, float* q_s, int Mp, int Np, int Kp, int stochastic, unsigned seed,
                 const unsigned* __restrict__ salt, const int* p_list, const int* p_count, const int* p_slot, const float* p_s2,
                 const signed char* p_q2, int p_stride, int p_on_b) {
    extern __shared__ __align__(128) unsigned char smem[];
    if (stochastic) seed ^= *salt;                 // (quantize_cuda.sr_salt: CUDA graph replays)
    int m0, n0;
    tile_origin(blockIdx.x, Mp, Np, m0, n0);
    float acc[MI][NI][4];
    const Plane plane{p_list, p_count, p_slot, p_s2, p_q2, p_stride, p_on_b};  // (PLANE = 1 only)
    gemm_mainloop(acc, smem, A, As, B, Bs, Mp, Np, Kp, m0, n0, plane);
    epilogue_int8(acc, m0, n0, Mp, Np, q, q_s, stochastic, seed);
}
"""

GEMM_SRC = GEMM_COMMON_SRC + TILE_ORIGIN_SRC + GEMM_MAINLOOP_SRC + GEMM_STORE_SRC + GEMM_EPILOGUE_SRC
