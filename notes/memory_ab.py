"""A/B of the dequantize and GELU/SwiGLU kernels (issue 3) on the GPU, in one run:

    python notes/memory_ab.py OLD_DIR

OLD_DIR holds older copies of quantize_cuda.py and int8_gelu_cuda.py. For bench.py's rows
(same inputs, same hand-counted bytes) and for each backward alone, prints the kernel time
(torch.profiler: GPU time of the kernels only), GB/s and % of the 3.0 TB/s copy, for the old
kernels and this tree's, with the GELU/SwiGLU kernels at several BLOCKS_PER_GROUP.
Also checks old against new on the same inputs.
"""
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import bench  # noqa: E402
import int8_gelu_cuda  # noqa: E402
import quantize_cuda  # noqa: E402
from int8_gelu import gelu_bwd, gelu_fwd, swiglu_bwd, swiglu_fwd  # noqa: E402
from quantize import dequantize, quantize  # noqa: E402

dev = torch.device("cuda")
COPY_GBS = 3000.0


def kernel_ms(fn):
    return bench.kernel_ms(fn, reps=50)


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cases(M, C):
    """(name, fn, bytes) as bench._op_cases counts them, plus each backward alone."""
    N, S = M * C, 4 * M * C // 1024
    h_q = quantize(torch.randn(M, C, device=dev) * 3)
    hh_q = quantize(torch.randn(M, 2 * C, device=dev) * 3)
    dg_q = quantize(torch.randn(M, C, device=dev), stochastic=True)
    return [("dequantize int8->fp32", lambda: dequantize(h_q), N + 4 * N + S),
            ("gelu fwd", lambda: gelu_fwd(h_q), 2 * N + 2 * S),
            ("gelu bwd alone", lambda: gelu_bwd(dg_q, h_q), 3 * N + 3 * S),
            ("gelu fwd+bwd", lambda: (gelu_fwd(h_q), gelu_bwd(dg_q, h_q)), 5 * N + 5 * S),
            ("swiglu fwd", lambda: swiglu_fwd(hh_q), 3 * N + 3 * S),
            ("swiglu bwd alone", lambda: swiglu_bwd(dg_q, hh_q), 5 * N + 5 * S),
            ("swiglu fwd+bwd", lambda: (swiglu_fwd(hh_q), swiglu_bwd(dg_q, hh_q)),
             3 * N + 5 * N + 8 * S)], (h_q, hh_q, dg_q)


def use(qc, gc):
    """Route the public names to these kernel modules (they import them at call time)."""
    sys.modules["quantize_cuda"], sys.modules["int8_gelu_cuda"] = qc, gc


def compare(old, new, inputs):
    h_q, hh_q, dg_q = inputs
    use(*old)
    ref = [dequantize(h_q), gelu_fwd(h_q), swiglu_fwd(hh_q),
           gelu_bwd(dg_q, h_q, stochastic=False), swiglu_bwd(dg_q, hh_q, stochastic=False)]
    use(*new)
    got = [dequantize(h_q), gelu_fwd(h_q), swiglu_fwd(hh_q),
           gelu_bwd(dg_q, h_q, stochastic=False), swiglu_bwd(dg_q, hh_q, stochastic=False)]
    print("dequantize old == new:", torch.equal(ref[0], got[0]))
    for name, a, b in zip(("gelu fwd", "swiglu fwd", "gelu bwd RTN", "swiglu bwd RTN"),
                          ref[1:], got[1:]):
        dq = (a.q.int() - b.q.int()).abs()
        ds = ((a.s - b.s).abs() / a.s.abs().clamp_min(1e-30)).max().item()
        print(f"{name} old vs new: {(dq > 0).float().mean().item():.2e} of q differ "
              f"(max {dq.max().item()}), scales within {ds:.1e}")


def main():
    print(torch.cuda.get_device_name(dev))
    n = 16384 * 4096
    x, y = torch.randn(n, device=dev), torch.empty(n, device=dev)
    ms = kernel_ms(lambda: y.copy_(x))
    print(f"ceiling copy fp32 {ms * 1e3:.1f} us {8 * n / ms / 1e6:.0f} GB/s")
    old_dir = sys.argv[1]
    old_qc = load(os.path.join(old_dir, "quantize_cuda.py"), "quantize_cuda_old")
    old_gc = load(os.path.join(old_dir, "int8_gelu_cuda.py"), "int8_gelu_cuda_old")
    new = (quantize_cuda, int8_gelu_cuda)
    default = dict(int8_gelu_cuda.BLOCKS_PER_GROUP)
    # variants: blocks per group (BPG) for all four kernels at once, then the default mix
    variants = [("old", (old_qc, old_gc), None)] + [
        (f"BPG={n}", new, {op: n for op in default}) for n in (1, 2, 4)] + [
        ("default " + ",".join(str(v) for v in default.values()), new, default)]
    print("| variant | op | shape | int8 kernel ms | GB/s | % of copy |")
    print("|---|---|---|---|---|---|")
    for M, C in ((16384, 2048), (16384, 4096)):
        rows, inputs = cases(M, C)
        if C == 2048:
            compare((old_qc, old_gc), new, inputs)
        for tag, mods, bpg in variants:
            use(*mods)
            if bpg is not None:
                int8_gelu_cuda.BLOCKS_PER_GROUP = bpg
            for name, fn, nbytes in rows:
                if name.startswith("dequantize") and tag.startswith("BPG"):
                    continue
                k8 = kernel_ms(fn)
                gbs = nbytes / (k8 * 1e-3) / 1e9
                print(f"| {tag} | {name} | {M}x{C} | {k8:.4f} | {gbs:.0f} | "
                      f"{100 * gbs / COPY_GBS:.1f} |", flush=True)
    use(*new)


if __name__ == "__main__":
    main()
