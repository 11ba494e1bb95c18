"""Microbenchmark (not part of the library): do a warpgroup's FFMAs overlap the wgmma work in
flight on an H100 SM, or do they add up?

    python3 notes/wgmma_overlap.py          # on the GPU machine (CuPy + torch)
    python3 notes/wgmma_overlap.py --build  # CPU: nvcc each variant, show ptxas warnings
    python3 notes/wgmma_overlap.py --swizzle  # wgmma from the plain vs the fallback plane layout

The block-scaled GEMM (int8_gemm_sm90.py) measured its time as the *sum* of its wgmma-only and
promotion-only times (notes/gemm_sm90.md, v2). This strips the question to its bones: 132 CTAs of
two warpgroups (one per SM), operands fixed in shared memory, no loads, no barriers. Per loop
iteration each warpgroup runs a group of G = 8 K-blocks as the GEMM's consumer does: a wgmma
m64n128k32 s8 per K-block into D0 / D1 in turn, and while K-block g runs, over K-block g - 1,
F passes of one FFMA over its 64 fp32 accumulators, like the promotion:
  indep  acc = fma(acc, c, e)                 reads no D
  magic  acc = fma(c, float bits of D, acc)    the retired D buffer, no conversion
  exact  acc = fma(c, float(D), acc)           I2FP + FFMA
Each variant also runs with the wgmma alone (W) and the FFMAs alone (F). At 1 pass the tensor
work (2 x 64 x 128 x 32 MACs per K-block at 4096 MACs / clock) and the FFMA issue (256 threads x
64 / 128 lanes) are both 128 cycles per K-block per SM: perfect overlap takes max(W, F), none W + F.
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from int8_gemm_sm90_ring import SM90_PTX_SRC, _wgmma_wrapper  # noqa: E402

BODY = r"""
#ifndef WG
#define WG 1
#endif
#ifndef FF
#define FF 1                                  // 0 none, 1 indep, 2 magic, 3 exact
#endif
#ifndef G
#define G 8                                   // K-blocks per loop iteration
#endif
#ifndef NF
#define NF 1                                  // FFMA passes per element per K-block
#endif
__device__ __forceinline__ float src(int d, float acc) {
    if (FF == 2) return __int_as_float(d);
    if (FF == 3) return (float)d;
    return acc;
}
__device__ __forceinline__ void passes(float (&acc)[NACC], const int (&d)[NACC], float c, float e) {
    #pragma unroll
    for (int p = 0; p < NF; ++p) {
        #pragma unroll
        for (int i = 0; i < NACC; ++i)
            acc[i] = FF == 1 ? fmaf(acc[i], c, e) : fmaf(c, src(d[i], acc[i]), acc[i]);
    }
}
extern "C" __global__ void __launch_bounds__(256, 1) overlap_kernel(int iters, float c, float e, float* out) {
    extern __shared__ unsigned char smem_raw[];
    const unsigned base = (smem_u32(smem_raw) + 1023) & ~1023u;
    unsigned* words = (unsigned*)__cvta_shared_to_generic(base);
    for (int i = threadIdx.x; i < 32768 / 4; i += blockDim.x)
        words[i] = (i + 1) * 2654435761u ^ (blockIdx.x * 40503u);
    __syncthreads();
    fence_proxy_async();
    const int wg = threadIdx.x / 128;
#ifdef SW32          // the fallback plane stages' layout: rows of 32 bytes, 32-byte swizzle
    constexpr unsigned long long HI = (unsigned long long)((8 * 32 >> 4) | (3u << 30)) << 32;
    const unsigned long long da = HI | desc_lo(base + wg * 2048), db = HI | desc_lo(base + 16384);
#else
    const unsigned long long da = desc_at(desc_lo(base + wg * 8192)), db = desc_at(desc_lo(base + 16384));
#endif
    int d[2][NACC];
    float acc[NACC];
    #pragma unroll
    for (int i = 0; i < NACC; ++i) { acc[i] = i; d[0][i] = d[1][i] = 0x4B400000 + i; }
    // D accumulates (scale-d = 1) except for exact, whose FFMAs read every D: a wgmma whose D
    // nothing reads before the next overwrites it is dead code to ptxas, which removes it
    const int scale_d = FF != 3;
    for (int it = 0; it < iters; ++it) {         // one group of G K-blocks, as the GEMM's consume()
        if (FF == 2) {
            #pragma unroll
            for (int i = 0; i < NACC; ++i) d[0][i] = d[1][i] = 0x4B400000;
        }
        fence_operands(d[0]);
        fence_operands(d[1]);
        if (WG) { wgmma_fence(); wgmma_m64n128k32_s8(d[0], da, db, scale_d); wgmma_commit(); }
        #pragma unroll
        for (int g = 1; g < G; ++g) {
            if (WG) {
                wgmma_fence(); wgmma_m64n128k32_s8(d[g % 2], da, db, scale_d); wgmma_commit();
                wgmma_wait<1>();                 // K-block g - 1 done, g in flight
            }
            fence_operands(d[(g - 1) % 2]);
            if (FF) passes(acc, d[(g - 1) % 2], c, e);
        }
        if (WG) wgmma_wait<0>();
        fence_operands(d[(G - 1) % 2]);
        if (FF) passes(acc, d[(G - 1) % 2], c, e);
    }
    float sum = 0.f;
    #pragma unroll
    for (int i = 0; i < NACC; ++i) sum += acc[i] + (float)(d[0][i] ^ d[1][i]);
    out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}
