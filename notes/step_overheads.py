"""Where a block step's host time and peak memory go (issue 7; not part of the library).

    python3 notes/step_overheads.py [--host] [--memory] [--style=gpt2] [--width=2048]

--host    host microseconds per call of each int8 op on tiny CUDA inputs (the GPU idles, so the
          time is Python + launch), against torch.empty and a bare CuPy launch.
--profile cProfile of those calls: where the host time goes, by function.
--memory  the allocations alive at the peak of one block step (bf16 and int8), from the CUDA
          caching allocator's history: size, and the first frame of this repo that made them.
"""
import argparse
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench import block_case  # noqa: E402
from int8_gelu import gelu_fwd  # noqa: E402
from int8_linear import gemm  # noqa: E402
from int8_norm import layernorm_fwd  # noqa: E402
from quantize import dequantize, get_kernel, launch, quantize  # noqa: E402


def host_us(fn, n=300):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def host_table():
    dev = torch.device("cuda")
    x = torch.randn(128, 128, device=dev)
    w, b = torch.rand(128, device=dev) + 0.5, torch.randn(128, device=dev)
    x_q, w_q = quantize(x), quantize(torch.randn(128, 128, device=dev))
    nop = get_kernel("extern \"C\" __global__ void nop(float* p) {}", "nop", (), dev)
    import cupy
    import numpy as np
    ptr = np.uint64(x.data_ptr())
    cases = [
        ("torch.empty", lambda: torch.empty(128, 128, device=dev)),
        ("torch add", lambda: x + x),
        ("CuPy kernel, current stream", lambda: nop((1,), (32,), (ptr,))),
        ("launch() (torch stream)", lambda: launch(nop, (1,), (32,), (x,))),
        ("quantize RTN", lambda: quantize(x)),
        ("quantize SR", lambda: quantize(x, stochastic=True)),
        ("dequantize", lambda: dequantize(x_q)),
        ("transpose", lambda: x_q.t()),
        ("layernorm_fwd", lambda: layernorm_fwd(x, w, b)),
        ("gelu_fwd", lambda: gelu_fwd(x_q)),
        ("gemm int8 out", lambda: gemm(x_q, w_q, out="int8")),
        ("gemm float out", lambda: gemm(x_q, w_q, out="float")),
    ]
    del cupy
    print("| call | host us |\n|---|---|")
    for name, fn in cases:
        print(f"| {name} | {host_us(fn):.1f} |")
    return cases


def host_profile(cases):
    import cProfile
    import pstats
    for name, fn in cases[4:]:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200):
            fn()
        prof.disable()
        torch.cuda.synchronize()
        print(f"\n### {name}: per call, by own time (us)")
        stats = pstats.Stats(prof).stats
        rows = sorted(((tt, nc, f) for f, (cc, nc, tt, ct, _) in stats.items()), reverse=True)
        for tt, nc, (file, line, func) in rows[:12]:
            print(f"{tt / 200 * 1e6:7.2f}  {nc / 200:5.1f}x  {os.path.basename(file)}:{line} {func}")


def frame_of(frames):
    for f in frames:
        if f["filename"].startswith(REPO) and "notes" not in f["filename"]:
            return f"{os.path.basename(f['filename'])}:{f['line']} {f['name']}"
    return frames[0]["name"] if frames else "?"


def peak_live(style, width, mode, B=4, T=2048):
    dev = torch.device("cuda")
    block, step, _ = block_case(style, width, B, T, mode, dev)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=200000, stacks="python")
    step()
    torch.cuda.synchronize()
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak = torch.cuda.max_memory_allocated()
    live, total, best, at_best = {}, 0, 0, {}
    for ev in snap["device_traces"][0]:
        if ev["action"] == "alloc":
            live[ev["addr"]] = (ev["size"], frame_of(ev.get("frames", [])))
            total += ev["size"]
            if total > best:
                best, at_best = total, dict(live)
        elif ev["action"] == "free_completed" and ev["addr"] in live:
            total -= live.pop(ev["addr"])[0]
    print(f"\n## {style} w{width} {mode}: base {base / 2**20:.0f} MiB (params, grads, x), "
          f"peak {peak / 2**20:.0f} MiB, step's own peak {best / 2**20:.0f} MiB")
    by_site = {}
    for size, site in at_best.values():
        n, s = by_site.get(site, (0, 0))
        by_site[site] = (n + 1, s + size)
    print("| made at | tensors | MiB |\n|---|---|---|")
    for site, (n, s) in sorted(by_site.items(), key=lambda kv: -kv[1][1])[:14]:
        print(f"| {site} | {n} | {s / 2**20:.1f} |")
    del block, step
    torch.cuda.empty_cache()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--memory", action="store_true")
    p.add_argument("--style", default="gpt2")
    p.add_argument("--width", type=int, default=2048)
    args = p.parse_args()
    if args.host or args.profile:
        cases = host_table()
        if args.profile:
            host_profile(cases)
    if args.memory:
        for mode in ("bf16", "int8"):
            peak_live(args.style, args.width, mode)


if __name__ == "__main__":
    main()
