"""
Fallback quantization: 16-bit precision for the few activation blocks that hold outliers.

Per-block INT8 breaks on GLU transformers (SwiGLU, as in Llama): their activations carry large,
sparse, irregular outliers, and one outlier in a 32x32 block sets the block's scale so high that
its other 1023 values round to a handful of levels. Fallback Quantization (Zhang et al. 2025,
arXiv 2503.08040) keeps most blocks in INT8 and falls back to higher precision for the blocks
that contain outliers. Here a flagged block keeps a second int8 plane, the quantized residual:

    x  ~=  q1 * s1  +  q2 * s2          q1, s1: the plain block (quantize.py)
    r   =  x - q1 * s1                  |r| <= s1 / 2
    s2  =  absmax(r) / 127,  q2 = round(r / s2)

so a flagged block carries about 15 bits (error <= s2/2 <= s1/508). The GEMM adds the second
plane's product only for flagged (row-block, K-block) pairs, so its cost grows with the flagged
fraction, not with the tensor.

The rule (one function, `outlier_scores`; the flag is score > threshold; selected by name):
    'median'  (default, threshold 2.5) absmax(block) / median over the tensor of the nonzero
              block absmaxes: how far the block stands above the tensor's typical block. Its
              order is the block absmax, which is the order of the block's int8 error.
    'crest'   absmax(block) / rms(block): how far the largest value stands above the block's
              typical value. Gaussian blocks score ~3.5; a block with one 100x outlier ~30.
              Blind to outlier channels (a full 32-row column caps it at sqrt(32) = 5.7), and
              high in every block of a heavy-tailed tensor (SwiGLU outputs: median ~10).
    'topk'    flag the `threshold` fraction (0..1) of blocks with the largest absmax: a fixed
              budget, whatever the data (here threshold is a fraction, not a score).
The threshold is dynamic in the sense the paper needs: every score is relative to the live
tensor (its own blocks, or the tensor's median), computed each step. Limits that the tests
hold: threshold = inf flags nothing and is exactly plain per-block INT8; threshold = 0 flags
every nonzero block ('crest', 'median') and the GEMM then matches a float GEMM to ~1e-4.
The default is chosen by measurement: study_fallback.py, results/fallback_rule_study.md
(median/2.5 flags ~3% of the SwiGLU down-projection input of a trained model, catches every
100-1000x outlier block and every 20-50x outlier channel of synthetic data; crest/12 flagged
27% of those SwiGLU blocks and none of the channel blocks).

The second plane is stored compactly, in proportion to the flagged fraction (QTensor fields):
    slot (R/QB, C/QB) int32    -1 for a plain block, else the block's index in q2 / s2
    q2   (n_flagged, QB, QB)   int8 residual blocks
    s2   (n_flagged,)          fp32 residual scales

On CUDA fallback_cuda.py's kernels build the plane (through plane_from_source: the median,
flags and slots from the scale grid, then the residual of the flagged blocks recomputed from
the op's inputs); the torch functions here are the reference, and the path on the CPU.
"""
import math
from typing import NamedTuple, Optional

import torch

from quantize import (QMAX, QTensor, as_2d, block_absmax, blocks, capturing, check_finite,
                      check_float, dequantize, on_cuda, pad_2d, quantize, with_transposed_plane)

RULES = ("crest", "median", "topk")
DEFAULT_RULE = "median"
DEFAULT_THRESHOLD = 2.5


# ---------------------------------------------------------------------------------------------
# the rule

