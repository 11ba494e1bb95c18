"""fallback.PlaneOverlap on the width-2048 QB = 128 block (B = 4, T = 2048), graphed as bench.py
times it: the planes built on the main stream, beside it on a side stream of default priority,
and of high priority (the default), with the int8 block as the floor; side by side in one
process (not part of the library):

    python3 notes/overlap_ab.py [--width=2048] [--rounds=3]

Variants alternate (a fresh block and graph each time; median over rounds of bench.timeit's
median of 20 replays).
"""
import argparse
import contextlib
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fallback  # noqa: E402
from bench import block_case, graphed_step, timeit  # noqa: E402

VARIANTS = {   # name: (mode, overlap on, side stream priority)
    "int8 (no plane)": ("int8 QB128", True, -1),
    "fallback, one stream": ("int8+fallback QB128", False, -1),
    "fallback, side stream, priority 0": ("int8+fallback QB128", True, 0),
    "fallback, side stream, priority -1": ("int8+fallback QB128", True, -1),
}


def time_variant(style, C, mode, overlap, priority):
    fallback.PlaneOverlap.PRIORITY = priority
    saved = fallback.FallbackConfig.overlap
    if not overlap:
        fallback.FallbackConfig.overlap = lambda self: contextlib.nullcontext()
    try:
        dev = torch.device("cuda")
        block, step, _ = block_case(style, C, 4, 2048, mode, dev)
        for _ in range(3):
            step()                                 # eager steps first: the plane budgets count
        replay = graphed_step(step, block, dev)
        return timeit(replay, warmup=3, reps=20)
    finally:
        fallback.FallbackConfig.overlap = saved
        fallback.PlaneOverlap.PRIORITY = -1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, width {args.width}, "
          f"QB 128, graphed ms")
    print("| block | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    for style in ("gpt2", "llama"):
        times = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for name, variant in VARIANTS.items():
                times[name].append(time_variant(style, args.width, *variant))
                torch.cuda.empty_cache()
        print(f"| {style} | " + " | ".join(f"{statistics.median(t):.3f}" for t in times.values())
              + " |")


if __name__ == "__main__":
    main()
