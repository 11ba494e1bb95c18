"""plane_select's CTA size (fallback_cuda.SMALL_THREADS) and its own level-1 histogram
(SMALL_GRID) against the scale_histogram kernel, on scale grids of the sizes a block step sees
(1024 and 4096 blocks: width 2048 at QB = 128; 16384 and 65536: QB = 32), side by side in one
process (not part of the library):

    python3 notes/select_ab.py

Variants alternate (5 rounds, median of bench.kernel_ms: GPU time of scale_histogram +
plane_select, the calls are shorter than their Python); slots, lists and counts must be equal.
"""
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fallback_cuda as F  # noqa: E402
from bench import kernel_ms  # noqa: E402

VARIANTS = {   # name: (CTA size, SMALL_GRID)
    "histogram kernel, 1024 threads": (1024, 0),
    "own histogram, 1024 threads": (1024, 1 << 30),
    "own histogram, 512 threads": (512, 1 << 30),
    "own histogram, 256 threads": (256, 1 << 30),
}


def grid(n, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.exp(torch.randn(n, generator=g)) * 1e-2            # log-normal, like block scales
    s[torch.rand(n, generator=g) < 0.01] *= 20                      # a few outlier blocks
    return s.view(-1, 64 if n >= 4096 else 16).cuda()


def main():
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| blocks | " + " | ".join(VARIANTS) + " | outputs |")
    print("|---|" + "---|" * len(VARIANTS) + "---|")
    default = (F.SMALL_THREADS, F.SMALL_GRID)
    for n in (1024, 4096, 16384, 65536):
        s = grid(n, n)
        times = {v: [] for v in VARIANTS}
        outs = {}
        for _ in range(5):
            for name, (nt, own) in VARIANTS.items():
                F.SMALL_THREADS, F.SMALL_GRID = nt, own
                outs[name] = [t.clone() for t in F.select_cuda(s, "median", 2.5, None)]
                times[name].append(kernel_ms(lambda: F.select_cuda(s, "median", 2.5, None)))
        F.SMALL_THREADS, F.SMALL_GRID = default
        ref = outs[next(iter(VARIANTS))]
        same = all(all(torch.equal(a, b) for a, b in zip(o, ref)) for o in outs.values())
        print(f"| {n} | " + " | ".join(f"{1e3 * statistics.median(t):.1f} us" for t in
                                       times.values()) + f" | {'equal' if same else 'DIFFER'} |")


if __name__ == "__main__":
    main()
