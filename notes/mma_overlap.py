"""Microbenchmark (not part of the library): how fast can a QB = 32 block-scaled mma.sync GEMM be on
this GPU if loads were free? The mma.sync counterpart of notes/wgmma_overlap.py.

    python3 notes/mma_overlap.py          # on the GPU machine (CuPy + torch)
    python3 notes/mma_overlap.py --build  # CPU: nvcc each variant, show registers / spills

CTAS CTAs of 8 warps per SM, no shared memory, no loads, no barriers: each warp holds the
fragments of a 64 x 32 warp tile (as int8_gemm_mma.py's) in registers and runs ITERS K-blocks of
32: 16 mma.sync m16n8k32 s8 (4 row slices x 4 column tiles) and, per accumulator element, the FP
work a K-block's promotion needs (64 elements a thread):
  mma     the mma.sync alone (D chained as the C of the next K-block: the tensor pipe's rate)
  ffma1   one FFMA per element alone, reading no D (acc = fma(acc, c, e)): the FP issue floor of
          any promotion
  ffma2   two per element alone (the FP work of the exact FADD + FFMA promotion)
  magic   mma.sync + one FFMA per element reading its D as a float (C = the magic integer):
          the cheapest promotion there is (it ignores the bias term)
  exact   mma.sync + FADD + FFMA per element (the shipped kernel's promotion)
A's first register changes every K-block (one XOR per slice), so no mma.sync is loop-invariant.
Reported: ms, cycles per mma.sync per SM at the 1980 MHz max clock, and the TOPS this rate
means for a GEMM (8192 int8 ops per m16n8k32).
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from int8_gemm_mma import GEMM_COMMON_SRC  # noqa: E402  (mma_m16n8k32_s8, MAGIC)

SOURCE = GEMM_COMMON_SRC + r"""
#ifndef MODE
#define MODE 0                                // 0 mma, 1 ffma1, 2 ffma2, 3 magic, 4 exact
#endif
#ifndef CTAS
#define CTAS 2
#endif
extern "C" __global__ void __launch_bounds__(256, CTAS) overlap_kernel(int iters, float c, float e, float* out) {
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned a[4][4], b[4][2];
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
        #pragma unroll
        for (int j = 0; j < 4; ++j) a[i][j] = (t + 7 * i + j) * 2654435761u;
        b[i][0] = (t ^ (13 * i)) * 40503u; b[i][1] = (t + i) * 2246822519u;
    }
    const int magic[4] = {MAGIC, MAGIC, MAGIC, MAGIC};
    float acc[4][4][4];
    int dc[4][4][4];                              // mode 0: D chained across K-blocks
    #pragma unroll
    for (int i = 0; i < 64; ++i) { acc[i / 16][(i / 4) % 4][i % 4] = i; dc[i / 16][(i / 4) % 4][i % 4] = i; }
    for (int it = 0; it < iters; ++it) {
        #pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
            a[mi][0] ^= it;
            #pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                if (MODE == 0) mma_m16n8k32_s8(dc[mi][ni], a[mi], b[ni], dc[mi][ni]);
                else if (MODE == 1 || MODE == 2) {
                    #pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        acc[mi][ni][j] = fmaf(acc[mi][ni][j], c, e);
                        if (MODE == 2) acc[mi][ni][j] = fmaf(acc[mi][ni][j], c, e);
                    }
                } else {
                    int d[4];
                    mma_m16n8k32_s8(d, a[mi], b[ni], magic);
                    #pragma unroll
                    for (int j = 0; j < 4; ++j)
                        acc[mi][ni][j] = MODE == 3 ? fmaf(c, __int_as_float(d[j]), acc[mi][ni][j])
                                                   : fmaf(__int_as_float(d[j]) - 12582912.0f, c, acc[mi][ni][j]);
                }
            }
        }
    }
    float sum = 0.f;
    #pragma unroll
    for (int i = 0; i < 64; ++i) sum += acc[i / 16][(i / 4) % 4][i % 4] + (float)dc[i / 16][(i / 4) % 4][i % 4];
    out[t] = sum;
}
"""
MODES = {"mma": 0, "ffma1": 1, "ffma2": 2, "magic": 3, "exact": 4}


def build():
    for ctas in (2, 1):
        for name, mode in MODES.items():
            with tempfile.NamedTemporaryFile("w", suffix=".cu", delete=False) as f:
                f.write(SOURCE)
            r = subprocess.run(["nvcc", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-cubin",
                                "-Xptxas", "-v", "-o", "/dev/null", f.name, f"-DMODE={mode}",
                                f"-DCTAS={ctas}"], capture_output=True, text=True)
            os.unlink(f.name)
            regs = [x for x in r.stderr.splitlines() if "registers" in x or "spill" in x]
            print(ctas, name, r.returncode, " ".join(x.strip() for x in regs) or r.stderr[-300:])


def main():
    import numpy as np
    import torch
    from bench import event_ms
    from quantize import get_kernel, launch
    iters, sms, clock = 4096, torch.cuda.get_device_properties(0).multi_processor_count, 1.98e9
    print(torch.cuda.get_device_name(), f"{sms} SMs, {iters} K-blocks a warp; cycles at {clock / 1e9} GHz")
    for ctas in (2, 1):
        out = torch.empty(sms * ctas * 256, device="cuda")
        print(f"\n{ctas} CTA(s) of 8 warps per SM")
        print("| mode | ms | cycles per mma.sync per SM | GEMM TOPS at this rate |\n|---|---|---|---|")
        for name, mode in MODES.items():
            k = get_kernel(SOURCE, "overlap_kernel", (f"MODE={mode}", f"CTAS={ctas}"))
            run = lambda k=k: launch(k, (sms * ctas,), (256,), (np.int32(iters), np.float32(1.0000001),
                                                                np.float32(1e-7), out))
            ms = event_ms(run, reps=5)
            mmas_per_sm = ctas * 8 * iters * 16
            cyc = ms * 1e-3 * clock / mmas_per_sm
            tops = sms * mmas_per_sm * 8192 / (ms * 1e-3) / 1e12
            print(f"| {name} | {ms:.3f} | {cyc:.2f} | {tops:.0f} |", flush=True)


if __name__ == "__main__":
    build() if "--build" in sys.argv else main()
