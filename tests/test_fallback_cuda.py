"""fallback_cuda.py's kernels against fallback.py's torch path: the flags and slots of
plane_select, the residual plane of plane_residual, the GEMM lists of plane_lists."""
import pytest
import torch

from fallback import (PlaneBudget, Spec, add_second_plane, gathered_blocks, quantize_with_plane,
                      scale_flags, topk_count)
from quantize import pad_2d, quantize, transpose_ref

pytestmark = pytest.mark.gpu


def scale_grid(rows, cols, seed, zeros=0.2, dups=False):
    """A scale grid like a tensor's: log-normal spread, some all-zero blocks, and (dups) many
    exact duplicates, so that the median and the threshold meet equal values."""
    g = torch.Generator().manual_seed(seed)
    s = torch.exp(torch.randn(rows, cols, generator=g)) * 1e-2
    if dups:
        s = torch.round(s * 300) / 300
    s = s * (torch.rand(rows, cols, generator=g) >= zeros)
    return s.cuda()


def torch_select(s, flags, capacity):
    """What plane_select must give: slots by a running count, the slot -> block list, counts."""
    f = flags.view(-1)
    n, total = f.numel(), int(f.sum())
    cap = n if capacity is None else capacity
    rank = f.long().cumsum(0) - 1
    slot = torch.where(f & (rank < cap), rank, -1).int().view(s.shape)
    idx = torch.full((cap,), -1, dtype=torch.int32, device=s.device)
    kept = f.nonzero().squeeze(1)[:cap].int()
    idx[:kept.numel()] = kept
    return slot, idx, [total, min(total, cap)]


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (64, 64), (256, 300), (40, 1100)])
@pytest.mark.parametrize("threshold", [2.5, 1.0, 0.0])
@pytest.mark.parametrize("dups", [False, True])
def test_select_median_matches_torch(shape, threshold, dups):
    """threshold 1.0 flags exactly the blocks above the median: any error in the radix select
    moves the count. Capacities: every block, the exact count, and half of it (overflow)."""
    from fallback_cuda import select_cuda
    s = scale_grid(*shape, seed=shape[0] + int(10 * threshold), dups=dups)
    flags = scale_flags(s, "median", threshold)
    total = int(flags.sum())
    for capacity in (None, total, total // 2):
        slot, idx, counts = select_cuda(s, "median", threshold, capacity)
        want_slot, want_idx, want_counts = torch_select(s, flags, capacity)
        assert counts.tolist() == want_counts
        assert torch.equal(slot, want_slot)
        assert torch.equal(idx, want_idx)


def test_select_all_zero_and_one_block():
    from fallback_cuda import select_cuda
    for s in (torch.zeros(4, 4, device="cuda"), torch.tensor([[0.5]], device="cuda")):
        slot, idx, counts = select_cuda(s, "median", 0.0, None)
        want_slot, want_idx, want_counts = torch_select(s, scale_flags(s, "median", 0.0), None)
        assert counts.tolist() == want_counts and torch.equal(slot, want_slot)


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.2, 1.0])
@pytest.mark.parametrize("dups", [False, True])
def test_select_topk(fraction, dups):
    """k = topk_count blocks, all nonzero, none smaller than an unflagged one; with distinct
    values exactly torch's topk set, with ties the first in block order."""
    from fallback_cuda import select_cuda
    s = scale_grid(97, 61, seed=int(100 * fraction), dups=dups)
    k = topk_count(fraction, s.numel())
    slot, idx, counts = select_cuda(s, "topk", fraction, k)
    flags = (slot >= 0).view(-1)
    v = s.view(-1)
    want = min(k, int((v > 0).sum()))
    assert counts.tolist() == [want, want] and int(flags.sum()) == want
    if 0 < want < v.numel():
        assert v[flags].min() >= v[~flags].max() and (v[flags] > 0).all()
    if not dups:
        assert torch.equal(flags.view(s.shape), scale_flags(s, "topk", fraction))
    else:                                               # ties at the cut: the first ones
        cut = v[flags].min() if want else None
        if cut is not None:
            ties = (v == cut).nonzero().squeeze(1)
            taken = flags[ties]
            assert torch.equal(taken, torch.sort(taken, descending=True).values)


