"""Where a GPT training step's time goes, by torch.profiler (not part of the library).

    python3 notes/profile_model.py [--style=gpt2|llama] [--n_layer=12] [--n_embd=768] [--table]
                                   [--python]

train.py's GPU default model (GPT-2 small, B=16, T=1024) in bf16, int8 and int8 + fallback:
forward + backward + AdamW, 3 warm-up steps, then wall ms per step over 5 steps, GPU (kernel)
ms per step, kernel launches per step (CuPy's cuLaunchKernel and torch's cudaLaunchKernel),
host syncs per step (torch's sync debug mode, 'warn': the embedding backward syncs on its own)
and the top ops by CPU time. GPU << wall means the step is bound by the host.
"""
import argparse
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import GPT, GPTConfig  # noqa: E402


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


STYLES = {"gpt2": dict(mlp="gelu", norm="layernorm"), "llama": dict(mlp="swiglu", norm="rmsnorm")}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--style", default="gpt2")
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--table", action="store_true", help="print the top ops by CPU time")
    p.add_argument("--python", action="store_true",
                   help="cProfile 5 steps: the Python functions with the most host time")
    args = p.parse_args()
    B, T = args.batch, 1024
    for mode in ("bf16", "int8", "int8+fallback"):
        cfg = GPTConfig(n_layer=args.n_layer, n_head=args.n_embd // 64, n_embd=args.n_embd,
                        block_size=T, vocab_size=256, int8=mode != "bf16",
                        fallback=mode == "int8+fallback", **STYLES[args.style])
        torch.manual_seed(0)
        model = GPT(cfg).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        x = torch.randint(0, 256, (B, T), device="cuda")

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = model(x, x)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        host, wall = time_steps(step)                      # (host: queued, not yet run)
        waits = sum(b.waits for b in model.fb.budgets.values())
        t0 = time.perf_counter()
        for _ in range(5):
            step()
            torch.cuda.synchronize()                       # as train.py's loss read does
        synced = (time.perf_counter() - t0) / 5 * 1e3
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
            torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message).splitlines()[0][:80] for w in caught
                 if "synchroniz" in str(w.message)]
        events, gpu = profile_steps(step)
        launches = sum(e.count for e in events
                       if e.key in ("cuLaunchKernel", "cudaLaunchKernel", "cuLaunchKernelEx",
                                    "cudaLaunchKernelExC")) / 5
        print(f"## {args.style} L={args.n_layer} C={args.n_embd} B={B} T={T} {mode}: wall "
              f"{wall:.1f} ms/step ({synced:.1f} with a sync a step; host done queueing after "
              f"{host:.1f}), GPU kernels {gpu:.1f} ms/step, {launches:.0f} launches/step, "
              f"{len(syncs)} host syncs/step, {waits} plane-budget waits in 5 steps", flush=True)
        for s in sorted(set(syncs)):
            print(f"   sync: {s}")
        if args.table:
            print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))
        if args.python and mode != "bf16":
            import cProfile
            import pstats
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(5):
                step()
            torch.cuda.synchronize()
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(30)
        del model, opt
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
