"""The fused fallback GEMM's K-block lists per 64-row half (int8_gemm_sm90_plane._halves = 2,
SPLIT_HALVES) against per 128-row tile (1), in one process (not part of the library).

    python3 notes/halves_ab.py

bench.py's fallback rows (forward, int8 out, QB = 32, topk flags), uniform and outlier-channel
patterns, 1 / 5 / 20% flagged: GPU time (bench.kernel_ms, the lists' kernel included) of each
choice, alternated, median of 3, and the overhead over the plain GEMM. Outputs must be equal
bit for bit (the same K-blocks, promoted the same way, in list order either way).
"""
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90_plane as P  # noqa: E402
from bench import kernel_ms, outlier_channels  # noqa: E402
from fallback import quantize_fallback  # noqa: E402
from int8_gemm import gemm, gemm_cuda  # noqa: E402
from quantize import quantize  # noqa: E402


def main():
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| mkn | pattern | flagged | plain ms | halves 2 ms | halves 1 ms | overhead 2 | "
          "overhead 1 | 1 / 2 | equal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for M, K, N in ((16384, 2048, 8192), (16384, 8192, 2048)):
        x, w = torch.randn(M, K, device="cuda"), torch.randn(N, K, device="cuda")
        tw = quantize(w)
        plain = quantize(x)
        t_plain = min(kernel_ms(lambda: gemm_cuda(plain, tw, out="int8")) for _ in range(2))
        for pattern in ("uniform", "channels"):
            for frac in (0.01, 0.05, 0.2):
                xp = x if pattern == "uniform" else outlier_channels(x, 32, frac)
                t, flagged = quantize_fallback(xp, 32, "topk", frac)
                ms, out = {True: [], False: []}, {}
                for split in (True, False):
                    P.SPLIT_HALVES = split
                    out[split] = gemm(t, tw, out="int8")
                for rep in range(3):
                    for split in ((True, False) if rep % 2 == 0 else (False, True)):
                        P.SPLIT_HALVES = split
                        ms[split].append(kernel_ms(lambda: gemm(t, tw, out="int8")))
                P.SPLIT_HALVES = True
                m2, m1 = statistics.median(ms[True]), statistics.median(ms[False])
                same = torch.equal(out[True].q, out[False].q)
                print(f"| {M}x{K}x{N} | {pattern} | {flagged:.3f} | {t_plain:.3f} | {m2:.3f} | "
                      f"{m1:.3f} | {m2 / t_plain - 1:+.1%} | {m1 / t_plain - 1:+.1%} | "
                      f"{m1 / m2:.2f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
