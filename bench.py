"""
Speed and memory of the INT8 operators and transformer blocks against bf16 PyTorch.

    python bench.py                      # everything that fits in a few minutes on this device
    python bench.py --only=ops,block     # sections: ops, gemm, block
    python bench.py --out=results        # where the JSON and markdown tables go

Every timing is the median of many runs after a warm-up, with fresh random inputs (never
zeros); on a GPU with CUDA events, on the CPU with perf_counter. bf16 is measured in the same
run. Every int8 result is checked against its float counterpart before it is timed.

Memory held for backward is the bytes of the tensors autograd saves (counted through
saved-tensor hooks, parameters excluded), so it is measured the same way on CPU and GPU; on a
GPU the peak allocated memory of a whole step is reported too.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

from int8_gelu import gelu_fwd
from int8_linear import gemm
from int8_norm import layernorm_fwd
from model import Block, GPTConfig
from fallback import FallbackConfig
from quantize import dequantize, quantize


def timeit(fn, warmup=3, reps=20):
    """Median milliseconds of fn() (device-synchronised)."""
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------------------------
# memory-bound operators

def bench_ops(device, sizes):
    rows = []
    for M, C in sizes:
        x = torch.randn(M, C, device=device)
        xb = x.bfloat16()
        w, b = torch.rand(C, device=device) + 0.5, torch.randn(C, device=device) * 0.1
        h_q = quantize(x)
        cases = [
            ("quantize (RTN)", lambda: quantize(x), lambda: x.bfloat16(),
             rel_err(dequantize(quantize(x)), x)),
            ("layernorm fwd, int8 out", lambda: layernorm_fwd(x, w, b),
             lambda: F.layer_norm(xb, (C,), w.bfloat16(), b.bfloat16()),
             rel_err(dequantize(layernorm_fwd(x, w, b)[0]), F.layer_norm(x, (C,), w, b))),
            ("gelu fwd, int8 in/out", lambda: gelu_fwd(h_q),
             lambda: F.gelu(xb, approximate="tanh"),
             rel_err(dequantize(gelu_fwd(h_q)), F.gelu(dequantize(h_q), approximate="tanh"))),
        ]
        for name, f_int8, f_bf16, err in cases:
            t8, t16 = timeit(f_int8), timeit(f_bf16)
            rows.append(dict(op=name, shape=f"{M}x{C}", bf16_ms=t16, int8_ms=t8,
                             speedup=t16 / t8, rel_err=err))
    return rows


# ---------------------------------------------------------------------------------------------
# GEMM

def bench_gemm(device, shapes):
    rows = []
    for M, K, N in shapes:
        x, w = torch.randn(M, K, device=device), torch.randn(N, K, device=device)
        xb, wb = x.bfloat16(), w.bfloat16()
        tx, tw = quantize(x), quantize(w)
        err = rel_err(gemm(tx, tw), x @ w.t())
        t16 = timeit(lambda: xb @ wb.t())
        t8 = timeit(lambda: gemm(tx, tw, out="int8"))
        tops = 2 * M * K * N / (t8 * 1e-3) / 1e12
        rows.append(dict(op="gemm fwd, int8 out", shape=f"{M}x{K}x{N}", bf16_ms=t16,
                         int8_ms=t8, speedup=t16 / t8, tops=tops, rel_err=err))
    return rows


# ---------------------------------------------------------------------------------------------
# a whole transformer block, forward + backward

def saved_bytes(fn, module):
    """Run fn() and return (its output, bytes autograd saved for backward); the module's
    parameters are not counted (they are held anyway), each storage is counted once."""
    seen, total = set(), [0]
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key in seen or key[0] in params:
            return t
        seen.add(key)
        total[0] += t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def bench_block(device, widths, style, B, T):
    rows = []
    for C in widths:
        results = {}
        for mode in ("bf16", "int8", "int8+fallback"):
            cfg = GPTConfig(n_embd=C, n_head=max(1, C // 128), block_size=T,
                            mlp="gelu" if style == "gpt2" else "swiglu",
                            norm="layernorm" if style == "gpt2" else "rmsnorm",
                            int8=mode != "bf16", fallback=mode == "int8+fallback")
            torch.manual_seed(0)
            block = Block(cfg, FallbackConfig(cfg.fallback, cfg.fallback_rule,
                                              cfg.fallback_threshold), 0).to(device)
            x = torch.randn(B, T, C, device=device, requires_grad=True)
            dout = torch.randn(B, T, C, device=device)
            amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

            def step():
                with amp:
                    y = block(x)
                y.backward(dout)
            y, held = saved_bytes(lambda: block(x), block)
            del y
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            ms = timeit(step, warmup=2, reps=10)
            peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
            results[mode] = (ms, held, peak)
            base_ms, base_held, _ = results["bf16"]
            rows.append(dict(op=f"{style} block fwd+bwd, {mode}", shape=f"B={B} T={T} C={C}",
                             ms=ms, speedup=base_ms / ms, held_MiB=held / 2**20,
                             held_ratio=base_held / held, peak_MiB=peak))
    return rows


# ---------------------------------------------------------------------------------------------

def markdown(rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = {float: lambda v: f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"}
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [fmt.get(type(r.get(k)), str)(r.get(k)) if r.get(k) is not None else ""
                 for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="ops,gemm,block", help="comma list of: ops, gemm, block")
    p.add_argument("--out", default="results", help="folder for bench.json and bench.md")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    big = device.type == "cuda"
    sections = {
        "ops": lambda: bench_ops(device, [(16384, 2048), (16384, 4096)] if big else [(2048, 512)]),
        "gemm": lambda: bench_gemm(device, [(16384, 768, 3072), (16384, 3072, 768),
                                            (8192, 4096, 4096)] if big else [(512, 512, 512)]),
        "block": lambda: (bench_block(device, [1024, 2048] if big else [256], "gpt2",
                                      *((4, 2048) if big else (2, 128)))
                          + bench_block(device, [1024, 2048] if big else [256], "llama",
                                        *((4, 2048) if big else (2, 128)))),
    }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "uncommitted"
    header = (f"{device_name(device)}, torch {torch.__version__}, "
              f"{datetime.date.today().isoformat()}, commit {commit}")
    print(header)
    report = {"device": device_name(device), "date": datetime.date.today().isoformat(),
              "commit": commit, "torch": torch.__version__, "sections": {}}
    md = [f"Measured on {header}.", ""]
    for name in args.only.split(","):
        rows = sections[name]()
        report["sections"][name] = rows
        table = markdown(rows)
        print(f"\n## {name}\n\n{table}", flush=True)
        md += [f"## {name}", "", table, ""]
    os.makedirs(args.out, exist_ok=True)
    tag = "gpu" if big else "cpu"
    with open(os.path.join(args.out, f"bench_{tag}.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, f"bench_{tag}.md"), "w") as f:
        f.write("\n".join(md))
    return report


if __name__ == "__main__":
    main()
