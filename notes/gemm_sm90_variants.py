"""Diagnostic variants of the wgmma kernel (int8_gemm_sm90.py), timed in one device call (not part
of the library).

    python3 notes/gemm_sm90_variants.py

Each variant is SM90_SRC with a text substitution, compiled for QB = 32 and 128 and timed on
(M, K, N) = (16384, 8192, 2048), float out, against the shipped kernel (timing only: several
variants compute wrong sums on purpose).
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90 as S  # noqa: E402
from quantize import get_kernel, launch, quantize  # noqa: E402
from bench import event_ms as time_ms  # noqa: E402  (CUDA events, medians)

PROMOTE = "for (int i = 0; i < NACC; ++i) acc[i] = fmaf(__int2float_rn(d[i]), sab[(i / 4) * 8 / QB], acc[i]);"
COPY = "for (int i = 0; i < 8; ++i) {\n            const int m = m0"
FENCE = "(kt / STAGES) & 1); fence_proxy_async(); }"
assert PROMOTE in S.SM90_SRC and COPY in S.SM90_SRC and FENCE in S.SM90_SRC
VARIANTS = {
    "shipped": ({}, 5),
    # one FFMA per element (no I2FP): wrong sums, measures the FP issue cost
    "ffma_only": ({PROMOTE: PROMOTE.replace("__int2float_rn(d[i])", "__int_as_float(d[i])")}, 5),
    # no global loads after the first ring fill (stale smem): the L2/DRAM-free ceiling
    "no_gmem": ({COPY: COPY.replace("i < 8;", "i < (kt < STAGES ? 8 : 0);")}, 5),
    # no fence.proxy.async after the full-barrier wait (MEMBAR.ALL.CTA in SASS)
    "no_proxy_fence": ({FENCE: "(kt / STAGES) & 1); }"}, 5),
    "stages_4": ({"constexpr int STAGES = 5;": "constexpr int STAGES = 4;"}, 4),
    "stages_6": ({"constexpr int STAGES = 5;": "constexpr int STAGES = 6;"}, 6),
}


def smem_bytes(qb, stages):
    blocks, kblocks = 128 // qb, 128 // qb
    return 2 * stages * 128 * 128 + stages * 2 * blocks * kblocks * 4 + 16 * stages + 4 * blocks * blocks + 1024

def main():
    m, k, n = 16384, 8192, 2048
    a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
    print("| variant | QB | ms | TOPS | % of 2.0 POPS |\n|---|---|---|---|---|")
    for qb in (32, 128):
        ta, tb = quantize(a, qb), quantize(b, qb)
        c = torch.empty(m, n, device="cuda")
        for name, (subs, stages) in VARIANTS.items():
            src = S.SM90_SRC
            for old, new in subs.items():
                src = src.replace(old, new)
            kern = get_kernel(src, "gemm_sm90_float_kernel", (f"QB={qb}",))
            smem = smem_bytes(qb, stages)
            kern.max_dynamic_shared_size_bytes = smem
            args = (ta.q, ta.s, tb.q, tb.s, c, np.int32(m), np.int32(n), np.int32(m), np.int32(n),
                    np.int32(k), np.int32(0), np.int32(0))
            grid = ((m // 128) * (n // 128),)
            t = time_ms(lambda: launch(kern, grid, (384,), args, shared_mem=smem))
            tops = 2 * m * n * k / t / 1e9
            print(f"| {name} | {qb} | {t:.3f} | {tops:.0f} | {tops / 20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
