"""Error bounds the CUDA GEMM tests share (test_int8_linear_cuda.py, test_fallback.py)."""
import int8_gemm_sm90
from quantize import dequantize


def bound(ta, tb):
    """|A| @ |B|^T in float64: the scale of each output's rounding error."""
    return dequantize(ta).abs().double() @ dequantize(tb).abs().double().t()


def magic_slack(ta, tb, kernel):
    """What the magic-number promotion (kernel 'wgmma', where _source() picks it) may add to the
    exact promotion's error. Its FFMAs round at ~2^23-2^24 times the scale products s_A s_B of
    the K-blocks whose terms are open in the group of G K-blocks (its comment), so about one unit
    of the group's largest s_A s_B per K-block (1.5 allowed): G * max over the group, summed over
    the groups, per output. An outlier block in a group sets the unit for all of it. 0 for the
    exact kernels (and where the magic one does not apply)."""
    code, defines = int8_gemm_sm90._source(ta.qblock, ta.q.shape[1], False, None)
    if kernel != "wgmma" or code is not int8_gemm_sm90.SM90_MAGIC_SRC:
        return 0.0
    G = int(dict(d.split("=") for d in defines)["KGROUP"])
    c = ta.s.double()[:, None, :] * tb.s.double()[None, :, :]          # (Mb, Nb, Kb)
    c = 1.5 * G * c.view(*c.shape[:2], -1, G).amax(3).sum(2)
    qb = ta.qblock
    return c.repeat_interleave(qb, 0).repeat_interleave(qb, 1)[:ta.rows, :tb.rows]
