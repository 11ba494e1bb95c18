"""Fallback quantization: the rule's limits, the second plane, the mixed GEMM, the stats."""
import math

import pytest
import torch

import int8_gemm
from fallback import (RULES, FallbackConfig, PlaneBudget, flagged_fraction, mixed_gemm,
                      outlier_flags, quantize_fallback, quantize_out, quantize_with_plane)
from int8_gemm import plane_kernel
from int8_linear import gemm
from quantize import QTensor, dequantize, pad_2d, quantize
from tolerances import bound, magic_slack


def glu_like(rows, cols, frac=0.01, scale=300.0, seed=0):
    """Gaussian activations with sparse outliers 100-1000x the typical magnitude."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    mask = torch.rand(rows, cols, generator=g) < frac / 32
    return torch.where(mask, x.sign() * scale * (1 + torch.rand(rows, cols, generator=g)), x)


@pytest.mark.parametrize("rule", ["crest", "median"])
@pytest.mark.parametrize("qblock", [32, 128])
def test_threshold_inf_is_exactly_plain_int8(rule, qblock):
    x, w = glu_like(200, 256), torch.randn(96, 256)
    t, frac = quantize_fallback(x, qblock, rule, math.inf)
    assert frac == 0.0
    plain = quantize(x, qblock)
    assert torch.equal(t.q, plain.q) and torch.equal(t.s, plain.s)
    tw = quantize(w, qblock)
    assert torch.equal(mixed_gemm(t, tw), gemm(plain, tw))


@pytest.mark.parametrize("rule", ["crest", "median"])
@pytest.mark.parametrize("qblock", [32, 64, 128])
@pytest.mark.parametrize("outlier_scale", [10.0, 300.0])
def test_threshold_zero_matches_float_gemm(rule, qblock, outlier_scale):
    torch.manual_seed(1)
    x = glu_like(150, 256, scale=outlier_scale, seed=1)
    t, frac = quantize_fallback(x, qblock, rule, 0.0)
    assert frac == 1.0
    # the weight is exact in int8 here, so the error is the activation's two-plane rounding
    w_int = torch.randint(-127, 128, (96, 256)).float()
    tw = quantize(w_int, qblock)
    assert torch.equal(dequantize(tw), w_int)
    ref = x.double() @ w_int.double().t()

    def rel(c):
        return ((c.double() - ref).norm() / ref.norm()).item()
    err = rel(mixed_gemm(t, tw))
    # two planes bound each element's error by absmax(block) / 127 / 254 / 2: ~1e-5 of the
    # typical value for ordinary blocks, ~absmax/typical times more inside outlier blocks
    bf16 = rel(x.bfloat16().double() @ w_int.double().t())
    plain = rel(gemm(quantize(x, qblock), tw))
    assert err < plain / 50, (err, plain)
    if outlier_scale <= 10:
        assert err < 2e-4, f"relative error {err:.2e}"  # "~1e-4" (DESIGN §2)
    else:                     # 300-600x outliers: still more precise than bf16 operands
        assert err < bf16, f"relative error {err:.2e}, a bf16 GEMM's {bf16:.2e}"


def test_two_planes_carry_about_15_bits():
    x = glu_like(128, 128, seed=2)
    t, _ = quantize_fallback(x, 32, "crest", 0.0)
    s1 = quantize(x).s.repeat_interleave(32, 0).repeat_interleave(32, 1)
    err = (dequantize(t) - x).abs()
    assert (err <= s1 / 254 / 2 * 1.01 + 1e-12).all(), f"max err / s1 = {(err / s1).max():.2e}"


def test_flags_pick_the_outlier_blocks():
    torch.manual_seed(3)
    x = torch.randn(128, 128)
    x[5, 40] = 500.0                                  # block (0, 1)
    x[100, 3] = -800.0                                # block (3, 0)
    for rule in ("crest", "median"):
        flags = outlier_flags(pad_2d(x, 32), 32, rule, 8.0)
        assert flags.nonzero().tolist() == [[0, 1], [3, 0]], rule
    flags = outlier_flags(pad_2d(x, 32), 32, "topk", 2 / 16)
    assert flags.nonzero().tolist() == [[0, 1], [3, 0]]


def test_random_flag_patterns_match_dense_reference():
    """Any subset of flagged blocks: the mixed GEMM equals the float GEMM of the two-plane
    values, whatever the pattern (topk picks a different subset at each fraction)."""
    torch.manual_seed(4)
    x, w = glu_like(96, 160, frac=0.05, seed=4), torch.randn(64, 160)
    tw = quantize(w)
    W = dequantize(tw).double()
    for frac in (0.0, 0.1, 0.33, 0.5, 1.0):
        t, got = quantize_fallback(x, 32, "topk", frac)
        assert abs(got - round(frac * 15) / 15) < 1e-9
        ref = dequantize(t).double() @ W.t()
        c = mixed_gemm(t, tw).double()
        assert torch.allclose(c, ref, rtol=1e-5, atol=1e-3), frac


def test_fallback_on_b_operand_and_transpose():
    """wgrad uses the saved activation as the B operand, transposed: the plane goes along."""
    torch.manual_seed(5)
    x, dy = glu_like(64, 96, seed=5), torch.randn(64, 32)
    t, _ = quantize_fallback(x, 32, "crest", 4.0)
    tdy = quantize(dy)
    ref = dequantize(tdy).double().t() @ dequantize(t).double()
    assert torch.equal(dequantize(t.t()), dequantize(t).t())
    dw = gemm(tdy.t(), t.t()).double()
    assert torch.allclose(dw, ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("rule", ["crest", "median"])
def test_quantize_with_plane_with_t_gives_both_layouts(rule):
    """with_t: (t, t.t()) from one call, the plane transposed along (what the model's proj input
    takes: the forward GEMM's layout and the weight gradient's)."""
    x = glu_like(100, 160, seed=7)
    t = quantize_with_plane(x, 32, (rule, 3.0))
    a, at = quantize_with_plane(x, 32, (rule, 3.0), with_t=True)
    want = t.t()
    assert flagged_fraction(a) > 0
    for name in ("q", "s", "slot", "q2", "s2"):
        assert torch.equal(getattr(a, name), getattr(t, name)), name
        assert torch.equal(getattr(at, name), getattr(want, name)), name
    assert torch.equal(dequantize(at), dequantize(t).t())


def test_flagged_fraction_counted_right():
    x = torch.randn(70, 100)                          # 3 x 4 = 12 logical blocks
    x[0, 0] = 1e3
    x[69, 99] = 1e3
    t, frac = quantize_fallback(x, 32, "median", 8.0)
    assert frac == 2 / 12 and flagged_fraction(t) == 2 / 12
    assert t.q2.shape == (2, 32, 32) and t.s2.shape == (2,)
    assert (t.slot >= 0).sum() == 2
    assert flagged_fraction(quantize(x)) == 0.0


def test_config_records_stats_and_validates():
    fb = FallbackConfig(True, "crest", 8.0)
    x = glu_like(64, 64, frac=0.5, seed=6)
    fb.quantize(x, 32, "h.0.attn.c_proj")
    assert 0 < fb.fractions()["h.0.attn.c_proj"] <= 1
    assert quantize_out(x, 32, fb.spec_for("h.0.mlp.c_proj")).has_fallback
    assert not quantize_out(x, 32, None).has_fallback
    off = FallbackConfig(False)
    assert off.spec_for("a") is None and not off.quantize(x, 32, "a").has_fallback and off.stats == {}
    with pytest.raises(ValueError, match="unknown fallback rule"):
        FallbackConfig(True, "magic")
    with pytest.raises(ValueError, match="fraction"):
        quantize_fallback(x, 32, "topk", 2.0)
    with pytest.raises(ValueError, match=">= 0"):
        quantize_fallback(x, 32, "crest", -1.0)
    assert set(RULES) == {"crest", "median", "topk"}


@pytest.mark.parametrize("out", ["float", "int8"])
def test_gemm_over_plane_pairs_equals_reference(out):
    """The CUDA interim for fallback operands: plain GEMMs over plane pairs, summed. On the CPU
    the plain GEMM is the reference, so the composition is checked here."""
    from int8_gemm import gemm_planes, gemm_ref
    x, dy = glu_like(96, 160, frac=0.01, seed=7), torch.randn(96, 64)
    t, frac = quantize_fallback(x, 32, "median", 2.0)
    assert 0 < frac < 1
    tw = quantize(torch.randn(64, 160))
    got = gemm_planes(t, tw, out, torch.float32, None, None, None, gemm_ref)
    ref = gemm_ref(t, tw, out)
    if out == "float":
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-4)
    else:
        assert torch.allclose(dequantize(got), dequantize(ref), rtol=1e-5, atol=1e-2)
    # the wgrad layout: the plane on the B operand, transposed
    tdy = quantize(dy)
    got = gemm_planes(tdy.t(), t.t(), "float", torch.float32, None, None, None, gemm_ref)
    assert torch.allclose(got, gemm_ref(tdy.t(), t.t()), rtol=1e-5, atol=1e-4)
    nothing, _ = quantize_fallback(x, 32, "median", math.inf)     # no flagged block: one plane
    assert torch.equal(gemm_planes(nothing, tw, "float", torch.float32, None, None, None,
                                   gemm_ref), gemm_ref(quantize(x), tw))


@pytest.mark.gpu
def test_fallback_gemm_on_cuda_matches_reference():
    """The GEMM of the two-plane operand within the rounding of the kernel gemm() picks (on
    Hopper with few blocks flagged, the magic-number promotion of the plain K-blocks)."""
    x, w = glu_like(300, 256, frac=0.01, seed=8), torch.randn(96, 256)
    t, frac = quantize_fallback(x.cuda(), 32, "median", 2.5)
    tw = quantize(w.cuda())
    assert frac > 0
    c = mixed_gemm(t, tw)
    ref = dequantize(t).double() @ dequantize(tw).double().t()
    kernel = plane_kernel(t, tw, int8_gemm._auto_kernel(0))
    tol = 2e-6 * bound(t, tw) + magic_slack(t, tw, kernel)
    assert ((c.double() - ref).abs() <= tol).all()


@pytest.mark.parametrize("flagged,kernel", [(0.25, "wgmma"), (0.26, "wgmma_exact")])
def test_plane_kernel_keeps_the_magic_promotion_for_small_planes(flagged, kernel):
    """gemm() runs a fused plane on the magic-number promotion up to MAGIC_PLANE_MAX of the
    blocks (q2's size: the count or the budget's capacity), the exact one above."""
    t = quantize(torch.randn(320, 320))                                     # 100 blocks
    n = int(flagged * 100)
    slot = torch.full((10, 10), -1, dtype=torch.int32)
    slot.view(-1)[:n] = torch.arange(n, dtype=torch.int32)
    planed = QTensor(t.q, t.s, t.shape, 32, slot, torch.zeros(n, 32, 32, dtype=torch.int8),
                     torch.ones(n))
    assert plane_kernel(planed, t, "wgmma") == kernel
    assert plane_kernel(t, planed, "wgmma") == kernel                      # the plane on B
    assert plane_kernel(planed, t, "mma") == "mma"


def test_crest_ignores_the_zero_padding():
    """An edge block with 4 real columns must score like a full block of the same data."""
    torch.manual_seed(9)
    x = torch.randn(256, 36)                          # last block column: 4 real of 32
    t, frac = quantize_fallback(x, 32, "crest", 6.0)
    assert frac == 0.0, frac
    flags = outlier_flags(pad_2d(x, 32), 32, "crest", 6.0)
    assert flags[:, 1].any()                          # what counting the padding would do


@pytest.mark.parametrize("qblock", [32, 64, 128])
def test_flagged_stage_list(qblock):
    """The fused GEMM's per-tile list of K-stages holding a flagged block (built without a host
    sync, in int8_gemm_sm90_plane.py) against a loop over tiles and stages."""
    from int8_gemm_sm90_plane import flagged_stages
    g = torch.Generator().manual_seed(qblock)
    s2 = (torch.rand(13, 21, generator=g) < 0.05).float() * torch.rand(13, 21, generator=g)
    stages, count = flagged_stages(s2, qblock)
    per = 128 // qblock                                    # blocks per tile side / per stage
    assert stages.dtype == count.dtype == torch.int32
    assert stages.shape == (-(-13 // per), -(-21 // per)) and count.shape == (stages.shape[0],)
    for tile in range(stages.shape[0]):
        want = [ks for ks in range(stages.shape[1])
                if (s2[tile * per:(tile + 1) * per, ks * per:(ks + 1) * per] != 0).any()]
        assert count[tile] == len(want) and stages[tile, :len(want)].tolist() == want


@pytest.mark.parametrize("qblock,halves", [(32, 1), (64, 1), (128, 1), (32, 2), (64, 2)])
def test_flagged_kblock_list(qblock, halves):
    """The fused GEMM's lists of K-blocks holding a flagged block, per 128-row tile or per 64-row
    half, from the compact plane's slot grid (int8_gemm_sm90_plane.py), against a loop over rows and
    K-blocks."""
    from int8_gemm_sm90_plane import flagged_kblocks
    g = torch.Generator().manual_seed(qblock + halves)
    flags = torch.rand(13, 21, generator=g) < 0.05
    slot = torch.full((13, 21), -1, dtype=torch.int32)
    slot[flags] = torch.randperm(int(flags.sum()), generator=g).int()
    listed, count = flagged_kblocks(slot, qblock, halves)
    tiles, per = -(-13 // (128 // qblock)), 128 // qblock // halves      # row blocks per list
    assert listed.dtype == count.dtype == torch.int32
    assert listed.shape == (tiles * halves, 21) and count.shape == (tiles * halves,)
    for i in range(tiles * halves):
        want = [kb for kb in range(21) if flags[i * per:(i + 1) * per, kb].any()]
        assert count[i] == len(want) and listed[i, :len(want)].tolist() == want


@pytest.mark.parametrize("qblock,halves", [(32, 1), (32, 2), (64, 2), (128, 1)])
def test_plane_lists_gather_slots_and_scales(qblock, halves):
    """What the fused kernel reads per list entry: the slot and scale of each of the list's row
    blocks in the listed K-block (-1 / 0 where none, and for a slot outside q2)."""
    from int8_gemm_sm90_plane import plane_lists
    g = torch.Generator().manual_seed(qblock * halves)
    flags = torch.rand(13, 21, generator=g) < 0.1
    n = int(flags.sum())
    slot = torch.full((13, 21), -1, dtype=torch.int32)
    slot[flags] = torch.randperm(n, generator=g).int()
    slot[flags.nonzero()[0, 0], flags.nonzero()[0, 1]] = n + 3          # outside q2: none
    s2 = torch.rand(n, generator=g) + 0.5
    listed, count, slots, scales, _ = plane_lists(slot, s2, qblock, halves)
    rl = 128 // qblock // halves                                          # row blocks per list
    assert slots.shape == scales.shape == listed.shape + (rl,)
    for i in range(listed.shape[0]):
        for e in range(listed.shape[1]):
            for r in range(rl):
                row, kb = i * rl + r, listed[i, e]
                want = int(slot[row, kb]) if row < 13 and 0 <= slot[row, kb] < n else -1
                assert slots[i, e, r] == want
                assert scales[i, e, r] == (s2[want] if want >= 0 else 0.0)
        assert all((slots[i, e] >= 0).any() == (e < count[i]) for e in range(listed.shape[1]))


@pytest.mark.parametrize("qblock,halves", [(32, 1), (32, 2), (128, 1)])
def test_plane_lists_order_puts_tiles_with_a_plane_first(qblock, halves):
    """The order the GEMM's CTAs take the plane operand's 128-row tiles in: those with a listed
    K-block first, then the rest, each ascending (flags in tiles 1, 4 and 6 of 8)."""
    from int8_gemm_sm90_plane import plane_lists
    per = 128 // qblock
    slot = torch.full((8 * per, 5), -1, dtype=torch.int32)
    for i, tile in enumerate((6, 1, 4)):
        slot[tile * per + per - 1, i] = i                    # the tile's last row block
    *_, order = plane_lists(slot, torch.ones(3), qblock, halves)
    assert order.tolist() == [1, 4, 6, 0, 2, 3, 5, 7]
    *_, order = plane_lists(torch.full((3 * per, 5), -1, dtype=torch.int32), torch.ones(1),
                            qblock, halves)
    assert order.tolist() == [0, 1, 2]                       # nothing flagged: tile order


def test_median_nonzero_is_torch_median_of_the_nonzero_values():
    from fallback import median_nonzero
    g = torch.Generator().manual_seed(4)
    for n in (1, 2, 7, 64):
        v = torch.rand(n, generator=g) * (torch.rand(n, generator=g) > 0.3)
        nz = v[v > 0]
        want = nz.median() if nz.numel() else torch.tensor(1.0)
        assert median_nonzero(v).item() == want.item()


# ---------------------------------------------------------------------------------------------
# sizing the plane without a host sync (PlaneBudget)

def planes_of(t):
    """The plane as the GEMM sees it: per block, its residual values (zero where unflagged)."""
    QB = t.qblock
    d = torch.zeros(t.slot.numel(), QB, QB)
    used = t.slot.view(-1) >= 0
    d[used] = t.q2[t.slot.view(-1)[used].long()].float() * t.s2[t.slot.view(-1)[used].long()][:, None, None]
    return d


def test_capacity_holds_the_exact_plane_with_spare_slots():
    from fallback import Spec, quantize_with_plane
    x = glu_like(200, 320, frac=0.01, seed=10)     # 12 of 70 blocks flagged
    exact = quantize_with_plane(x, 32, ("median", 2.5))
    n = exact.q2.shape[0]
    assert 0 < n < 40
    budget = PlaneBudget()
    budget.observe(n, None)                           # as if an earlier call had counted n
    roomy = quantize_with_plane(x, 32, Spec("median", 2.5, budget))
    assert roomy.q2.shape[0] == math.ceil(1.5 * n + 70 / 64) > n and budget.overflows == 0
    assert torch.equal(roomy.slot >= 0, exact.slot >= 0)
    assert torch.equal(planes_of(roomy), planes_of(exact))
    assert torch.equal(dequantize(roomy), dequantize(exact))
    spare = torch.ones(roomy.q2.shape[0], dtype=torch.bool)
    spare[roomy.slot[roomy.slot >= 0].long()] = False
    assert spare.sum() == roomy.q2.shape[0] - n
    assert (roomy.q2[spare] == 0).all() and (roomy.s2[spare] == 0).all()
    tw = quantize(torch.randn(64, 320))
    assert torch.equal(mixed_gemm(roomy, tw), mixed_gemm(exact, tw))


def test_overflow_keeps_the_first_flags_and_grows_the_budget():
    from fallback import Spec, quantize_with_plane
    x = glu_like(256, 256, frac=0.01, seed=11)     # 15 of 64 flagged
    exact = quantize_with_plane(x, 32, ("median", 1.5))
    n = exact.q2.shape[0]
    budget = PlaneBudget()
    budget.observe(4, None)                           # an earlier call flagged only 4
    cap = budget.capacity(64)
    assert cap == 7 < n                               # 1.5 x 4 + 64 / 64
    small = quantize_with_plane(x, 32, Spec("median", 1.5, budget))
    kept = small.slot >= 0
    assert small.q2.shape[0] == cap and kept.sum() == cap
    assert budget.overflows == 1 and budget.dropped == n - cap
    first = (exact.slot >= 0) & (exact.slot < cap)    # exact slots are in block order too
    assert torch.equal(kept, first) and torch.equal(small.slot[kept], exact.slot[kept])
    assert torch.equal(small.q2, exact.q2[:cap]) and torch.equal(small.s2, exact.s2[:cap])
    assert budget.capacity(64) == math.ceil(1.5 * n + 1)  # the count it saw


def test_budget_capacity_decay_and_exact_first_call():
    b = PlaneBudget()
    assert b.capacity(1000) is None                   # nothing seen: count exactly
    b.observe(100, None)
    assert b.capacity(6400) == 250 and b.capacity(80) == 80   # 1.5 x 100 + 6400 / 64
    b.observe(torch.tensor(0), 250)                   # a CPU tensor count: read at once
    assert b.capacity(6400) == math.ceil(1.5 * 98 + 100)      # the peak decays 2% a call
    z = PlaneBudget()
    z.observe(0, None)
    assert z.capacity(1000) == 0                      # nothing flagged yet: no plane
    x = glu_like(128, 128, frac=0.01, seed=15)
    from fallback import Spec, quantize_with_plane
    t = quantize_with_plane(x, 32, Spec("median", 2.5, z))
    assert not t.has_plane and (t.slot < 0).all() and z.overflows == 1 and z.dropped > 0
    assert z.capacity(1000) > 0                       # ... until a count says otherwise


def test_threshold_inf_and_topk_need_no_count():
    """Sizes the host knows without counting: inf (no plane at all) and topk (its k)."""
    from fallback import Spec, quantize_with_plane
    x = glu_like(128, 128, seed=12)
    budget = PlaneBudget()
    t = quantize_with_plane(x, 32, Spec("median", math.inf, budget))
    assert t.q2.shape[0] == 0 and not t.has_plane and budget.peak is None
    t = quantize_with_plane(x, 32, Spec("topk", 0.25, budget))
    assert t.q2.shape[0] == 4 and (t.slot >= 0).sum() == 4 and budget.peak is None


def test_config_budgets_per_call_site_and_device_stats():
    fb = FallbackConfig(True, "median", 2.5)
    x = glu_like(128, 256, frac=0.01, seed=13)
    for _ in range(3):
        fb.quantize(x, 32, "a")
        fb.quantize(x[:64], 32, "b")
    assert set(fb.budgets) == {"a", "b"} and fb.budgets["a"] is not fb.budgets["b"]
    assert torch.is_tensor(fb.stats["a"][0])          # no host sync to record it
    fr = fb.fractions()
    assert fr["a"] == flagged_fraction(quantize_fallback(x, 32, "median", 2.5)[0]) > 0
    assert fb.overflows() == (0, 0)


@pytest.mark.gpu
def test_budget_reads_the_count_back_without_waiting():
    """On CUDA the count comes back through pinned memory and an event: after the first (exact)
    call, the steady state sizes q2 from it, equal to the exact plane, with no host sync."""
    from fallback import Spec, quantize_with_plane
    x = glu_like(512, 512, frac=0.005, seed=14).cuda()     # 32 of 256 flagged
    exact = quantize_with_plane(x, 32, ("median", 2.5))
    budget = PlaneBudget()
    quantize_with_plane(x, 32, Spec("median", 2.5, budget))      # exact, counted on the host
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            t = quantize_with_plane(x, 32, Spec("median", 2.5, budget))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert t.q2.shape[0] >= exact.q2.shape[0] and budget.overflows == 0
    assert torch.equal(dequantize(t), dequantize(exact))


def test_captured_counts_are_read_after_a_replay():
    """Inside a CUDA graph capture a budget keeps its call's device count (cuda_graph.py);
    read_captured() learns every count in one read and says when one outgrew its capacity."""
    fb = FallbackConfig(enabled=True)
    a, b = fb.spec_for("a").budget, fb.spec_for("b").budget
    assert fb.read_captured() is False                    # nothing captured yet
    a.captured, b.captured = (torch.tensor(3), 4), (torch.tensor(9, dtype=torch.int32), 6)
    assert fb.read_captured() is True                     # b: 9 flagged blocks, room for 6
    assert (a.peak, b.peak) == (3, 9) and (a.overflows, b.overflows) == (0, 1)
    assert fb.overflows() == (1, 3)
    b.captured = (torch.tensor(5), 6)
    assert fb.read_captured() is False and b.peak == 9 * PlaneBudget.DECAY
    fb.flush()                                            # a new capture starts from scratch
    assert a.captured is None and b.captured is None and fb.read_captured() is False
