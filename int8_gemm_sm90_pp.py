"""
Block-scaled INT8 GEMM for Hopper, ping-pong variant: int8_gemm_sm90.py with its two consumer
warpgroups taking turns on the tensor cores (FlashAttention-3's inter-warpgroup schedule).

Same math, tile, producer, shared-memory ring and epilogues as int8_gemm_sm90.py (read it first):
one CTA = 1 producer + 2 consumer warpgroups, a 128 x 128 tile of C, consumer wg owns rows
64 wg .. 64 wg + 63, two int32 D buffers + 64 fp32 accumulators per thread. Only the consumer
K loop differs. In int8_gemm_sm90.py both consumer warpgroups wait on the same full barrier,
issue their wgmma together and promote (acc += float(P) * s_A * s_B) together; their FP phases
coincide, so while both promote the schedulers have nothing else to issue and while both wait
nothing promotes. Here two named barriers pass a turn back and forth: a warpgroup issues its
next K-block only after the other has issued its own, so the tensor cores take the K-blocks in
the order WG0 kb, WG1 kb, WG0 kb+1, ... and each warpgroup promotes its previous K-block while
the other's wgmma runs:

    turn       | WG0       | WG1       | WG0         | WG1         | WG0         | ...
    tensor     | W0(kb)    | W1(kb)    | W0(kb+1)    | W1(kb+1)    | W0(kb+2)    |
    WG0 FP     | P0(kb-1)              | P0(kb)                    | P0(kb+1)
    WG1 FP                 | P1(kb-1)              | P1(kb)                    |
    (W = wgmma of a 64 x 128 x QB K-block into D[kb % 2]; P = its promotion after wait_group 1)

    bar TURN0 (id 2): WG0 bar.sync before each issue; WG1 bar.arrive after each of its issues
    bar TURN1 (id 3): the same with the roles swapped; WG1 arrives once up front so WG0 starts

Counts balance: WG0 syncs TURN0 KB times and WG1 arrives on it 1 + (KB - 1) times (it skips the
arrive after its last K-block), so no arrival is left pending at exit. Every group of G K-blocks
still ends with wgmma.wait_group 0 (a wgmma in flight across the loop back edge makes ptxas
serialise every wgmma, C7514; see notes/gemm_sm90.md).

Measured on an H100 (notes/gemm_sm90.md, "v2: ping-pong"): correct (52 GPU tests), but not
faster: 3-7% slower than int8_gemm_sm90.py at QB = 32, 1-3% faster at QB = 64, +-1% at QB = 128,
so gemm_cuda's 'auto' keeps 'wgmma'. The reason: in these kernels the promotion does not overlap
the wgmma at all (time with both ~= time of wgmma alone + time of promotion alone), whichever
warpgroup does which when; ordering the issue cannot hide what the SM will not run side by side.
"""
import int8_gemm_sm90 as sm90
from int8_gemm_mma import GEMM_STORE_SRC
from int8_gemm_sm90_ring import SM90_PTX_SRC, TILE, _wgmma_wrapper

PP_CONSUME_SRC = r"""
constexpr int TURN0 = 2;                     // named barriers 2, 3 (0: __syncthreads, 1: epilogue)
__device__ __forceinline__ void named_bar_sync(int id) {      // wait for 256 arrivals (both WGs)
    asm volatile("bar.sync %0, 256;\n" :: "r"(id) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id) {    // count this WG's 128, do not wait
    asm volatile("bar.arrive %0, 256;\n" :: "r"(id) : "memory");
}

// Consumer warpgroup wg: acc += its 64 x 128 slice (register layout as in int8_gemm_sm90.py) of
// the KT stages starting at st; returns the stage after them.
// K-blocks in groups of G, D[0] / D[1] alternating; each issue waits for this warpgroup's turn
// and then hands the turn to the other warpgroup, whose wgmma then queues behind ours while we
// promote the K-block before.
__device__ __forceinline__ Stage consume(float (&acc)[NACC], const Consumer& cs, Stage st, int KT) {
    const int KB = KT * KBS, wg = cs.wg;     // KT: plain_stages(), a multiple of G / KBS
    int d[2][NACC];
    if (wg == 1) named_bar_arrive(TURN0);                // WG0 takes the first turn
    for (int kb = 0; kb < KB; kb += G) {
        Stage s[G / KBS];
        st = group_stages(s, st);
        #pragma unroll
        for (int g = 0; g < G; ++g) {
            named_bar_sync(TURN0 + wg);                  // the other WG has issued kb + g - 1
            issue_kblock(d[g % 2], cs, s[g / KBS], g % KBS);   // g is unrolled: d[g % 2] is static
            if (wg == 0 || kb + g + 1 < KB) named_bar_arrive(TURN0 + 1 - wg);   // its turn
            if (g > 0)                                   // K-block kb + g - 1 is done
                finish_kblock<1>(acc, d[(g - 1) % 2], cs, s[(g - 1) / KBS], (g - 1) % KBS);
        }
        finish_kblock<0>(acc, d[(G - 1) % 2], cs, s[G / KBS - 1], KBS - 1);
    }
    return st;
}
"""

SM90_PP_SRC = (SM90_PTX_SRC + _wgmma_wrapper(TILE) + GEMM_STORE_SRC
               + sm90.SM90_MAINLOOP_SRC + PP_CONSUME_SRC + sm90.SM90_EPILOGUE_SRC)


def launch_float(a, b, c, M, N, add=None):
    """C (M x N fp32 / bf16) = A @ B^T (+ add); operands already checked by gemm_cuda."""
    sm90.launch_float(a, b, c, M, N, add, source=SM90_PP_SRC)


def launch_int8(a, b, q, s, stochastic, seed):
    """q (Mp x Np int8), s (Mp/QB x Np/QB fp32) = quantize(A @ B^T), RTN or stochastic."""
    sm90.launch_int8(a, b, q, s, stochastic, seed, source=SM90_PP_SRC)
