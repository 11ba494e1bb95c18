"""The mma.sync kernel's fused fallback plane against the plane-pair sum it replaces and the plain
GEMM (not part of the library).

    python3 notes/mma_plane_ab.py

Forward, int8 out, QB = 32, X (M, K) with a second plane on the 'topk' rule's fraction of blocks
(uniform flags, as bench.py's fallback section), W (N, K) plain; kernel 'mma' forced. GPU time of
the kernels (bench.kernel_ms, plane lists included), median of 3. The fused float output is
compared with the plane-pair sum (both promote exactly: they differ only by the order of the
fp32 adds).
"""
import os
import statistics
import sys
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm  # noqa: E402
from bench import kernel_ms  # noqa: E402
from fallback import quantize_fallback  # noqa: E402
from int8_gemm import gemm, gemm_cuda, gemm_planes  # noqa: E402
from quantize import quantize  # noqa: E402

SHAPES = [(16384, 2048, 8192), (16384, 8192, 2048)]


def med(fn):
    return statistics.median(kernel_ms(fn) for _ in range(3))


def main():
    int8_gemm._auto_kernel = lambda device_index: "mma"
    print(torch.cuda.get_device_name(), torch.__version__)
    print("| mkn | flagged | plain ms | fused ms | overhead | plane pairs ms | overhead | fused vs pairs rel err |")
    print("|---|---|---|---|---|---|---|---|")
    for M, K, N in SHAPES:
        x, w = torch.randn(M, K, device="cuda"), torch.randn(N, K, device="cuda")
        tw, plain = quantize(w, 32), quantize(x, 32)
        t_plain = med(lambda: gemm_cuda(plain, tw, out="int8", kernel="mma"))
        pairs = partial(gemm_cuda, kernel="mma")
        for frac in (0.01, 0.05, 0.2, 1.0):
            t, flagged = quantize_fallback(x, 32, "topk", frac)
            t_fused = med(lambda: gemm(t, tw, out="int8"))
            t_pairs = med(lambda: gemm_planes(t, tw, "int8", torch.float32, None, None, None, pairs))
            f = gemm(t, tw)
            p = gemm_planes(t, tw, "float", torch.float32, None, None, None, pairs)
            err = ((f - p).norm() / p.norm()).item()
            print(f"| {M}x{K}x{N} | {flagged:.3f} | {t_plain:.3f} | {t_fused:.3f} | {t_fused / t_plain - 1:+.0%} "
                  f"| {t_pairs:.3f} | {t_pairs / t_plain - 1:+.0%} | {err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
