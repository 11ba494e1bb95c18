"""A/B of the LayerNorm/RMSNorm kernels (issue 3) on the GPU, in one run:

    python notes/norm_ab.py OLD_int8_norm_cuda.py [OLD_int8_norm_bwd_cuda.py]

The old kernels: a copy of int8_norm_cuda.py from before the backward moved out (it holds both
directions), or the two files of a later copy.

1. the bandwidth ceilings the kernels are held to (copy, pure write, the casts torch does);
2. bench.py's four norm rows (same inputs, bytes and bf16 counterparts) with the old kernels,
   then with this tree's;
3. the backward alone. Kernel time is bench.kernel_ms (profiler: GPU time of the kernels only).
"""
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import bench  # noqa: E402
import int8_norm_bwd_cuda  # noqa: E402
import int8_norm_cuda  # noqa: E402
from quantize import quantize  # noqa: E402

dev = torch.device("cuda")
COPY_GBS = 3000.0


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load(fwd_path, bwd_path=None):
    """The old kernels as (forward module, backward module)."""
    fwd = load_module(fwd_path, "int8_norm_cuda_old")
    if bwd_path is None:
        return fwd, fwd
    use(fwd, int8_norm_bwd_cuda)           # the old backward imports ASYNC_SRC from its forward
    try:
        return fwd, load_module(bwd_path, "int8_norm_bwd_cuda_old")
    finally:
        use(int8_norm_cuda, int8_norm_bwd_cuda)


def use(fwd, bwd):
    """Route int8_norm (it imports the kernel modules at call time) to these two."""
    sys.modules["int8_norm_cuda"], sys.modules["int8_norm_bwd_cuda"] = fwd, bwd


def ceilings(n=16384 * 4096):
    x, y = torch.randn(n, device=dev), torch.empty(n, device=dev)
    xb, x8 = x.bfloat16(), torch.randint(-127, 128, (n,), device=dev, dtype=torch.int8)
    for name, fn, nbytes in (("copy fp32", lambda: y.copy_(x), 8 * n),
                             ("fill fp32 (write only)", lambda: y.fill_(1.0), 4 * n),
                             ("sum fp32 (read only)", lambda: x.sum(), 4 * n),
                             ("cast bf16 -> fp32", lambda: xb.float(), 6 * n),
                             ("cast int8 -> fp32", lambda: x8.float(), 5 * n),
                             ("cast fp32 -> bf16", lambda: x.bfloat16(), 6 * n)):
        ms = bench.kernel_ms(fn, reps=50)
        print(f"ceiling {name:24s} {ms * 1e3:7.1f} us {nbytes / ms / 1e6:6.0f} GB/s", flush=True)


# the backward's traffic without its arithmetic: 2 x 16 int8 in, 16 fp32 out per thread, the
# fp32 stored either as the kernels do (each thread 64 contiguous bytes, 4 x 16 B) or warp-
# coalesced (each store instruction of a warp covers 512 contiguous bytes)
RW_SRC = r"""
extern "C" __global__ void rw_kernel(const int4* __restrict__ a, const int4* __restrict__ b,
                                     float4* __restrict__ out, long long n16, int coalesced) {
    const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n16) return;
    const int4 p = __ldcs(a + i), q = __ldcs(b + i);
    const int lane = threadIdx.x & 31;
    const int w[4] = {p.x ^ q.y, p.y ^ q.z, p.z ^ q.w, p.w ^ q.x};
#pragma unroll
    for (int m = 0; m < 4; ++m) {
        const float4 f = make_float4(__int_as_float(w[m] & 0x3fffffff), (float)w[m], (float)(w[m] >> 8), (float)(w[m] >> 16));
        __stcs(coalesced ? out + (i - lane) * 4 + m * 32 + lane : out + 4 * i + m, f);
    }
}
"""


def write_patterns(n=16384 * 4096):
    import numpy as np
    from quantize import get_kernel, launch
    a = torch.randint(-127, 128, (n,), device=dev, dtype=torch.int8)
    b = torch.randint(-127, 128, (n,), device=dev, dtype=torch.int8)
    out = torch.empty(n, device=dev)
    k = get_kernel(RW_SRC, "rw_kernel", (), dev)
    for mode, name in ((0, "64 B per thread (as the kernels)"), (1, "warp-coalesced 512 B")):
        ms = bench.kernel_ms(lambda: launch(k, (n // 16 // 256,), (256,),
                                            (a, b, out, np.int64(n // 16), np.int32(mode))), reps=50)
        print(f"int8 x2 in, fp32 out, {name:34s} {ms * 1e3:7.1f} us {6 * n / ms / 1e6:6.0f} GB/s",
              flush=True)


def norm_rows(tag, M, C, bf16_ms):
    for name, f8, f16, nbytes, err in bench._op_cases(M, C, dev):
        if "norm" not in name:
            continue
        if name not in bf16_ms:
            bf16_ms[name] = bench.kernel_ms(f16, reps=50)
        k8 = bench.kernel_ms(f8, reps=50)
        gbs = nbytes / (k8 * 1e-3) / 1e9
        print(f"{tag:10s} | {name:26s} | {M}x{C} | {bf16_ms[name]:.3f} | {k8:.3f} | "
              f"{bf16_ms[name] / k8:.2f}x | {gbs:.0f} | {100 * gbs / COPY_GBS:.0f}% | "
              f"err {err:.2e}", flush=True)


def bwd_alone(tag, fwd, bwd, M, C):
    x = torch.randn(M, C, device=dev) * 2 + 0.5
    w, b = torch.rand(C, device=dev) + 0.5, torch.randn(C, device=dev) * 0.1
    dy_q = quantize(torch.randn(M, C, device=dev), stochastic=True)
    for ln in (True, False):
        _, xh_q, rstd = fwd.norm_fwd_cuda(x, w, b if ln else None, 32, 1e-5, ln)
        ms = bench.kernel_ms(lambda: bwd.norm_bwd_cuda(dy_q, xh_q, rstd, w, ln), reps=50)
        print(f"{tag:10s} bwd {'LN ' if ln else 'RMS'} {M}x{C} (with the dw/db sums) "
              f"{ms * 1e3:6.1f} us {6 * M * C / ms / 1e6:5.0f} GB/s", flush=True)


CLUSTERS = {}
_max_clusters = int8_norm_cuda.max_active_clusters


def recorded_max_clusters(kernel, K, threads, smem):
    CLUSTERS[(K, threads, smem)] = n = _max_clusters(kernel, K, threads, smem)
    return n


int8_norm_cuda.max_active_clusters = recorded_max_clusters


def main():
    print(torch.cuda.get_device_name(dev))
    ceilings()
    write_patterns()
    variants = (("old", load(*sys.argv[1:3])), ("new", (int8_norm_cuda, int8_norm_bwd_cuda)))
    for M, C in ((16384, 2048), (16384, 4096)):
        bf16_ms = {}
        for tag, (fwd, bwd) in variants:
            use(fwd, bwd)
            norm_rows(tag, M, C, bf16_ms)
        use(int8_norm_cuda, int8_norm_bwd_cuda)
        for tag, (fwd, bwd) in variants:
            bwd_alone(tag, fwd, bwd, M, C)
    print("forward grids, (K, threads, smem) -> clusters in one wave:", CLUSTERS)

if __name__ == "__main__":
    main()