def outlier_tensor(rows, cols, qblock, seed, dtype):
    """Gaussian with one 200x outlier in every 4th QB x QB block (where the block has rows)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    for b in range(0, -(-rows // qblock) * -(-cols // qblock), 4):
        bi, bj = divmod(b, -(-cols // qblock))
        r = min(rows - 1, bi * qblock + int(torch.randint(qblock, (1,), generator=g)))
        c = min(cols - 1, bj * qblock + int(torch.randint(qblock, (1,), generator=g)))
        x[r, c] *= 200
    return x.to(dtype).cuda()


@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [512, 300])             # 300: padding rows
def test_residual_plane_is_the_torch_plane(qblock, dtype, rows):
    """quantize_with_plane on CUDA (plane_select + plane_residual, source 'copy') gives the
    CPU reference's plane bit for bit: exact, with a roomy budget (spare slots), and
    overflowing. (The CPU: torch on CUDA divides by a scalar as a multiply by its reciprocal.)"""
    from fallback import plane_from_source
    x = outlier_tensor(rows, 520, qblock, seed=qblock + rows, dtype=dtype)
    got = quantize_with_plane(x, qblock, ("median", 2.5))
    assert got.flagged is not None                       # built by the kernels
    xc = x.cpu()
    flags = scale_flags(quantize(xc, qblock).s, "median", 2.5)
    n = int(flags.sum())
    assert 0 < n < flags.numel()
    for capacity in (None, n + 7, n // 2):
        want = add_second_plane(quantize(xc, qblock), flags,
                                gathered_blocks(pad_2d(xc, qblock), qblock), capacity)
        budget, budget2 = PlaneBudget(), PlaneBudget()
        if capacity is not None:
            budget.capacity = budget2.capacity = lambda n_blocks, c=capacity: c
        got = plane_from_source(quantize(x, qblock), Spec("median", 2.5, budget), "copy", x=x)
        # both layouts from one quantize pass, the plane transposed by the transpose kernel
        got2, got_t = quantize_with_plane(x, qblock, Spec("median", 2.5, budget2), with_t=True)
        want_t = transpose_ref(want)
        for name in ("q", "s", "slot", "q2", "s2"):
            assert torch.equal(getattr(got, name).cpu(), getattr(want, name)), (capacity, name)
            assert torch.equal(getattr(got2, name).cpu(), getattr(want, name)), (capacity, name)
            assert torch.equal(getattr(got_t, name).cpu(), getattr(want_t, name)), (capacity, name)
        assert got.flagged.tolist() == [n, n if capacity is None else min(n, capacity)]


@pytest.mark.parametrize("qblock,halves", [(32, 1), (32, 2), (64, 1), (64, 2), (128, 1)])
@pytest.mark.parametrize("rb,kb", [(13, 21), (64, 300), (130, 64)])
def test_plane_lists_kernel_is_plane_lists(qblock, halves, rb, kb):
    from fallback_cuda import plane_lists_cuda
    from int8_gemm_sm90_plane import plane_lists
    g = torch.Generator().manual_seed(qblock * halves + rb)
    per = 128 // qblock
    for p in (0.02, 0.3, 0.0):
        flags = torch.rand(rb, kb, generator=g) < p
        tiles = -(-rb // per)                      # some tiles with no flags: the order moves them
        light = torch.randperm(tiles, generator=g)[:tiles // 2]
        for t in light.tolist():
            flags[t * per:(t + 1) * per] = False
        flags[0, kb - 1] = True                    # at least one (then made outside q2)
        if p == 0.0:
            flags[rb - 1, 0] = True                # one in the last row block (maybe a short tile)
        n = int(flags.sum())
        slot = torch.full((rb, kb), -1, dtype=torch.int32)
        slot[flags] = torch.randperm(n, generator=g).int()
        slot[flags.nonzero()[0, 0], flags.nonzero()[0, 1]] = n + 3          # outside q2: none
        s2 = torch.rand(n, generator=g) + 0.5
        want = plane_lists(slot.cuda(), s2.cuda(), qblock, halves)
        got = plane_lists_cuda(slot.cuda(), s2.cuda(), qblock, halves)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and torch.equal(a, b)
