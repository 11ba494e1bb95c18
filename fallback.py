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
"""
import torch

from quantize import (QMAX, QTensor, as_2d, block_absmax, blocks, check_finite, check_float,
                      dequantize, pad_2d, quantize)

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
    none: sorted, the nonzero entries are the last m, so the median is a gather at a computed
    index. No boolean indexing, hence no host sync (v[v > 0].median() would wait on the GPU)."""
    srt = v.flatten().sort().values
    m = (srt > 0).sum()                                            # a device tensor
    idx = (srt.numel() - m + (m - 1).clamp_min(0) // 2).clamp_max(srt.numel() - 1)
    return torch.where(m > 0, srt[idx], torch.ones_like(srt[0]))


def outlier_flags(xp, qblock, rule=DEFAULT_RULE, threshold=DEFAULT_THRESHOLD, logical=None):
    """Boolean (R/QB, C/QB) grid of blocks that fall back to two planes."""
    return flags_from_scores(outlier_scores(xp, qblock, rule, logical), rule, threshold)


def scale_flags(s, rule=DEFAULT_RULE, threshold=DEFAULT_THRESHOLD):
    """The 'median' and 'topk' rules read off a quantized tensor's scale grid alone: s is the
    block absmax / 127, so s / median(s) is absmax / median absmax, and no float pass is needed.
    ('crest' needs each block's rms, i.e. the floats: outlier_flags.)"""
    if rule == "crest":
        raise ValueError("the 'crest' rule needs the float tensor (outlier_flags), not scales")
    return flags_from_scores(s / median_nonzero(s), rule, threshold)


def flags_from_scores(scores, rule, threshold):
    if rule == "topk":
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"the 'topk' rule takes a fraction in [0, 1], got {threshold}")
        k = int(round(threshold * scores.numel()))
        flags = torch.zeros_like(scores, dtype=torch.bool)
        if k > 0:
            flags.view(-1)[scores.view(-1).topk(k).indices] = True
        return flags & (scores > 0)
    if threshold < 0:
        raise ValueError(f"fallback threshold must be >= 0, got {threshold}")
    return scores > threshold


# ---------------------------------------------------------------------------------------------
# the second plane

def add_second_plane(t, flags, blocks_of):
    """Attach the residual plane of the flagged blocks to QTensor t. blocks_of(bi, bj) returns
    the float values of blocks (bi[n], bj[n]) as (n, QB, QB) fp32, zero in the padding: only the
    flagged blocks are ever read or computed (gathered_blocks, or an op's recompute)."""
    QB = t.qblock
    Rb, Cb = flags.shape
    idx = flags.view(-1).nonzero().squeeze(1)      # the one host sync: n_flagged sizes q2
    bi, bj = idx // Cb, idx % Cb
    qb = t.q.view(Rb, QB, Cb, QB)[bi, :, bj, :]                    # (n, QB, QB) int8
    rb = blocks_of(bi, bj) - qb.float() * t.s[bi, bj][:, None, None]   # |r| <= s1/2
    amax = rb.abs().amax(dim=(1, 2))                               # (n,)
    inv = torch.where(amax > 0, QMAX / amax.clamp_min(1e-38), torch.zeros_like(amax))
    t.q2 = torch.round(rb * inv[:, None, None]).clamp(-QMAX, QMAX).to(torch.int8)
    t.s2 = (amax / QMAX).contiguous()
    slot = torch.full((flags.numel(),), -1, dtype=torch.int32, device=t.q.device)
    slot[idx] = torch.arange(idx.numel(), dtype=torch.int32, device=t.q.device)
    t.slot = slot.view(flags.shape)
    return t


