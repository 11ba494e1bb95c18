"""Where a block's forward + backward GPU time goes, by torch.profiler (not part of the library).

    python3 notes/profile_block.py [--style=llama|gpt2] [--width=4096] [--modes=bf16,int8,"int8 QB128"]
                                   [--launches]

Builds bench.py's block (B=4, T=2048) in each mode (bench.block_modes' names), runs 3 warm-up
steps, then profiles 5 eager steps and prints per step: the wall time, the GPU's kernel time, that
kernel time by kind (the int8 GEMMs, cuBLAS, attention, quantize, norms, activations, the fallback
plane, torch's own kernels) and the top kernels. The kernels are the ones a graphed step replays,
so their sum is the graphed step's time less the gaps between kernels. --launches also lists
one step's kernels in launch order, each with its GPU time and grid (from the profiler's trace).
"""
import argparse
import json
import os
import re
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import block_case, timeit  # noqa: E402

KINDS = [   # (kind, pattern on the kernel's name), first match wins
    ("int8 GEMM", r"^gemm_(sm90_)?(int8|float)_kernel"),
    ("fallback plane", r"^(scale_histogram|plane_select|plane_residual|plane_lists)_kernel"),
    ("quantize / transpose", r"^(quantize|transpose|dequantize|colsum)_kernel"),
    ("norm (int8 kernels)", r"^norm_(fwd|bwd|stats|quant)_kernel"),
    ("GELU / SwiGLU (int8 kernels)", r"^(gelu|swiglu)_(fwd|bwd)_kernel"),
    ("attention", r"flash|sdpa|fmha|attention"),
    ("cuBLAS GEMM", r"nvjet|gemm|xmma|cutlass"),
    ("torch norm", r"layer_norm|rms_norm|norm"),
    ("torch elementwise / reduce / copy", r""),
]


def kind_of(name):
    return next(k for k, pat in KINDS if re.search(pat, name))


def kernel_times(step, n=5):
    """{kernel name: (GPU ms per step, launches per step)} over n profiled steps."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0:
            out[e.key] = (e.self_device_time_total / n / 1e3, e.count / n)
    return out


def launches(step):
    """One step's kernels in launch order: [(name, GPU us, grid)], from the profiler's trace."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    path = f"/tmp/profile_block_{os.getpid()}.json"
    prof.export_chrome_trace(path)
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    os.remove(path)
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    return [(e["name"], e["dur"], e.get("args", {}).get("grid")) for e in kernels]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--style", default="llama")
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--modes", default="bf16,int8,int8+fallback")
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--launches", action="store_true")
    args = p.parse_args()
    B, T, C = 4, 2048, args.width
    for mode in args.modes.split(","):
        _, step, _ = block_case(args.style, C, B, T, mode, torch.device("cuda"))
        wall = timeit(step, warmup=3, reps=5)        # a step, host included (median)
        kernels = kernel_times(step)
        by_kind = defaultdict(float)
        for name, (ms, _) in kernels.items():
            by_kind[kind_of(name)] += ms
        gpu = sum(by_kind.values())
        print(f"\n## {args.style} C={C} {mode}: wall {wall:.2f} ms/step, GPU kernels {gpu:.2f} "
              f"ms/step, {sum(c for _, c in kernels.values()):.0f} kernels/step")
        print("| kind | ms/step | share |\n|---|---|---|")
        for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
            print(f"| {kind} | {ms:.3f} | {ms / gpu:.1%} |")
        print(f"top {args.top} kernels (ms/step, launches/step):")
        for name, (ms, count) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:args.top]:
            print(f"  {ms:7.3f} {count:4.0f}  {name[:100]}")
        if args.launches:
            print("one step's kernels in launch order (us, grid):")
            for name, us, grid in launches(step):
                print(f"  {us:8.1f}  {str(grid):16s} {name[:90]}")
        del step
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
