"""What bounds a fused fallback plane stage (not part of the library; timing only, the probes'
outputs are wrong on purpose).

    python3 notes/plane_stage_probe.py

Fwd int8 out, QB = 32, uniform 'topk' flags (as notes/fallback_ab.py), the kernel as gemm()
runs it (magic plain K-blocks, exact plane ones with the skip) against three probes built from
its source by text substitution:

    no B copy       plane stages do not copy the other operand's K-blocks (cp.async, 16 KB)
    no plane copy   plane stages do not copy the plane's blocks from q2
    no promotion    the consumers issue the plane's wgmma but never promote it

GPU time of the kernels (bench.kernel_ms), the variants alternating, median of 3.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90 as S  # noqa: E402
from bench import kernel_ms  # noqa: E402
from fallback import quantize_fallback  # noqa: E402
from int8_gemm import gemm_cuda  # noqa: E402
from quantize import quantize  # noqa: E402

B_COPY = "            copy_plain(sB, opaque(dst), B, n0, Np, Kp, kb, r0, c);\n"
PLANE_COPY = "            if (has_rows) copy_plane(sA, pl.q2, s, gr, c);\n"
PROMOTE = "        if (!nonzero) return;\n    }\n    promote(acc, d, c);"
PROBES = {"kernel": [], "no B copy": [(B_COPY, "")], "no plane copy": [(PLANE_COPY, "")],
          "no promotion": [(PROMOTE, "        if (!nonzero) return;\n    }\n    fence_operands(d);")]}


MAGIC = S.SM90_MAGIC_SRC


def source(changes):
    src = MAGIC
    for old, new in changes:
        assert old in src, old
        src = src.replace(old, new)
    return src


def main():
    names = list(PROBES)
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| mkn | flagged | plain ms | " + " | ".join(f"{v} ms" for v in names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for M, K, N in ((16384, 2048, 8192), (16384, 8192, 2048)):
        x, w = torch.randn(M, K, device="cuda"), torch.randn(N, K, device="cuda")
        tw, plain = quantize(w), quantize(x)
        t_plain = min(kernel_ms(lambda: gemm_cuda(plain, tw, out="int8")) for _ in range(2))
        for frac in (0.05, 0.2):
            t, flagged = quantize_fallback(x, 32, "topk", frac)
            ms = {v: [] for v in names}
            for rep in range(3):
                for v in names if rep % 2 == 0 else names[::-1]:
                    S.SM90_MAGIC_SRC = source(PROBES[v])
                    ms[v].append(kernel_ms(lambda: gemm_cuda(t, tw, out="int8", kernel="wgmma")))
            S.SM90_MAGIC_SRC = MAGIC
            print(f"| {M}x{K}x{N} | {flagged:.3f} | {t_plain:.3f} | "
                  + " | ".join(f"{sorted(ms[v])[1]:.3f}" for v in names) + " |", flush=True)


if __name__ == "__main__":
    main()
