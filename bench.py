"""
Speed and memory of the INT8 operators and transformer blocks against bf16 PyTorch.

    python bench.py                      # everything that fits in a few minutes on this device
    python bench.py --only=ops,block     # sections: ops, gemm, fallback, block
    python bench.py --out=results        # where the JSON and markdown tables go
    python bench.py --block_qblocks=32   # block rows at QB = 32 only (default: 32 and 128)

Every timing is the median of many runs after a warm-up, with fresh random inputs (never
zeros); on a GPU with CUDA events, on the CPU with perf_counter. bf16 is measured in the same
run. Every int8 result is checked against its float counterpart before it is timed.

Memory held for backward is the bytes of the tensors autograd saves (counted through
saved-tensor hooks, parameters excluded), so it is measured the same way on CPU and GPU; on a
GPU the peak memory of a step is reported too (above what stays allocated between steps).
"""
import argparse
import datetime
import json
import math
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
from quantize import check_qblock, dequantize, quantize


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

def _op_cases(M, C, device):
    """(name, int8 fn, bf16 fn, bytes the int8 op must move, rel. error vs float) per op at (M, C).

    Bytes are counted by hand: each input read once, each output written once (block scales and
    per-row values included). bf16 counterparts are what a bf16 model runs in the op's place.
    """
    from int8_gelu import gelu_bwd, gelu_tanh, swiglu_bwd, swiglu_fwd
    from int8_norm import layernorm_bwd, rmsnorm_bwd, rmsnorm_fwd
    N, S = M * C, 4 * M * C // 1024                            # elements, bytes of one scale grid
    x = torch.randn(M, C, device=device) * 2 + 0.5             # (M, C) fp32 residual
    xb = x.bfloat16()
    w, b = torch.rand(C, device=device) + 0.5, torch.randn(C, device=device) * 0.1
    wb, bb = w.bfloat16(), b.bfloat16()
    h_q = quantize(torch.randn(M, C, device=device) * 3)       # (M, C) int8, GELU input
    hh_q = quantize(torch.randn(M, 2 * C, device=device) * 3)  # (M, 2C) int8, [gate | up]
    dg_q = quantize(torch.randn(M, C, device=device), stochastic=True)
    hb, hhb = dequantize(h_q).bfloat16(), dequantize(hh_q).bfloat16()
    dyb = torch.randn(M, C, device=device, dtype=torch.bfloat16)

    def bf16_bwd(f, *inputs):                                  # forward + backward in bf16
        leaves = [t.detach().requires_grad_() for t in inputs]
        return lambda: f(*leaves).backward(dyb)

    def swiglu_bf16(hh):
        gate, up = hh.chunk(2, dim=-1)
        return F.silu(gate) * up

    ln = lambda t, w_, b_: F.layer_norm(t, (C,), w_, b_)       # noqa: E731
    rms = lambda t, w_: F.rms_norm(t, (C,), w_)                # noqa: E731
    ln_out = layernorm_fwd(x, w, b)
    rms_out = rmsnorm_fwd(x, w)
    return [
        ("quantize RTN fp32->int8", lambda: quantize(x), lambda: x.bfloat16(), 4 * N + N + S,
         rel_err(dequantize(quantize(x)), x)),
        ("quantize SR fp32->int8", lambda: quantize(x, stochastic=True), lambda: x.bfloat16(),
         4 * N + N + S, rel_err(dequantize(quantize(x, stochastic=True)), x)),
        ("quantize RTN + transposed copy", lambda: quantize(x, with_t=True),
         lambda: x.bfloat16(), 4 * N + 2 * N + 2 * S,
         rel_err(dequantize(quantize(x, with_t=True)[1]), x.t())),
        ("dequantize int8->fp32", lambda: dequantize(h_q), lambda: hb.float(), N + 4 * N + S,
         0.0),
        ("transpose int8", lambda: h_q.t(), lambda: hb.t().contiguous(), 2 * N + 2 * S, 0.0),
        ("layernorm fwd, int8 out", lambda: layernorm_fwd(x, w, b), lambda: ln(xb, wb, bb),
         4 * N + 2 * N + 2 * S + 4 * M, rel_err(dequantize(ln_out[0]), ln(x, w, b))),
        ("layernorm fwd+bwd", lambda: layernorm_bwd(dg_q, *layernorm_fwd(x, w, b)[1:], w),
         bf16_bwd(ln, xb, wb, bb), (6 * N + 2 * S + 4 * M) + (N + N + 4 * N + 2 * S + 4 * M),
         rel_err(layernorm_bwd(dg_q, *ln_out[1:], w)[0],
                 torch.func.vjp(lambda t: ln(t, w, b), x)[1](dequantize(dg_q))[0])),
        ("rmsnorm fwd, int8 out", lambda: rmsnorm_fwd(x, w), lambda: rms(xb, wb),
         4 * N + 2 * N + 2 * S + 4 * M, rel_err(dequantize(rms_out[0]), rms(x, w))),
        ("rmsnorm fwd+bwd", lambda: rmsnorm_bwd(dg_q, *rmsnorm_fwd(x, w)[1:], w),
         bf16_bwd(rms, xb, wb), (6 * N + 2 * S + 4 * M) + (6 * N + 2 * S + 4 * M),
         rel_err(rmsnorm_bwd(dg_q, *rms_out[1:], w)[0],
                 torch.func.vjp(lambda t: rms(t, w), x)[1](dequantize(dg_q))[0])),
        ("gelu fwd, int8 in/out", lambda: gelu_fwd(h_q), lambda: F.gelu(hb, approximate="tanh"),
         2 * N + 2 * S, rel_err(dequantize(gelu_fwd(h_q)), gelu_tanh(dequantize(h_q)))),
        ("gelu fwd+bwd", lambda: (gelu_fwd(h_q), gelu_bwd(dg_q, h_q)),
         bf16_bwd(lambda t: F.gelu(t, approximate="tanh"), hb), 2 * N + 3 * N + 5 * S,
         rel_err(dequantize(gelu_bwd(dg_q, h_q)),
                 torch.func.vjp(gelu_tanh, dequantize(h_q))[1](dequantize(dg_q))[0])),
        ("swiglu fwd, int8 in/out (h: M x 2C)", lambda: swiglu_fwd(hh_q),
         lambda: swiglu_bf16(hhb), 3 * N + 3 * S,
         rel_err(dequantize(swiglu_fwd(hh_q)), swiglu_bf16(dequantize(hh_q)))),
        ("swiglu fwd+bwd", lambda: (swiglu_fwd(hh_q), swiglu_bwd(dg_q, hh_q)),
         bf16_bwd(swiglu_bf16, hhb), 3 * N + 5 * N + 8 * S,
         rel_err(dequantize(swiglu_bwd(dg_q, hh_q)),
                 torch.func.vjp(swiglu_bf16, dequantize(hh_q))[1](dequantize(dg_q))[0])),
    ]


