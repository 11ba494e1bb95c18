"""Where the Hopper GEMM's per-tile time goes at small K (not part of the library; timing only).

    python3 notes/epilogue_probe.py

The wgmma kernel (magic promotion, QB = 32, persistent) on M = 16384, N = 3072, K = 256 and 768,
in each output type, as shipped and in a variant made by text substitution on its source (so
this script breaks when the source moves on; its log stays): 'no stores' computes the epilogue
but stores only when an accumulator holds a value that never occurs (the outputs are wrong). The
difference to the shipped kernel is what the stores cost. (A 'no epilogue' variant, the epilogue
skipped unless acc[0] is such a value, timed the wgmma alone: the compiler then drops the
promotion of the other 63 accumulators.)
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90 as S  # noqa: E402
from bench import event_ms  # noqa: E402
from int8_gemm import gemm_cuda  # noqa: E402
from quantize import quantize  # noqa: E402

SHIPPED = S.SM90_MAGIC_SRC
SUBS = {
    "no stores": [("    if (ct == 0) tma_store(q_map, n0, m0, ctile);",
                   "    if (ct == 0 && acc[0] == 1234.5f) tma_store(q_map, n0, m0, ctile);"),
                  ("    if (row >= M || col >= N) return;", "    if (row >= M || col >= N || v0 != 1234.5f) return;")],
}


def variant(name):
    src = SHIPPED
    for old, new in SUBS.get(name, []):
        assert old in src, (name, old)
        src = src.replace(old, new)
    return src


def main():
    names = ["shipped", "no stores"]
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| out | mkn | bf16 ms | " + " | ".join(f"{v} ms" for v in names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for out in ("float", "int8", "int8_sr"):
        for k in (256, 768):
            m, n = 16384, 3072
            a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
            ab, bb = a.bfloat16(), b.bfloat16()
            t16 = event_ms(lambda: ab @ bb.t())
            ta, tb = quantize(a, 32), quantize(b, 32)
            ms = {v: [] for v in names}
            for rep in range(3):
                for v in (names if rep % 2 == 0 else names[::-1]):
                    S.SM90_MAGIC_SRC = variant(v)
                    ms[v].append(event_ms(lambda: gemm_cuda(ta, tb, out=out, kernel="wgmma")))
            print(f"| {out} | {m}x{k}x{n} | {t16:.3f} | "
                  + " | ".join(f"{sorted(ms[v])[1]:.3f}" for v in names) + " |", flush=True)
    S.SM90_MAGIC_SRC = SHIPPED


if __name__ == "__main__":
    main()