"""
SOURCE = SM90_PTX_SRC + _wgmma_wrapper(128) + BODY
SMEM = 32768 + 1024                  # A: 2 x 64 rows, B: 128 rows, of 128 B; + alignment
CASES = [(ff, nf) for ff in (1, 2, 3) for nf in (1, 2)]
NAMES = {1: "indep", 2: "magic", 3: "exact"}


def defines(wg, ff, nf):
    return (f"WG={wg}", f"FF={ff}", f"NF={nf}")


def build():
    for ff, nf in CASES:
        for wg in (0, 1):
            with tempfile.NamedTemporaryFile("w", suffix=".cu", delete=False) as f:
                f.write(SOURCE)
            r = subprocess.run(["nvcc", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-cubin",
                                "-Xptxas", "-v", "-o", "/dev/null", f.name]
                               + [f"-D{x}" for x in defines(wg, ff, nf)], capture_output=True, text=True)
            os.unlink(f.name)
            warn = sorted({w for w in ("C7514", "C7517", "C7519", "C7510") if w in r.stderr})
            regs = [x for x in r.stderr.splitlines() if "registers" in x]
            print(NAMES[ff], nf, wg, r.returncode, warn, regs[-1].strip() if regs else r.stderr[-300:])


def main():
    import torch
    iters, sms = 1024, torch.cuda.get_device_properties(0).multi_processor_count
    out = torch.empty(sms * 256, device="cuda")
    clock = 1.98e9                      # max SM clock; cycles below assume it (an upper bound)
    if "--swizzle" in sys.argv:
        return swizzle(iters, sms, out, clock)
    for wgs in (2, 1):
        table(wgs, iters, sms, out, clock)


def swizzle(iters, sms, out, clock):
    """--swizzle: wgmma alone (no FFMA), operands as the plain stages lay them out (rows of 128
    bytes, 128-byte swizzle) against the fallback plane stages' K-block columns at QB = 32 (rows
    of 32 bytes, 32-byte swizzle), and both with the exact promotion."""
    import numpy as np
    from bench import event_ms
    from quantize import get_kernel, launch
    print("| operand layout | promotion | ms | cycles / K-block / SM |")
    print("|---|---|---|---|")
    for sw in ((), ("SW32",)):
        for ff in (0, 3):
            k = get_kernel(SOURCE, "overlap_kernel", defines(1, ff, 1) + sw)
            k.max_dynamic_shared_size_bytes = SMEM
            ms = event_ms(lambda: launch(k, (sms,), (256,), (np.int32(iters), np.float32(1.0000001),
                                                              np.float32(1e-7), out), shared_mem=SMEM))
            print(f"| {'32 B rows, 32 B swizzle' if sw else '128 B rows, 128 B swizzle'} | "
                  f"{NAMES.get(ff, 'none')} | {ms:.3f} | {ms * 1e-3 * clock / (8 * iters):.0f} |",
                  flush=True)


def table(wgs, iters, sms, out, clock):
    import numpy as np
    from bench import event_ms
    from quantize import get_kernel, launch
    print(f"\n{wgs} consumer warpgroup(s) per SM")
    print("| promotion | FFMA passes | W: wgmma only ms | F: FFMA only ms | W + F together ms |"
          " max(W,F) | W + F | overlap | cycles / K-block / SM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ff, nf in CASES:
        t = {}
        for wg, f in ((1, 0), (0, ff), (1, ff)):
            k = get_kernel(SOURCE, "overlap_kernel", defines(wg, f, nf))
            k.max_dynamic_shared_size_bytes = SMEM
            run = lambda k=k: launch(k, (sms,), (128 * wgs,), (np.int32(iters), np.float32(1.0000001),
                                                          np.float32(1e-7), out), shared_mem=SMEM)
            t[(wg, f)] = event_ms(run)
        w, f_only, both = t[(1, 0)], t[(0, ff)], t[(1, ff)]
        overlap = (w + f_only - both) / min(w, f_only)        # 1: perfect, 0: none
        cyc = both * 1e-3 * clock / (8 * iters) * 2 / wgs      # per 128 x 128 x 32 of work
        print(f"| {NAMES[ff]} | {nf} | {w:.3f} | {f_only:.3f} | {both:.3f} | {max(w, f_only):.3f} |"
              f" {w + f_only:.3f} | {overlap:.2f} | {cyc:.0f} |", flush=True)


if __name__ == "__main__":
    build() if "--build" in sys.argv else main()
