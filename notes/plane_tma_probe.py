"""Timing-only probe (not part of the library; its outputs are wrong): does a fallback plane stage
cost 2-3x a plain one because of its TMA copies? The fused GEMM as it is ('now': per plane stage
one 128-row x 32-byte box of the other operand per K-block column and one 32 x 32 box per flagged
block, 4 + up to 16 copies) against the same kernel whose plane stages each load one 128 x
128-byte box of the other operand ('wide': 16 KB in one copy, as a plain stage does per operand;
the plane's own blocks are not loaded). Everything else, the consumers' wgmma and exact promotion
of the plane K-blocks, their barriers, stays.

    python3 notes/plane_tma_probe.py

Forward GEMM, int8 out, QB = 32, topk flags (uniform, and outlier channels as in bench.py),
16384x8192x2048; GPU time (bench.kernel_ms), median of 3, alternated.
"""
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90 as S  # noqa: E402
import int8_gemm_sm90_plane as P  # noqa: E402
from bench import kernel_ms, outlier_channels  # noqa: E402
from fallback import quantize_fallback  # noqa: E402
from int8_gemm import gemm, gemm_cuda  # noqa: E402
from quantize import quantize  # noqa: E402

NOW = '''    if (v >= 0) {
        mbar_expect_tx(full, c.is_col ? BM * QB : QB * QB);
        if (c.is_col) tma_load(c.dst + slot * TILE_BYTES, o_map, v * QB, c.row, full);
        else tma_load(c.dst + slot * TILE_BYTES, q_map, 0, v * QB, full);
    }'''
WIDE = '''    if (t == 0) {                    // probe: one 128 x 128-byte box of the other operand
        mbar_expect_tx(full, TILE_BYTES);
        tma_load(c.dst + slot * TILE_BYTES, o_map, 0, c.row, full);
    }'''
SOURCES = {"now": (S.SM90_SRC, S.SM90_MAGIC_SRC)}
assert NOW in S.SM90_SRC and NOW in S.SM90_MAGIC_SRC
SOURCES["wide"] = tuple(s.replace(NOW, WIDE) for s in SOURCES["now"])
TILE_MAP = P.tile_map


def use(v):
    S.SM90_SRC, S.SM90_MAGIC_SRC = SOURCES[v]

    def wide_map(address, rows, row_bytes, box_rows=128, box_bytes=128, elem=1):
        if v == "wide" and box_rows == 128 and box_bytes == 32:      # the other operand's map
            box_bytes = 128
        return TILE_MAP(address, rows, row_bytes, box_rows, box_bytes, elem)
    P.tile_map = wide_map


def main():
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| mkn | pattern | flagged | plain ms | now ms | wide ms | overhead now | overhead wide |")
    print("|---|---|---|---|---|---|---|---|")
    M, K, N = 16384, 8192, 2048
    x, w = torch.randn(M, K, device="cuda"), torch.randn(N, K, device="cuda")
    tw, plain = quantize(w), quantize(x)
    use("now")
    t_plain = min(kernel_ms(lambda: gemm_cuda(plain, tw, out="int8")) for _ in range(2))
    for pattern, frac in (("uniform", 0.05), ("uniform", 0.2), ("uniform", 1.0),
                          ("channels", 0.05), ("channels", 0.2)):
        xp = x if pattern == "uniform" else outlier_channels(x, 32, frac)
        t, flagged = quantize_fallback(xp, 32, "topk", frac)
        ms = {v: [] for v in SOURCES}
        for v in SOURCES:
            use(v)
            gemm(t, tw, out="int8")
        for rep in range(3):
            for v in (list(SOURCES) if rep % 2 == 0 else list(SOURCES)[::-1]):
                use(v)
                ms[v].append(kernel_ms(lambda: gemm(t, tw, out="int8")))
        use("now")
        a, b = statistics.median(ms["now"]), statistics.median(ms["wide"])
        print(f"| {M}x{K}x{N} | {pattern} | {flagged:.3f} | {t_plain:.3f} | {a:.3f} | {b:.3f} | "
              f"{a / t_plain - 1:+.1%} | {b / t_plain - 1:+.1%} |", flush=True)


if __name__ == "__main__":
    main()
