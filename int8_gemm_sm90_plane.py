"""
The fallback plane of the Hopper wgmma GEMM (int8_gemm_sm90.py): the fallback operand's second
plane (fallback.py) rides the same kernel as extra K-blocks, read in its compact form (slot ->
q2 block). Host side (no host sync): device-built lists of the K-blocks holding a flagged block
(one kernel, fallback_cuda.plane_lists_cuda; plane_lists here is its torch reference), per
128-row tile, or per 64-row consumer half of a tile when the plane is on A and few blocks are
flagged (_halves), each entry with its row blocks' slots and scales gathered; plane_args checks
the plane and packs the kernels' p_* arguments, with the TMA tensor maps of q2 and of the other
operand. Device side: before a tile's plain stages the producer (produce() in
int8_gemm_sm90_ring.py) loads its listed K-blocks, a stage's KBS of them (a half's into its own
columns), each K-block column with one TMA copy of the other operand's K-block and one per
flagged QB x QB block from q2[slot]; the consumers run them first, with the exact promotion
(consume_plane; the plain K-blocks promote as the launch's source does: gemm() picks it,
int8_gemm.plane_kernel). So the plane costs in proportion to the (tile or half, K-block) pairs
it touches, and nothing is expanded to a dense plane.

Overhead against the plain default GEMM (H100, uniform flags, QB = 32, notes/plane_profile.log):
+7% at 1% flagged, +24-31% at 5%, +75-109% at 20%. Before (results/bench_fallback_849259c.md:
cp.async copies by all 128 producer threads, after the plain stages): +12%, +34%, +83-93%. The
warp-stall profile said why: the consumers waited on the plane stages' copies (the producer's
threads issued ~130 instructions each per plane stage, and a plane stage after the plain ones
has the ring's lead of short plane stages only). notes/fallback_ab.log has the A/B of the
promotion choices.

The device code comes in pieces (struct Plane, its stages and columns, issue_plane_wgmma,
consume_plane) that int8_gemm_sm90.py places among the kernel's own, each before its first use.
"""
import numpy as np
import torch

from fallback_cuda import plane_lists_cuda
from int8_gemm import cdiv, plane_operand
from int8_gemm_sm90_ring import TILE
from tma import tile_map

SPLIT_HALVES = True                          # allow one K-block list per consumer half (_halves)

# struct Plane (the kernels' p_* arguments, plane_args) and plane_tile
PLANE_SRC = r"""
// The fallback operand's second plane, in the compact form of fallback.py: q2 (n2, QB, QB) int8,
// each flagged block row-major, found through a slot grid (-1: a plain block). When `count` is
// set, the tile's K loop runs the plane's stages and then its plain ones: K-blocks from
// device-built lists of those holding a flagged block, with the plane in place of its operand
// against the same K-block of the other one. The producer copies each flagged block straight
// from q2 and leaves the rest (a plain block's scale is 0, and the promotion exact), so they add
// exactly s2 * s_other * (q2 . q_other) for the flagged pairs.
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
struct Plane {                   // (q2 itself: the p_qmap tensor map)
    const int* list;             // (lists, stride) int32: each list's K-blocks, flagged first
    const int* count;            // (lists,) int32, lists = tiles * halves; nullptr: no plane
    const int* slot;             // (lists, stride, RL) int32: q2 index of each row block, or -1
    const float* s2;             // (lists, stride, RL) fp32: its scale, or 0
    const int* order;            // (tiles,) int32: the plane operand's tiles, those with a list
                                 // entry first; nullptr: no plane
    int stride, halves, on_b;    // on_b: the plane belongs to B (tile rows: n0) not A
};

// The tile of the plane operand that this CTA's rows (A) or columns (B) fall in
__device__ __forceinline__ int plane_tile(const Plane& pl, int m0, int n0) {
    return (pl.on_b ? n0 : m0) / BM;
}

// Tile `tile` of C (a CTA takes tiles blockIdx.x, + gridDim.x, ...) -> its origin: tile_origin,
// with the plane operand's 128-row tiles taken in pl.order. The tiles with plane stages take
// longer and come in runs (a sequence's first tokens); in plain order one CTA may get several
// of them and finish last. With the plane on A they come first, one to a CTA; on B (whose
// tiles are C's column tiles, walked anew in each group of 8 tile-rows) first in each group.
__device__ __forceinline__ void plane_tile_origin(const Plane& pl, int tile, int Mp, int Np,
                                                  int& m0, int& n0) {
    tile_origin(tile, Mp, Np, m0, n0);
    if (pl.order) {
        if (pl.on_b) n0 = pl.order[n0 / BM] * BM;
        else m0 = pl.order[m0 / BM] * BM;
    }
}
"""

