"""Where a block's forward + backward time goes, by torch.profiler (not part of the library).

    python3 notes/profile_block.py [--style=llama|gpt2] [--width=2048]

Builds bench.py's block (B=4, T=2048) in int8 and int8 + fallback, runs 3 warm-up steps, then
profiles 5 steps and prints: wall ms per step, GPU (kernel) ms per step, and the top ops by GPU
time and by CPU time. GPU << wall means the step is bound by the host (Python, launches, syncs).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import block_case  # noqa: E402


def time_steps(step, n=5, warmup=3):
    """After warmup steps: (ms per step until the host has queued n steps, ms per step until
    the GPU has run them)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    host = (time.perf_counter() - t0) / n * 1e3
    torch.cuda.synchronize()
    return host, (time.perf_counter() - t0) / n * 1e3


def profile_steps(step, n=5):
    """torch.profiler over n calls of step (CPU and CUDA activity): the op table
    (key_averages) and the GPU kernel ms per step."""
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    # kernels only: with CPU activity on, each op's row repeats its kernels' device time
    gpu = sum(e.self_device_time_total for e in events
              if e.device_type == torch.autograd.DeviceType.CUDA) / n / 1e3
    return events, gpu


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--style", default="llama")
    p.add_argument("--width", type=int, default=2048)
    args = p.parse_args()
    B, T, C = 4, 2048, args.width
    for mode in ("bf16", "int8", "int8+fallback"):
        _, step, _ = block_case(args.style, C, B, T, mode, torch.device("cuda"))
        _, wall = time_steps(step)
        events, gpu = profile_steps(step)
        print(f"\n## {args.style} C={C} {mode}: wall {wall:.2f} ms/step, GPU kernels {gpu:.2f} ms/step")
        print(events.table(sort_by="self_device_time_total", row_limit=18, max_name_column_width=60))
        print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