def outlier_scores(xp, qblock, rule, logical=None):
    """Score of every block of a padded 2-D fp32 tensor: (R/QB, C/QB). Flag = score > threshold.
    logical = (rows, cols) before padding: the block rms counts real elements only."""
    amax = block_absmax(xp, qblock)                                # (R/QB, C/QB)
    if rule == "crest":
        R, C = xp.shape
        rows, cols = logical if logical is not None else (R, C)
        r = (rows - torch.arange(0, R, qblock, device=xp.device)).clamp(0, qblock)
        c = (cols - torch.arange(0, C, qblock, device=xp.device)).clamp(0, qblock)
        count = (r[:, None] * c[None, :]).clamp_min(1)             # real elements per block
        rms = (blocks(xp, qblock).square().sum(dim=(1, 3)) / count).sqrt()
        return amax / rms.clamp_min(1e-30)
    if rule in ("median", "topk"):
        return amax / median_nonzero(amax)
    raise ValueError(f"unknown fallback rule {rule!r}; choose one of {RULES}")


def median_nonzero(v):
    """torch.median (the lower middle value) of the nonzero entries of v >= 0, or 1 if there are
    none: sorted, the m nonzero entries are the last m of n, so their lower median sits at
    n - m + (m - 1) // 2 = (2n - 1 - m) // 2, a gather at a computed index (n - 1, a zero, when
    m = 0). No boolean indexing, hence no host sync (v[v > 0].median() would wait on the GPU)."""
    srt = v.flatten().sort().values
    n = srt.numel()
    idx = (2 * n - 1 - torch.count_nonzero(srt)) // 2               # a device tensor
    med = srt.gather(0, idx.view(1)).squeeze(0)
    return torch.where(med > 0, med, 1.0)


def outlier_flags(xp, qblock, rule=DEFAULT_RULE, threshold=DEFAULT_THRESHOLD, logical=None):
    """Boolean (R/QB, C/QB) grid of blocks that fall back to two planes."""
    return flags_from_scores(outlier_scores(xp, qblock, rule, logical), rule, threshold)


def scale_scores(s, rule=DEFAULT_RULE):
    """The 'median' and 'topk' scores read off a quantized tensor's scale grid alone: s is the
    block absmax / 127, so s / median(s) is absmax / median absmax, and no float pass is needed.
    ('crest' needs each block's rms, i.e. the floats: outlier_scores.)"""
    if rule == "crest":
        raise ValueError("the 'crest' rule needs the float tensor (outlier_flags), not scales")
    return s / median_nonzero(s)


def scale_flags(s, rule=DEFAULT_RULE, threshold=DEFAULT_THRESHOLD):
    """Boolean flags from a scale grid (scale_scores)."""
    return flags_from_scores(scale_scores(s, rule), rule, threshold)


def flags_from_scores(scores, rule, threshold):
    if rule == "topk":
        k = topk_count(threshold, scores.numel())
        flags = torch.zeros_like(scores, dtype=torch.bool)
        if k > 0:
            flags.view(-1)[scores.view(-1).topk(k).indices] = True
        return flags & (scores > 0)
    check_threshold(threshold)
    return scores > threshold


def check_threshold(threshold):
    """The 'crest' and 'median' thresholds: a score, >= 0 (inf flags nothing)."""
    if not threshold >= 0:
        raise ValueError(f"fallback threshold must be >= 0, got {threshold}")