def gathered_blocks(xp, qblock):
    """blocks_of for a padded 2-D tensor: its blocks (bi, bj) as (n, QB, QB) fp32, a gather
    (a view of xp's blocks when xp is contiguous), never a pass over the tensor."""
    view = xp.reshape(xp.shape[0] // qblock, qblock, xp.shape[1] // qblock, qblock)
    return lambda bi, bj: view[bi, :, bj, :].float()


def attach_plane(t, fallback, blocks_of):
    """How an op gives its plain int8 output t (from a kernel) the fallback plane: flags from
    t's scales ('median', 'topk'), and the float values of the flagged blocks alone from
    blocks_of, which the op recomputes from its inputs. Returns t."""
    rule, threshold = fallback
    return add_second_plane(t, scale_flags(t.s, rule, threshold), blocks_of)


def dequantized_blocks(t):
    """blocks_of for a plain QTensor: its blocks (bi, bj) dequantized, (n, QB, QB) fp32."""
    QB = t.qblock
    Rb, Cb = t.s.shape
    view = t.q.view(Rb, QB, Cb, QB)
    return lambda bi, bj: view[bi, :, bj, :].float() * t.s[bi, bj][:, None, None]


def plane_from_scales(fallback):
    """True when an op's kernel output can take its fallback plane through attach_plane: no
    fallback, or a rule that reads the scales ('crest' runs the op's torch reference)."""
    return fallback is None or fallback[0] != "crest"


def quantize_fallback_ref(x, qblock=32, rule=DEFAULT_RULE, threshold=DEFAULT_THRESHOLD,
                          stochastic=False, generator=None):
    """Quantize x and give its outlier blocks a second plane. Returns (QTensor, flagged fraction).

    The first plane is exactly quantize(x, qblock, stochastic); threshold = inf adds nothing.
    """
    check_float(x)
    if not x.is_cuda:          # (CUDA: the quantize kernel flags NaN/Inf itself, with no sync)
        check_finite(x)
    t = quantize(x, qblock, stochastic, generator)
    xp = pad_2d(as_2d(x), qblock)                                  # (R, C), a view if aligned
    if rule == "crest":
        flags = outlier_flags(xp.float(), qblock, rule, threshold, logical=(t.rows, t.cols))
    else:
        flags = scale_flags(t.s, rule, threshold)
    add_second_plane(t, flags, gathered_blocks(xp, qblock))
    return t, flagged_fraction(t)


def flagged_fraction(t):
    """Fraction of the tensor's logical blocks that carry a second plane (0.0 without one)."""
    if not t.has_fallback:
        return 0.0
    QB = t.qblock
    rb, cb = -(-t.rows // QB), -(-t.cols // QB)                    # logical blocks only
    return t.q2.shape[0] / (rb * cb)


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
    """What the model needs to know about fallback: on/off, the rule and its threshold, and
    the flagged fraction of each quantized activation from the last forward (for logging)."""

    def __init__(self, enabled=False, rule=DEFAULT_RULE, threshold=DEFAULT_THRESHOLD,
                 grad=False):
        if rule not in RULES:
            raise ValueError(f"unknown fallback rule {rule!r}; choose one of {RULES}")
        self.enabled, self.rule, self.threshold, self.grad = enabled, rule, threshold, grad
        self.stats = {}

    @property
    def spec(self):
        """What an op that quantizes its own output takes: (rule, threshold), or None if off."""
        return (self.rule, self.threshold) if self.enabled else None

    def record(self, name, t):
        """Log the flagged fraction of an activation that an op quantized with `spec`."""
        if self.enabled:
            self.stats[name] = flagged_fraction(t)

    def quantize(self, x, qblock, name, stochastic=False):
        """Quantize an activation, with a second plane for outlier blocks when enabled."""
        if not self.enabled:
            return quantize(x, qblock, stochastic)
        t, frac = quantize_fallback(x, qblock, self.rule, self.threshold, stochastic)
        self.stats[name] = frac
        return t


def quantize_out(y, qblock, fallback=None):
    """How an op quantizes its float result: round to nearest, plus a second plane for outlier
    blocks when fallback = (rule, threshold) is given. Used by the norm and activation ops."""
    if fallback is None:
        return quantize(y, qblock)
    return quantize_fallback(y, qblock, *fallback)[0]


__all__ = ["RULES", "DEFAULT_RULE", "DEFAULT_THRESHOLD", "outlier_scores", "outlier_flags",
           "scale_flags", "attach_plane", "dequantized_blocks", "plane_from_scales",
           "quantize_fallback", "quantize_fallback_ref", "flagged_fraction", "mixed_gemm",
           "FallbackConfig", "quantize_out", "QTensor", "dequantize"]