# plane_stages and plane_column: they follow plain_stages (int8_gemm_sm90_ring.py) in the source
PLANE_STAGES_SRC = r"""// Stages of the plane: KBS / halves K-blocks of each list per stage, for the longest list
__device__ __forceinline__ int plane_stages(const Plane& pl, int m0, int n0) {
    if (!pl.count) return 0;
    const int first = plane_tile(pl, m0, n0) * pl.halves, per = KBS / pl.halves;
    int n = 0;
    for (int h = 0; h < pl.halves; ++h) n = max(n, (pl.count[first + h] + per - 1) / per);
    return n;
}
// plane_stages of unit u (unit_at: split u % splits of tile u / splits); its tile's plane stages
// go with split 0, and past the last unit there are none (the consumers read it one unit ahead)
__device__ __forceinline__ int plane_stages_of(const Plane& pl, int u, int splits, int Mp,
                                               int Np) {
    if (!pl.count || u % splits || u >= tile_count(Mp, Np) * splits) return 0;
    int m0, n0;
    plane_tile_origin(pl, u / splits, Mp, Np, m0, n0);
    return plane_stages(pl, m0, n0);
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
"""

# consume_plane: after the K-block steps (issue_wgmma, promote_kblock: int8_gemm_sm90.py)
CONSUME_PLANE_SRC = r"""
// The plane's n stages from st on (after consume()'s loop over the plain ones): per stage, this
// warpgroup's N K-block columns from j0 (all KBS, or its half's KBS / 2), D[0] / D[1]
// alternating, the exact promotion. A listed K-block is flagged in one row block of the tile or
// half, so the other row blocks' warps skip its promotion (promote_kblock's SKIP_ZERO: at
// QB = 32 the promotion's issue slots bound the kernel, and those the skipping warps give to
// the others; wgmma's work is the warpgroup's). The stage is freed after its last.
// Returns the stage after. (Draining the wgmma pipeline once per two stages instead measured
// slower: notes/fallback_ab.log.)
// The plane stages' wgmma descriptors (high word): K-block column j of a stage is a region of
// BM rows x QB bytes (produce_plane), rows QB bytes apart with the QB-byte swizzle (mode 3, 2, 1
// for 32, 64, 128 bytes), so 8-row groups lie 8 QB bytes apart. At QB = 128 that is DESC_HI.
constexpr unsigned PLANE_DESC_HI = (8 * QB >> 4) | ((QB == 32 ? 3u : QB == 64 ? 2u : 1u) << 30);
// issue_wgmma for a plane stage's column j: my 64 rows of A start 64 wg rows of QB bytes into
// the column's region (cs.desc_a: 64 wg rows of BK bytes into a tile), B at its start
__device__ __forceinline__ void issue_plane_wgmma(int (&d)[NACC], const Consumer& cs, Stage st,
                                                  int j) {
    const unsigned off = st.slot * (TILE_BYTES / 16) + j * (BM * QB / 16);
    const unsigned a = cs.desc_a - cs.wg * (64 * (BK - QB) / 16) + off, b = cs.desc_b + off;
    wgmma_fence();
    #pragma unroll
    for (int s = 0; s < KSTEPS; ++s)
        wgmma_m64n128k32_s8(d, (unsigned long long)PLANE_DESC_HI << 32 | (a + 2 * s),
                            (unsigned long long)PLANE_DESC_HI << 32 | (b + 2 * s), s > 0);
    wgmma_commit();
}
template <int N>
__device__ __forceinline__ Stage consume_plane(float (&acc)[NACC], const Consumer& cs, Stage st,
                                               int n, int j0) {
    int d[2][NACC];
    for (int e = 0; e < n; ++e, st = next_stage(st)) {
        wait_full(cs, st);
        issue_plane_wgmma(d[0], cs, st, j0);
        #pragma unroll
        for (int g = 1; g < N; ++g) {
            issue_plane_wgmma(d[g % 2], cs, st, j0 + g);
            promote_kblock<1, true>(acc, d[(g - 1) % 2], cs, st, j0 + g - 1);
        }
        promote_kblock<0, true>(acc, d[(N - 1) % 2], cs, st, j0 + N - 1);
        release(cs, st);
    }
    return st;
}

"""


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
    (lists, Kb, RL) fp32, and the order (tiles,) int32 in which the kernel's CTAs take the
    plane operand's tiles: those with a listed K-block first, each part ascending. A slot outside
    q2 counts as none (never read out of bounds)."""
    per = TILE // qblock                             # row blocks per tile
    rl = per // halves                               # row blocks per list
    Rb, Kb = slot.shape
    grid = torch.full((cdiv(Rb, per) * per, Kb), -1, dtype=torch.int32, device=slot.device)
    grid[:Rb] = torch.where(slot < s2.shape[0], slot, -1)
    listed, count = flagged_kblocks(grid, qblock, halves)
    rows = grid.view(-1, rl, Kb)                                       # (lists, RL, Kb)
    slots = rows.gather(2, listed.long()[:, None, :].expand_as(rows)).transpose(1, 2).contiguous()
    scales = s2.index_select(0, slots.view(-1).clamp(min=0).long()).view(slots.shape)
    light = count.view(-1, halves).amax(1) == 0
    order = torch.argsort(light.to(torch.int8), stable=True).to(torch.int32)
    return listed, count, slots, scales.masked_fill_(slots < 0, 0.0), order


def _halves(t, on_a):
    """K-block lists per 64-row consumer half (2) or per 128-row tile (1). Per half needs the
    plane on A (the halves split A's rows) and whole blocks in a half (QB <= 64); measured
    (notes/gemm_sm90.md, uniform flags) it pays only at QB = 32 with few blocks flagged (1-5%:
    1-2.5 points less overhead) and costs at 20% and more (more, emptier stages) and at QB = 64.
    q2's size is known on the host (the flagged count, or a plane budget's capacity, at least
    that): no sync."""
    few = t.q2.shape[0] <= 0.1 * t.slot.numel()
    return 2 if SPLIT_HALVES and on_a and t.qblock == 32 and few else 1


NO_MAP = np.zeros(1, np.dtype((np.void, 128)))   # a tensor map argument the kernel never reads


def plane_args(a, b):
    """The kernels' p_* arguments: the compact second plane of the one operand that has one
    (fallback.py), its lists (plane_lists_cuda, per tile or per half: _halves) and the tensor maps
    of its stages' TMA copies (produce_plane): the other operand's, a 128-row x QB box, and q2's as
    (n2 QB, QB) rows, a QB x QB box. Null pointers and unused maps when neither has a plane."""
    t = a if a.has_plane else b if b.has_plane else None
    if t is None:
        return (np.uint64(0),) * 5 + (np.int32(0),) * 3 + (NO_MAP, NO_MAP)
    slot, q2, s2 = plane_operand(t)
    halves = _halves(t, t is a)
    listed, count, slots, scales, order = plane_lists_cuda(slot, s2, t.qblock, halves)
    QB, other = t.qblock, b if t is a else a
    o_map = tile_map(other.q.data_ptr(), other.q.shape[0], other.q.shape[1], TILE, QB)
    q_map = tile_map(q2.data_ptr(), q2.shape[0] * QB, QB, QB, QB) if q2.numel() else NO_MAP
    return (listed, count, slots, scales, order, np.int32(listed.shape[1]), np.int32(halves),
            np.int32(t is not a), o_map, q_map)