def event_ms(fn, reps=20):
    """CUDA time per call: the median over 5 runs of reps back-to-back calls between two CUDA
    events (launch overhead amortised; the notes/ scripts time with it too)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def kernel_ms(fn, reps=20):
    """Mean GPU time per call of the kernels fn launches (torch.profiler sees CuPy's too), ms.
    Unlike timeit this leaves out the host time of the call (Python, launch overhead)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    us = sum(getattr(e, "self_device_time_total", 0) for e in prof.key_averages())
    return us / reps / 1e3


def bench_ops(device, sizes, peak_gbs=3000.0):
    """Memory-bound ops against bf16 PyTorch: time per call (host included, events), GPU time
    of the kernels alone (profiler), achieved GB/s on the kernel time (bytes counted by hand,
    read + write) and its % of the device-to-device copy bandwidth (~3.0 TB/s on the H100)."""
    rows = []
    for M, C in sizes:
        for name, f_int8, f_bf16, nbytes, err in _op_cases(M, C, device):
            t8, t16 = timeit(f_int8, warmup=5, reps=50), timeit(f_bf16, warmup=5, reps=50)
            row = dict(op=name, shape=f"{M}x{C}", bf16_ms=t16, int8_ms=t8, speedup=t16 / t8)
            if device.type == "cuda":
                k8, k16 = kernel_ms(f_int8), kernel_ms(f_bf16)
                gbs = nbytes / (k8 * 1e-3) / 1e9
                row.update(bf16_kernel_ms=k16, int8_kernel_ms=k8, kernel_speedup=k16 / k8,
                           GBps=gbs, pct_of_copy=100 * gbs / peak_gbs)
            rows.append(dict(row, rel_err=err))
    return rows


# ---------------------------------------------------------------------------------------------
# GEMM

def bench_gemm(device, shapes, qblocks=(32, 128)):
    """The three GEMMs of a linear layer (M tokens, K in, N out) as C = A @ B^T on int8 blocks:
    fwd Y = X W^T (int8 out, RTN), dgrad dX = dY W (int8 out, stochastic rounding), wgrad
    dW = dY^T X (fp32 out). Against cuBLAS bf16 (torch.matmul in the layer's own layout) and
    torch._int_mm (plain int8, no scales). Operands are made directly in the kernel's TN layout
    (QTensor.t() is not timed). rel_err: the first 256 rows of C (dequantized) against the
    reference block-scaled product, checked before timing. Each kernel gets its row: mma.sync
    (% peak of its ~1.3 POPS ceiling) and, on sm_90, wgmma (the default: magic-number promotion at
    QB = 32 and 64) and wgmma_exact (% of ~2.0 POPS); the ping-pong variant's numbers are in
    notes/gemm_sm90.md."""
    from int8_gemm import gemm_cuda, gemm_ref
    from quantize import QTensor
    cuda = device.type == "cuda"
    kernels = [(None, 1300)]                          # CPU: the reference, through gemm()
    if cuda:                                          # (kernel, its int8 ceiling in TOPS)
        kernels = [("mma", 1300)] + ([("wgmma", 2000), ("wgmma_exact", 2000)] if
                                     torch.cuda.get_device_capability(device) == (9, 0) else [])

    time_ms = event_ms if cuda else (lambda fn: timeit(fn, 1, 3))

    rows = []
    for M, K, N in shapes:
        for name, m, n, k, out in (("fwd", M, N, K, "int8"), ("dgrad", M, K, N, "int8_sr"),
                                   ("wgrad", N, K, M, "float")):
            a, b = torch.randn(m, k, device=device), torch.randn(n, k, device=device)
            ab, bb = a.bfloat16(), b.bfloat16()
            if name == "fwd":                                     # X (M, K) @ W^T
                f16 = lambda: ab @ bb.t()
            elif name == "dgrad":                                 # dY (M, N) @ W (N, K)
                wn = bb.t().contiguous()
                f16 = lambda: ab @ wn
            else:                                                 # dY^T (N, M) @ X (M, K)
                dy, x = ab.t().contiguous(), bb.t().contiguous()
                f16 = lambda: dy.t() @ x
            t16 = time_ms(f16)
            a8, b8 = a.to(torch.int8), b.to(torch.int8)
            try:
                t_int = time_ms(lambda: torch._int_mm(a8, b8.t())) if cuda else None
            except RuntimeError:
                t_int = None
            for QB, (kern, peak) in ((QB, kp) for QB in qblocks for kp in kernels):
                ta, tb = quantize(a, QB), quantize(b, QB)
                run = ((lambda: gemm_cuda(ta, tb, out=out, kernel=kern)) if kern
                       else (lambda: gemm(ta, tb, out=out)))
                c = run()
                r = min(m, 256)
                head = QTensor(ta.q[:r], ta.s[:r // QB], torch.Size((r, k)), QB)
                c_head = (c if out == "float" else dequantize(c))[:r]
                err = rel_err(c_head, gemm_ref(head, tb))
                if not err < 2e-2:
                    raise AssertionError(f"gemm {name} {m}x{k}x{n} QB={QB} {kern}: rel err {err:.3g}")
                t8 = time_ms(run)
                tops = 2 * m * n * k / (t8 * 1e-3) / 1e12
                rows.append(dict(op=f"gemm {name}, {out} out", kernel=kern or "ref", QB=QB,
                                 layer=f"{M}x{K}x{N}", mkn=f"{m}x{k}x{n}", bf16_ms=t16,
                                 int_mm_ms=t_int, int8_ms=t8, speedup=t16 / t8,
                                 vs_int_mm=t_int / t8 if t_int else None,
                                 TOPS=tops, pct_peak=100 * tops / peak, rel_err=err))
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


def bench_fallback(device, shapes, fracs=(0.0, 0.01, 0.05, 0.2, 1.0), qblock=32):
    """The fused fallback GEMM (forward, int8 out) against the plain one, by flagged fraction:
    activations X (M, K) get a second plane on the 'topk' rule's fraction of blocks, in two
    patterns. uniform: the largest absmax of random data, flags spread uniformly, the worst case
    for the kernel, which runs a plane K-block for a whole 64- or 128-row tile (at 5% flagged,
    1 - 0.95^2 = 9.75% of the 64-row halves' K-blocks hold a flag). channels: outlier channels
    (the LLM.int8 kind: a few channels large in every token), here whole K-block columns of X
    scaled 8x, so topk flags whole columns and the plane's K-blocks hold a flag in every row.
    stages: the fraction of (128-row tile, 128-K stage) pairs that run again.
    GPU time of the kernels (bench.kernel_ms on CUDA), the fallback's extra work included (the
    K-block lists), the quantizer not. overhead: against the plain default GEMM (plain_ms: on
    Hopper the magic-number promotion, which the fallback kernel keeps for its plain K-blocks;
    its plane's K-blocks promote exactly); plain_exact_ms: the plain GEMM with the exact
    promotion, for reference. 0% flagged: no plane, so gemm() runs the plain kernel. Then
    plane_rows: what building the plane costs the quantizer."""
    from fallback import quantize_fallback
    from int8_gemm import gemm, gemm_cuda
    from int8_gemm_sm90_plane import flagged_stages
    from quantize import second_plane
    cuda = device.type == "cuda"
    sm90 = cuda and torch.cuda.get_device_capability(device) == (9, 0)
    time_ms = kernel_ms if cuda else (lambda fn: timeit(fn, 1, 3))
    rows = []
    for M, K, N in shapes:
        x, w = torch.randn(M, K, device=device), torch.randn(N, K, device=device)
        tw = quantize(w, qblock)
        plain = quantize(x, qblock)

        def plain_ms(kernel):
            return time_ms(lambda: gemm_cuda(plain, tw, out="int8", kernel=kernel) if cuda
                           else gemm(plain, tw, out="int8"))
        t_plain = plain_ms("auto")
        t_exact = plain_ms("wgmma_exact") if sm90 else t_plain
        t_plain = min(t_plain, plain_ms("auto"))   # (the section's first timing ran ~5% slow)
        cases = [("uniform", frac) for frac in fracs]
        cases += [("channels", frac) for frac in fracs if 0 < frac < 1]
        for pattern, frac in cases:
            xp = x if pattern == "uniform" else outlier_channels(x, qblock, frac)
            t, flagged = quantize_fallback(xp, qblock, "topk", frac)
            ms = time_ms(lambda: gemm(t, tw, out="int8"))
            stages = None
            if t.has_plane:
                _, count = flagged_stages(second_plane(t)[1], qblock)
                stages = count.sum().item() / (count.numel() * -(-K // 128))
            rows.append(dict(op="fallback gemm fwd, int8 out", mkn=f"{M}x{K}x{N}", QB=qblock,
                             pattern=pattern, flagged=flagged, stages=stages, plain_ms=t_plain,
                             plain_exact_ms=t_exact, fallback_ms=ms, overhead=ms / t_plain - 1))
    for M, K, _ in shapes:
        rows += plane_rows(device, M, K, qblock)
    return rows


def outlier_channels(x, qblock, frac):
    """x with the channels of ceil(frac * K / QB) evenly spaced K-block columns scaled 8x: the
    blocks 'topk' at frac then flags are (nearly) whole columns."""
    kb = x.shape[1] // qblock
    cols = torch.linspace(0, kb - 1, max(1, math.ceil(frac * kb)), device=x.device).round().long()
    scale = torch.ones(kb, device=x.device, dtype=x.dtype)
    scale[cols] = 8.0
    return x * scale.repeat_interleave(qblock)[: x.shape[1]]


def plane_rows(device, M, K, qblock):
    """Quantizing an activation with its fallback plane ('median' 2.5, a warm PlaneBudget, GLU-like
    data: ~2% of blocks flagged) against plain quantize: wall time per call (host included) and
    GPU time, on the CUDA kernels (fallback_cuda.py) and on the torch path they replace."""
    from fallback import PlaneBudget, Spec, gathered_blocks, plane_with_flags, quantize_with_plane
    from fallback import scale_flags
    from quantize import pad_2d
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(M, K, device=device, generator=g)
    spikes = torch.rand(M, K, device=device, generator=g) < 0.02 / qblock ** 2
    x = torch.where(spikes, 300 * x, x)
    spec = Spec("median", 2.5, PlaneBudget())

    def torch_path():
        t = quantize(x, qblock)
        return plane_with_flags(t, scale_flags(t.s), gathered_blocks(pad_2d(x, qblock), qblock),
                                spec)
    cases = [("plain quantize", lambda: quantize(x, qblock)),
             ("quantize + plane, kernels", lambda: quantize_with_plane(x, qblock, spec)),
             ("quantize + plane, torch ops", torch_path)]
    rows = []
    for name, fn in cases:
        t = fn()
        flagged = (t.slot >= 0).float().mean().item() if t.has_fallback else None
        ms = timeit(fn, warmup=5, reps=50)
        gpu = kernel_ms(fn) if device.type == "cuda" else None
        rows.append(dict(op=name, mkn=f"{M}x{K}", QB=qblock, flagged=flagged, wall_ms=ms,
                         gpu_ms=gpu))
    return rows


BLOCK_MODES = ("bf16", "bf16 compile", "fp8 torchao compile", "int8", "int8+fallback")


def block_modes(qblocks):
    """BLOCK_MODES with the int8 modes also at each larger block edge: "int8 QB128" is the int8
    block with 128 x 128 blocks (plain "int8" is QB = 32, Jetfire's)."""
    extra = [f"{m} QB{qb}" for qb in qblocks if qb != 32 for m in ("int8", "int8+fallback")]
    return BLOCK_MODES + tuple(extra)


def mode_qblock(mode):
    """("int8", 128) for "int8 QB128"; a mode without a suffix is QB = 32."""
    base, _, qb = mode.partition(" QB")
    return base, int(qb) if qb else 32


def float8_available():
    """torchao's float8 training (the Hopper peer: tensorwise-scaled fp8 GEMMs, torch.compile'd)
    runs on sm_89+ when torchao is importable; a missing torchao just drops its rows."""
    try:
        from torchao.float8 import convert_to_float8_training  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def make_block(style, C, T, mode, device):
    """The block bench.py times: GPT-2 (LayerNorm + GELU) or Llama (RMSNorm + SwiGLU) style, in
    one of block_modes(). Compiled modes compile the bf16 block (fp8: after torchao swaps its
    nn.Linear layers for Float8Linear)."""
    base, qblock = mode_qblock(mode)
    cfg = GPTConfig(n_embd=C, n_head=max(1, C // 128), block_size=T,
                    mlp="gelu" if style == "gpt2" else "swiglu",
                    norm="layernorm" if style == "gpt2" else "rmsnorm",
                    int8=base.startswith("int8"), fallback=base == "int8+fallback", qblock=qblock)
    torch.manual_seed(0)
    block = Block(cfg, FallbackConfig(cfg.fallback, cfg.fallback_rule, cfg.fallback_threshold),
                  0).to(device)
    block.spec.fuse_wgrad = True              # as train.py runs it (no DDP): Int8Spec.wgrad
    if mode.startswith("fp8"):
        from torchao.float8 import convert_to_float8_training
        convert_to_float8_training(block)
    if not mode.endswith("compile"):
        return block
    # every block here is a new module: dynamo's recompile limit (8) would quietly run the later
    # ones eager, so each compiled block starts from a clean cache
    torch._dynamo.reset()
    return torch.compile(block)


def block_case(style, C, B, T, mode, device):
    """make_block's block with a random input and output gradient, and two closures: one
    training step (forward + backward) and the forward alone, under bf16 autocast on the GPU
    (what a training step holds)."""
    block = make_block(style, C, T, mode, device)
    x = torch.randn(B, T, C, device=device, requires_grad=True)
    dout = torch.randn(B, T, C, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def forward():
        with amp:
            return block(x)

    def step():
        forward().backward(dout)
    return block, step, forward


GRAPHED_MODES = ("bf16", "int8", "int8+fallback")     # the eager ones: compiled code is not captured


def graphed_step(step, block, device):
    """step() captured in a CUDA graph as train.py's micro-step is (cuda_graph.capture_step; the
    fallback's pending counts read before the capture). Returns the graph's replay: one call
    queues the whole step, so the time is the GPU's, not Python's."""
    from cuda_graph import capture_step
    _, graph, _ = capture_step(step, device, torch.cuda.Stream(), block.spec.fb.flush)
    return graph.replay


def bench_block(device, widths, style, B, T, modes=BLOCK_MODES):
    """Forward + backward of one block per mode: median step ms, speedup against the faster of
    bf16 eager and bf16 compile, memory held for backward (saved tensors) and the step's peak
    (on a GPU: the peak allocation during a step above what stays allocated between steps, i.e.
    parameters, gradients and inputs, which every mode keeps in fp32 alike).
    On a GPU, the eager modes (GRAPHED_MODES) are timed a second time as a CUDA graph
    (graphed_step): graphed ms, and graphed speedup against the faster of graphed bf16 and bf16
    compile. The eager times include Python queueing the step's kernels, which at widths up to
    2048 takes longer than the GPU's work for the int8 modes (hundreds of small kernels) and
    varies from run to run; the graphed times are the GPU's alone, as train.py runs its step.
    Compiled modes need a GPU (and torchao for fp8); on the CPU they are left out."""
    rows = []
    if device.type != "cuda":
        modes = [m for m in modes if not m.endswith("compile")]
    elif not float8_available():
        modes = [m for m in modes if not m.startswith("fp8")]
    for C in widths:
        results = {}
        for mode in modes:
            block, step, forward = block_case(style, C, B, T, mode, device)
            step()                     # compiles, if the mode does, before anything is counted
            y, held = saved_bytes(forward, block)
            del y
            if device.type == "cuda":
                torch.cuda.synchronize()
                between = torch.cuda.memory_allocated()   # parameters, gradients, inputs
                torch.cuda.reset_peak_memory_stats()
            ms = timeit(step, warmup=2, reps=10)
            peak = ((torch.cuda.max_memory_allocated() - between) / 2**20
                    if device.type == "cuda" else None)
            del block, step, forward
            graphed = None
            if device.type == "cuda" and mode_qblock(mode)[0] in GRAPHED_MODES:
                # a fresh block whose first step is graphed_step's (an autograd node kept from
                # an eager step on the default stream would make the capture fail)
                block, step, _ = block_case(style, C, B, T, mode, device)
                replay = graphed_step(step, block, device)
                graphed = timeit(replay, warmup=3, reps=20)
                del replay, block, step
            results[mode] = (ms, held, peak, graphed)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        base = min(results[m][0] for m in ("bf16", "bf16 compile") if m in results)
        base_held, base_peak = results["bf16"][1:3]
        inf = float("inf")
        base_graphed = min(results["bf16"][3] or inf,
                           results["bf16 compile"][0] if "bf16 compile" in results else inf)
        for mode, (ms, held, peak, graphed) in results.items():
            rows.append(dict(op=f"{style} block fwd+bwd, {mode}", shape=f"B={B} T={T} C={C}",
                             ms=ms, speedup=base / ms, held_MiB=held / 2**20,
                             held_ratio=base_held / held if held else None, peak_MiB=peak,
                             peak_ratio=base_peak / peak if peak else None, graphed_ms=graphed,
                             graphed_speedup=base_graphed / graphed if graphed else None))
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
    p.add_argument("--only", default="ops,gemm,fallback,block",
                   help="comma list of: ops, gemm, fallback, block")
    p.add_argument("--out", default="results", help="folder for bench.json and bench.md")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--widths", default=None,
                   help="block widths, comma list (default 1024,2048,4096 on a GPU, 256 on CPU)")
    p.add_argument("--block_qblocks", default="32,128",
                   help="block edges of the int8 block rows, comma list of 32, 64, 128 (32 is "
                        "always run: the plain int8 rows)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    big = device.type == "cuda"
    widths = ([int(w) for w in args.widths.split(",")] if args.widths
              else [1024, 2048, 4096] if big else [256])
    qblocks = [int(q) for q in args.block_qblocks.split(",")]
    for qb in qblocks:
        check_qblock(qb)
    sections = {
        "ops": lambda: bench_ops(device, [(16384, 2048), (16384, 4096)] if big else [(2048, 512)]),
        "gemm": lambda: bench_gemm(device, [(16384, 768, 3072), (16384, 3072, 768),
                                            (16384, 2048, 8192), (16384, 8192, 2048),
                                            (8192, 4096, 4096)] if big else [(256, 256, 256)],
                                   (32, 64, 128) if big else (32,)),
        "fallback": lambda: bench_fallback(device, [(16384, 2048, 8192), (16384, 8192, 2048)]
                                           if big else [(256, 256, 256)]),
        "block": lambda: [row for style in ("gpt2", "llama")
                          for row in bench_block(device, widths, style,
                                                 *((4, 2048) if big else (2, 128)),
                                                 block_modes(qblocks))],
    }
    # a copy of the tree without .git (a rented GPU box) names its commit in BENCH_COMMIT
    commit = os.environ.get("BENCH_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() \
        or "unknown"
    header = (f"{device_name(device)}, torch {torch.__version__}, "
              f"{datetime.date.today().isoformat()}, commit {commit}")
    print(header)
    report = {"device": device_name(device), "date": datetime.date.today().isoformat(),
              "commit": commit, "torch": torch.__version__, "sections": {}}
    md = [f"Measured on {header}.", ""]
    os.makedirs(args.out, exist_ok=True)
    tag = "gpu" if big else "cpu"
    for name in args.only.split(","):
        rows = sections[name]()
        report["sections"][name] = rows
        table = markdown(rows)
        print(f"\n## {name}\n\n{table}", flush=True)
        md += [f"## {name}", "", table, ""]
        # written after every section, so that a run cut short keeps what it measured
        with open(os.path.join(args.out, f"bench_{tag}.json"), "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(args.out, f"bench_{tag}.md"), "w") as f:
            f.write("\n".join(md))
    return report


if __name__ == "__main__":
    main()
