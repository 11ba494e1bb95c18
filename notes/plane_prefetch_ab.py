"""The fallback plane stages' scale loads read ahead (int8_gemm_sm90_ring.py, PlaneCopy.s_*)
against the producer before it (each plane stage read its scale thread's list count, then the
list entry, from global memory after the empty wait), in one process (not part of the library).

    python3 notes/plane_prefetch_ab.py

bench.py's fallback rows (forward, int8 out, QB = 32, topk flags), uniform and outlier-channel
patterns, 1 / 5 / 20 / 100% flagged: GPU time (bench.kernel_ms) of each producer, alternated,
median of 3; the outputs must be equal bit for bit (the same scales reach the same slots).
"""
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90 as S  # noqa: E402
from bench import kernel_ms, outlier_channels  # noqa: E402
from fallback import quantize_fallback  # noqa: E402
from int8_gemm import gemm, gemm_cuda  # noqa: E402
from quantize import quantize  # noqa: E402

# the producer before: the new source with the scale threads' per-stage loads put back
NEW_SCALE = '''        const int rl = RBS / pl.halves, i = e * (KBS / pl.halves), kb = c.s_next;
        const int rbj = blk - (pl.on_b ? n0 : m0) / QB - (j / (KBS / pl.halves)) * rl;
        const float* src = nullptr;
        if (is_a != pl.on_b) {                          // the plane's: from the gathered scales
            if (i < c.s_count && rbj >= 0 && rbj < rl)
                src = pl.s2 + (long long)(c.s_first + i) * rl + rbj;
        } else if (kb >= 0 && blk < (is_a ? Mp : Np) / QB) {
            src = (is_a ? As : Bs) + (long long)blk * (Kp / QB) + kb;
        }
        c.s_next = plane_scale_entry(pl, c, is_a, e + 1);'''
OLD_SCALE = '''        const PlaneColumn cj = plane_column(pl, m0, n0, j);
        const int rl = RBS / pl.halves, i = e * (KBS / pl.halves);
        const int rbj = blk - (pl.on_b ? n0 : m0) / QB - cj.h * rl;
        const float* src = nullptr;
        if (is_a != pl.on_b) {                          // the plane's: from the gathered scales
            if (i < cj.n && rbj >= 0 && rbj < rl) src = pl.s2 + (long long)(cj.first + i) * rl + rbj;
        } else if (i < cj.n && blk < (is_a ? Mp : Np) / QB) {
            src = (is_a ? As : Bs) + (long long)blk * (Kp / QB) + pl.list[cj.first + i];
        }'''
NEW_COPY = '''    if (t < SCALE_FLOATS) {
        bool is_a;
        int blk, js;
        scale_role(t, m0, n0, is_a, blk, js);
        const PlaneColumn cs = plane_column(pl, m0, n0, js);
        c.s_first = cs.first;
        c.s_count = cs.n;
        c.s_next = plane_scale_entry(pl, c, is_a, 0);
    }
'''


def before(src):
    assert NEW_SCALE in src and NEW_COPY in src
    return src.replace(NEW_SCALE, OLD_SCALE).replace(NEW_COPY, "")


VARIANTS = {"before": {"exact": before(S.SM90_SRC), "magic": before(S.SM90_MAGIC_SRC)},
            "prefetch": {"exact": S.SM90_SRC, "magic": S.SM90_MAGIC_SRC}}


def use(v):
    S.SM90_SRC, S.SM90_MAGIC_SRC = VARIANTS[v]["exact"], VARIANTS[v]["magic"]


def main():
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| mkn | pattern | flagged | plain ms | before ms | prefetch ms | overhead before | "
          "overhead prefetch | prefetch / before | equal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for M, K, N in ((16384, 2048, 8192), (16384, 8192, 2048)):
        x, w = torch.randn(M, K, device="cuda"), torch.randn(N, K, device="cuda")
        tw, plain = quantize(w), quantize(x)
        use("prefetch")
        t_plain = min(kernel_ms(lambda: gemm_cuda(plain, tw, out="int8")) for _ in range(2))
        for pattern in ("uniform", "channels"):
            for frac in (0.01, 0.05, 0.2, 1.0):
                if pattern == "channels" and frac == 1.0:
                    continue
                xp = x if pattern == "uniform" else outlier_channels(x, 32, frac)
                t, flagged = quantize_fallback(xp, 32, "topk", frac)
                ms, out = {v: [] for v in VARIANTS}, {}
                for v in VARIANTS:
                    use(v)
                    out[v] = gemm(t, tw, out="int8")
                for rep in range(3):
                    for v in (list(VARIANTS) if rep % 2 == 0 else list(VARIANTS)[::-1]):
                        use(v)
                        ms[v].append(kernel_ms(lambda: gemm(t, tw, out="int8")))
                use("prefetch")
                mb, mp = statistics.median(ms["before"]), statistics.median(ms["prefetch"])
                same = (torch.equal(out["before"].q, out["prefetch"].q)
                        and torch.equal(out["before"].s, out["prefetch"].s))
                print(f"| {M}x{K}x{N} | {pattern} | {flagged:.3f} | {t_plain:.3f} | {mb:.3f} | "
                      f"{mp:.3f} | {mb / t_plain - 1:+.1%} | {mp / t_plain - 1:+.1%} | "
                      f"{mp / mb:.3f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