def topk_count(fraction, n_blocks):
    """How many blocks the 'topk' rule flags at most (known on the host: no sync)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the 'topk' rule takes a fraction in [0, 1], got {fraction}")
    return int(round(fraction * n_blocks))


# ---------------------------------------------------------------------------------------------
# the second plane

def add_second_plane(t, flags, blocks_of, capacity=None):
    """Attach the residual plane of the flagged blocks to QTensor t. blocks_of(bi, bj) returns
    the float values of blocks (bi[n], bj[n]) as (n, QB, QB) fp32, zero in the padding: only the
    flagged blocks are ever read or computed (gathered_blocks, or an op's recompute).

    capacity = None sizes q2 exactly: one host sync (nonzero) to count the flags. An int sizes
    q2 at `capacity` blocks with no sync (PlaneBudget): the flagged blocks take the slots in
    block order, as nonzero would give them; spare slots hold zeros that no slot entry points
    at, and flagged blocks past the capacity (an overflow) stay plain int8."""
    QB = t.qblock
    Rb, Cb = flags.shape
    n, dev = flags.numel(), t.q.device
    f = flags.view(-1)
    if capacity == 0:                                  # nothing can be flagged, or no room
        return empty_plane(t)
    if capacity is None:
        idx = f.nonzero().squeeze(1)                   # the host sync: n_flagged sizes q2
        used = None
    else:
        # the k-th flagged block goes to slot k (a running count), those past the capacity to
        # a dump entry; slots no block reaches keep the index n, "none"
        rank = f.cumsum(0) - 1
        dest = torch.where(f & (rank < capacity), rank, capacity)
        idx = torch.full((capacity + 1,), n, dtype=torch.long, device=dev)
        idx = idx.scatter_(0, dest, torch.arange(n, device=dev))[:capacity]
        used = idx < n
    src = idx if used is None else idx.clamp_max(n - 1)   # spare slots read block n-1, unused
    bi, bj = src // Cb, src % Cb
    qb = t.q.view(Rb, QB, Cb, QB)[bi, :, bj, :]                    # (k, QB, QB) int8
    rb = blocks_of(bi, bj) - qb.float() * t.s[bi, bj][:, None, None]   # |r| <= s1/2
    amax = rb.abs().amax(dim=(1, 2))                               # (k,)
    if used is not None:
        amax = amax * used                                         # spare slots: s2 = 0, q2 = 0
    inv = torch.where(amax > 0, QMAX / amax.clamp_min(1e-38), torch.zeros_like(amax))
    t.q2 = torch.round(rb * inv[:, None, None]).clamp(-QMAX, QMAX).to(torch.int8)
    t.s2 = (amax / QMAX).contiguous()
    k = torch.arange(idx.numel(), dtype=torch.int32, device=dev)
    slot = torch.full((n + 1,), -1, dtype=torch.int32, device=dev)   # [n]: the spares' dump
    slot[idx] = k if used is None else torch.where(used, k, -1)
    t.slot = slot[:n].view(flags.shape)
    return t


def empty_plane(t):
    """Give t a second plane with no room: every block plain (exactly plain int8)."""
    QB, dev = t.qblock, t.q.device
    t.q2 = torch.empty((0, QB, QB), dtype=torch.int8, device=dev)
    t.s2 = torch.empty((0,), dtype=torch.float32, device=dev)
    t.slot = torch.full(t.s.shape, -1, dtype=torch.int32, device=dev)
    return t


def gathered_blocks(xp, qblock):
    """blocks_of for a padded 2-D tensor: its blocks (bi, bj) as (n, QB, QB) fp32, a gather
    (a view of xp's blocks when xp is contiguous), never a pass over the tensor."""
    view = xp.reshape(xp.shape[0] // qblock, qblock, xp.shape[1] // qblock, qblock)
    return lambda bi, bj: view[bi, :, bj, :].float()


def dequantized_blocks(t):
    """blocks_of for a plain QTensor: its blocks (bi, bj) dequantized, (n, QB, QB) fp32."""
    QB = t.qblock
    Rb, Cb = t.s.shape
    view = t.q.view(Rb, QB, Cb, QB)
    return lambda bi, bj: view[bi, :, bj, :].float() * t.s[bi, bj][:, None, None]


# ---------------------------------------------------------------------------------------------
# sizing the plane without a host sync

class PlaneBudget:
    """Room for the second plane of one call site (one activation of one layer), so that sizing
    q2 needs no host sync in the steady state.

    Counting the flags on the host (nonzero) makes the CPU wait for the GPU once per
    fallback-quantized tensor, and the GPU then idles while the CPU queues the next work (a
    GPT-2 block at width 2048: 12.1 ms of wall time for 7.9 ms of kernels per step). Instead
    each call site sizes q2 from the flag count of its previous call (a step earlier), copied
    to pinned host memory behind an event. By the time the site is called again the copy has
    long landed (train.py reads the loss every step), so reading it does not stall; if it has
    not, the read waits for it, so that the capacities, and so the results, do not depend on
    timing. Capacity = HEADROOM x the recent peak count + SLACK of the tensor's blocks (counts
    of a few blocks jump by more than 1.5x: without the slack ~0.5% of calls overflowed in a
    Llama run). The first call counts exactly; a site that has flagged nothing yet gets no
    plane (capacity 0: its GEMMs run plain). A call that flags more blocks than its capacity
    keeps the first ones (block order) in two planes and the rest in plain int8; `overflows`
    counts such calls (`dropped`, those blocks), and the next capacity covers the count. The
    state goes into checkpoints, so a resumed run sizes its planes as the straight run would.

    Inside a CUDA graph capture (cuda_graph.py) the capacity is fixed for every replay and the
    count stays on the device: observe() keeps the tensor, and FallbackConfig.read_captured()
    reads all of them after a replay (read_captured), telling the caller to re-capture when one
    outgrew its capacity."""

    HEADROOM = 1.5                  # capacity over the recent peak count
    SLACK = 1 / 64                  # plus this fraction of the tensor's blocks (small counts jump)
    DECAY = 0.98                    # the recent peak forgets 2% a call

    def __init__(self, peak=None, overflows=0, dropped=0):
        self.peak = peak            # recent peak count (float), None before the first count
        self.overflows = overflows  # calls that flagged more blocks than their capacity
        self.dropped = dropped      # flagged blocks those calls left in plain int8
        self._readback = None       # (pinned host int64, CUDA event), made at the first count
        self._waiting = None        # (capacity,) of the count in flight, None when none is
        self.waits = 0              # reads that had to wait for the GPU (a diagnostic)
        self.captured = None        # (device count, capacity) of the call in a CUDA graph

    def capacity(self, n_blocks):
        """q2's size for a tensor of n_blocks blocks, or None: count exactly (one sync)."""
        self._read()
        if self.peak is None:
            if capturing():
                raise RuntimeError("a fallback call site is first called inside a CUDA graph "
                                   "capture: run a step eagerly first, so its budget has a count")
            return None
        if self.peak == 0:
            return 0
        return min(n_blocks, math.ceil(self.HEADROOM * self.peak + self.SLACK * n_blocks))

    def observe(self, count, capacity):
        """count: this call's flagged blocks, an int or a 0-d tensor (a CUDA one is copied back
        asynchronously); capacity: the size q2 had (None: exact)."""
        if not torch.is_tensor(count) or not count.is_cuda:
            self._update(int(count), capacity)
            return
        if capturing():    # every replay rewrites this tensor
            self.captured = (count, capacity)
            return
        self._read()                                   # (a count still unread: the last call's)
        if self._readback is None or self._readback[0].dtype != count.dtype:
            # (the host copy has the count's dtype: a converting copy would not be async)
            self._readback = (torch.empty((), dtype=count.dtype, pin_memory=True),
                              torch.cuda.Event())
        host, event = self._readback
        host.copy_(count, non_blocking=True)
        event.record()
        self._waiting = (capacity,)

    def state(self):
        self._read()
        return self.peak, self.overflows, self.dropped

    def read_captured(self, count):
        """Learn from a replay's count of the captured call (read by FallbackConfig); True when
        it did not fit the captured capacity."""
        capacity = self.captured[1]
        self._update(count, capacity)
        return count > capacity

    def _read(self):
        if self._waiting is not None:
            host, event = self._readback
            if not event.query():                      # not landed yet (rare): wait for it
                self.waits += 1
                event.synchronize()
            self._update(int(host), *self._waiting)
            self._waiting = None

    def _update(self, count, capacity):
        if capacity is not None and count > capacity:
            self.overflows += 1
            self.dropped += count - capacity
        self.peak = count if self.peak is None else max(count, self.DECAY * self.peak)


class Spec(NamedTuple):
    """What an op that quantizes its output with a fallback plane takes (a plain
    (rule, threshold) pair works too): the rule, its threshold, and the call site's budget
    (None: size the plane exactly, one host sync)."""
    rule: str = DEFAULT_RULE
    threshold: float = DEFAULT_THRESHOLD
    budget: Optional[PlaneBudget] = None


def plane_capacity(spec, n_blocks):
    """q2's size for a tensor of n_blocks blocks, known on the host where that needs no sync:
    0 when nothing can be flagged (threshold = inf: exactly plain int8), 'topk''s k, the call
    site's PlaneBudget; None otherwise (count exactly: one host sync)."""
    rule, threshold, budget = Spec(*spec)
    if rule != "topk" and math.isinf(threshold):
        return 0
    if rule == "topk":
        return topk_count(threshold, n_blocks)
    return budget.capacity(n_blocks) if budget is not None else None


def _budgeted(spec):
    """The PlaneBudget that learns from this call's flag count, or None."""
    rule, threshold, budget = Spec(*spec)
    return budget if rule != "topk" and not math.isinf(threshold) else None


def plane_with_flags(t, flags, blocks_of, spec):
    """add_second_plane with q2 sized by plane_capacity (no host sync where it can)."""
    capacity = plane_capacity(spec, flags.numel())
    add_second_plane(t, flags, blocks_of, capacity)
    budget = _budgeted(spec)
    if budget is not None:
        budget.observe(t.q2.shape[0] if capacity is None else flags.sum(), capacity)
    return t


def plane_from_source(t, spec, source, **tensors):
    """The second plane of a CUDA kernel's int8 output t built by fallback_cuda.py's kernels,
    no torch op in between: flags and slots from t's scales (plane_select), the flagged blocks'
    float values recomputed from the op's inputs `tensors` by `source` and their residual
    quantized (plane_residual). The same plane as plane_with_flags(t, scale_flags(...)) where
    the values are the same (source 'copy' of quantize_with_plane). t.flagged keeps the device
    counts (flagged, with a slot) for FallbackConfig.record."""
    from fallback_cuda import residual_cuda, select_cuda
    rule, threshold, _ = Spec(*spec)
    capacity, budget = plane_capacity(spec, t.s.numel()), _budgeted(spec)
    if capacity == 0 and budget is None:
        return empty_plane(t)
    slot, idx, counts = select_cuda(t.s, rule, threshold, capacity)
    if capacity is None:
        idx = idx[:int(counts[0])]                 # the host sync of an exact count
    t.q2, t.s2 = residual_cuda(t, idx, source, **tensors)
    t.slot, t.flagged = slot, counts
    if budget is not None:
        budget.observe(idx.numel() if capacity is None else counts[0], capacity)
    return t


def on_kernels(t, spec):
    """True when t's plane can be built by plane_from_source: a CUDA tensor, a rule read off
    the scales."""
    return spec[0] != "crest" and on_cuda(t.q)


def attach_plane(t, fallback, blocks_of, source=None, **tensors):
    """How an op gives its plain int8 output t (from a kernel) the fallback plane: flags from
    t's scales ('median', 'topk'), and the float values of the flagged blocks alone, which the
    op recomputes from its inputs: on CUDA by the residual kernel's `source` from `tensors`
    (plane_from_source), else by blocks_of (torch). Returns t."""
    if source is not None and on_kernels(t, fallback):
        return plane_from_source(t, fallback, source, **tensors)
    rule, threshold, _ = Spec(*fallback)
    flags = flags_from_scores(scale_scores(t.s, rule), rule, threshold)
    return plane_with_flags(t, flags, blocks_of, fallback)


def plane_from_scales(fallback):
    """True when an op's kernel output can take its fallback plane through attach_plane: no
    fallback, or a rule that reads the scales ('crest' runs the op's torch reference)."""
    return fallback is None or fallback[0] != "crest"


def quantize_with_plane(x, qblock, fallback, stochastic=False, generator=None, with_t=False):
    """Quantize x and give its outlier blocks a second plane; fallback = Spec or
    (rule, threshold). The first plane is exactly quantize(x, qblock, stochastic).
    with_t: return (t, t.t()), both layouts from one quantize pass, the plane transposed."""
    rule, threshold, _ = Spec(*fallback)
    check_float(x)
    if not x.is_cuda:          # (CUDA: the quantize kernel flags NaN/Inf itself, with no sync)
        check_finite(x)
    if x.is_cuda and x.dtype not in (torch.float32, torch.bfloat16):
        x = x.float()          # (once, for the quantize and the residual kernels alike)
    t, tt = quantize(x, qblock, stochastic, generator, with_t=True) if with_t else (
        quantize(x, qblock, stochastic, generator), None)
    if on_kernels(t, fallback):
        plane_from_source(t, fallback, "copy", x=as_2d(x).contiguous())
    else:
        xp = pad_2d(as_2d(x), qblock)                              # (R, C), a view if aligned
        if rule == "crest":
            scores = outlier_scores(xp.float(), qblock, rule, logical=(t.rows, t.cols))
        else:
            scores = scale_scores(t.s, rule)
        flags = flags_from_scores(scores, rule, threshold)
        plane_with_flags(t, flags, gathered_blocks(xp, qblock), fallback)
    return (t, with_transposed_plane(tt, t)) if with_t else t


def quantize_fallback_ref(x, qblock=32, rule=DEFAULT_RULE, threshold=DEFAULT_THRESHOLD,
                          stochastic=False, generator=None):
    """Quantize x and give its outlier blocks a second plane. Returns (QTensor, flagged fraction).

    The first plane is exactly quantize(x, qblock, stochastic); threshold = inf adds nothing.
    (The fraction is read on the host: a sync. The model uses quantize_with_plane.)
    """
    t = quantize_with_plane(x, qblock, (rule, threshold), stochastic, generator)
    return t, flagged_fraction(t)


def flagged_count(t):
    """Flagged blocks of t (which has a fallback plane) that carry a second plane, as a 0-d
    device tensor (no sync)."""
    return (t.slot >= 0).sum()


def flagged_fraction(t):
    """Fraction of the tensor's logical blocks that carry a second plane (0.0 without one)."""
    if not t.has_fallback:
        return 0.0
    return flagged_count(t).item() / t.slot.numel()     # the block grid covers the logical blocks


# ---------------------------------------------------------------------------------------------
# public API: the kernels plug in under these names

def quantize_fallback(x, qblock=32, rule=DEFAULT_RULE, threshold=DEFAULT_THRESHOLD,
                      stochastic=False, generator=None):
    """See quantize_fallback_ref."""
    return quantize_fallback_ref(x, qblock, rule, threshold, stochastic, generator)


def mixed_gemm(a, b, out="float", out_dtype=torch.float32, shape=None, generator=None):
    """C = A @ B^T where A and/or B carry a fallback plane: the sum over plane pairs.

    The plain GEMM (int8_linear.gemm) already handles operands with a second plane; this name
    exists so that readers find the mixed-precision GEMM where the fallback is explained.
    """
    from int8_linear import gemm
    return gemm(a, b, out, out_dtype, shape, generator)


class FallbackConfig:
    """What the model needs to know about fallback: on/off, the rule and its threshold, a plane
    budget per call site (no host sync in the steady state), and the flagged fraction of each
    quantized activation from the last forward (0-d device tensors; fractions() reads them)."""

    def __init__(self, enabled=False, rule=DEFAULT_RULE, threshold=DEFAULT_THRESHOLD,
                 grad=False):
        if rule not in RULES:
            raise ValueError(f"unknown fallback rule {rule!r}; choose one of {RULES}")
        self.enabled, self.rule, self.threshold, self.grad = enabled, rule, threshold, grad
        self.stats = {}
        self.budgets = {}

    def spec_for(self, name):
        """The Spec of call site `name` (its own PlaneBudget), or None if off."""
        if not self.enabled:
            return None
        if name not in self.budgets:
            self.budgets[name] = PlaneBudget()
        return Spec(self.rule, self.threshold, self.budgets[name])

    def record(self, name, t):
        """Log the flagged fraction of an activation that an op quantized with a spec: its
        blocks with a second plane (the kernels' count when they built it), of all blocks."""
        if self.enabled:
            count = (t.flagged[1] if t.flagged is not None else
                     flagged_count(t) if t.has_plane else 0)
            self.stats[name] = (count, t.s.numel())

    def quantize(self, x, qblock, name, stochastic=False, with_t=False):
        """Quantize an activation, with a second plane for outlier blocks when enabled;
        with_t: (t, t.t()), both layouts from one pass over x (the plane transposed by the
        transpose kernel)."""
        if not self.enabled:
            return quantize(x, qblock, stochastic, with_t=with_t)
        out = quantize_with_plane(x, qblock, self.spec_for(name), stochastic, with_t=with_t)
        self.record(name, out[0] if with_t else out)
        return out

    def fractions(self):
        """The last forward's flagged fractions as floats: one host sync for all of them."""
        if not self.stats:
            return {}
        dev = next((c.device for c, _ in self.stats.values() if torch.is_tensor(c)), "cpu")
        counts = torch.stack([torch.as_tensor(c, dtype=torch.int32, device=dev)
                              for c, _ in self.stats.values()]).tolist()
        return {name: c / n for (name, (_, n)), c in zip(self.stats.items(), counts)}

    def state_dict(self):
        """The budgets, for a checkpoint (per process: each rank flags its own data)."""
        return {name: b.state() for name, b in self.budgets.items()}

    def load_state_dict(self, state):
        self.budgets = {name: PlaneBudget(*st) for name, st in state.items()}

    def flush(self):
        """Finish the budgets' pending count reads (before a CUDA graph capture, which forbids
        them) and forget the counts of an earlier capture."""
        for b in self.budgets.values():
            b.state()
            b.captured = None

    def read_captured(self):
        """After a replay of a captured step: every captured call site's flag count, read in one
        host sync, updates its budget. True when one outgrew its captured capacity (its extra
        blocks stayed plain int8 in that replay): re-capture, with capacities that cover it."""
        sites = [b for b in self.budgets.values() if b.captured is not None]
        if not sites:
            return False
        counts = torch.stack([b.captured[0].to(torch.int64) for b in sites]).tolist()
        return any([b.read_captured(n) for b, n in zip(sites, counts)])   # (a list: all learn)

    def overflows(self):
        """(calls so far whose flags did not all fit their plane budget, flagged blocks they
        left in plain int8)"""
        return (sum(b.overflows for b in self.budgets.values()),
                sum(b.dropped for b in self.budgets.values()))


def quantize_out(y, qblock, fallback=None):
    """How an op quantizes its float result: round to nearest, plus a second plane for outlier
    blocks when fallback = Spec or (rule, threshold) is given. Used by the norm and activation
    ops' reference paths."""
    if fallback is None:
        return quantize(y, qblock)
    return quantize_with_plane(y, qblock, fallback)


__all__ = ["RULES", "DEFAULT_RULE", "DEFAULT_THRESHOLD", "outlier_scores", "outlier_flags",
           "scale_scores", "scale_flags", "attach_plane", "dequantized_blocks",
           "plane_from_scales", "PlaneBudget", "Spec", "quantize_with_plane",
           "quantize_fallback", "quantize_fallback_ref", "flagged_count", "flagged_fraction",
           "mixed_gemm", "FallbackConfig", "quantize_out", "QTensor", "dequantize"]
