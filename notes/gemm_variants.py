"""Diagnostic variants of the int8_gemm kernel, timed in one device call (not part of the library).

    python3 notes/gemm_variants.py

Each variant is GEMM_SRC with a text substitution, compiled for QB = 32 and 128 and timed on
(M, K, N) = (16384, 8192, 2048), float out, against the shipped kernel. The substitutions follow
the v3 kernel's text (notes/gemm.md); the table in notes/gemm.md was measured on v2 (2ea6660).
"""
import sys
import os

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm as G  # noqa: E402
from quantize import get_kernel, launch, quantize  # noqa: E402
from bench import event_ms as time_ms  # noqa: E402  (CUDA events, medians)

RESCALE = """acc[mi][ni][j] = fmaf(__int_as_float(d[ni][j]) - 12582912.0f, sab[16 * mi / QB],
                                      acc[mi][ni][j]);"""
assert RESCALE in G.GEMM_SRC
VARIANTS = {
    "shipped": {},
    # the skeleton alone: rescale only one m16n8 tile (the mma.sync still run: asm volatile)
    "no_rescale": {RESCALE: "if (mi == 0 && ni == 0) " + RESCALE},
    # no global loads after the prologue (stale shared memory): the L2/DRAM-free ceiling
    "no_gmem": {"if (kt + STAGES - 1 < L.KT) load_stage(": "if (false) load_stage("},
    # cost of the conversion + scale form (one_ffma and fadd_only give wrong sums: timing only)
    "i2f": {"constexpr int MAGIC = 0x4B400000;": "constexpr int MAGIC = 0;",
            RESCALE: "acc[mi][ni][j] = fmaf((float)d[ni][j], sab[16 * mi / QB], acc[mi][ni][j]);"},
    "one_ffma": {RESCALE: "acc[mi][ni][j] = fmaf(__int_as_float(d[ni][j]), sab[16 * mi / QB], acc[mi][ni][j]);"},
    "fadd_only": {RESCALE: "acc[mi][ni][j] += __int_as_float(d[ni][j]);"},
    "stages_5_4": {"constexpr int STAGES = BK == 64 ? 4 : 3;":
                   "constexpr int STAGES = BK == 64 ? 5 : 4;"},
}


def stages_of(src, qb):
    if "STAGES = 3;" in src:
        return 3
    if "BK == 64 ? 5 : 4" in src:
        return 5 if max(64, qb) == 64 else 4
    return 4 if max(64, qb) == 64 else 3

def main():
    M, K, N = 16384, 8192, 2048
    a, b = torch.randn(M, K, device="cuda"), torch.randn(N, K, device="cuda")
    print("| variant | QB | ms | TOPS |\n|---|---|---|---|")
    for qb in (32, 128):
        ta, tb = quantize(a, qb), quantize(b, qb)
        ref = G.gemm_cuda(ta, tb)
        for name, subs in VARIANTS.items():
            src = G.GEMM_SRC
            for old, new in subs.items():
                assert old in src, (name, old)
                src = src.replace(old, new)
            k = get_kernel(src, "gemm_float_kernel", (f"QB={qb}",))
            bk = max(64, qb)
            smem = stages_of(src, qb) * 2 * 128 * bk
            k.max_dynamic_shared_size_bytes = smem
            c = torch.empty(M, N, device="cuda")
            Mp, Kp = ta.q.shape
            Np = tb.q.shape[0]
            args = (ta.q, ta.s, tb.q, tb.s, c, np.int32(M), np.int32(N), np.int32(Mp),
                    np.int32(Np), np.int32(Kp), np.int32(0), np.uint64(0))
            grid = (G.cdiv(Mp, 128) * G.cdiv(Np, 128),)

            def run():
                launch(k, grid, (256,), args, shared_mem=smem)
            t = time_ms(run)
            ok = "" if name in ("no_rescale", "no_gmem", "one_ffma", "fadd_only") else f" (max |diff| {(c - ref).abs().max().item():.3g})"
            print(f"| {name}{ok} | {qb} | {t:.3f} | {2 * M * N * K / t / 1e9:.0f} |", flush=True)


if __name__ == "__main__":
    main()
