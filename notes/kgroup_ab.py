"""The wgmma GEMM's K-group at QB = 128 (int8_gemm_sm90.py, KGROUP: K-blocks per consumer loop
iteration, each ending with no wgmma in flight) and its promotion, side by side in one process
(not part of the library):

    exact G=2    the shipped kernel at QB = 128 (KGROUP's default: 2 K-blocks of 128)
    exact G=4/8  longer groups: the consumers drain the tensor cores every 4 / 8 K-blocks
    magic G=2/4  the magic-number promotion (one FFMA per element per K-block, no I2FP)

    python3 notes/kgroup_ab.py

Shapes: bench.py's large GEMM layers and the twelve GEMMs of a width-2048 GPT-2 block (B * T =
8192 tokens), each as fwd (int8 out), dgrad (int8 SR out), wgrad (fp32 out). Variants alternate
(5 rounds, median). The exact variants must equal G=2 bit for bit (the same FMAs in the same
order; K past Kp adds zeros); magic's relative difference to exact is printed.
"""
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90 as S  # noqa: E402
from bench import event_ms  # noqa: E402
from int8_gemm import gemm_cuda  # noqa: E402
from quantize import dequantize, quantize  # noqa: E402

LAYERS = [(16384, 2048, 8192), (16384, 8192, 2048), (8192, 4096, 4096)]
BLOCK_2048 = [(8192, 2048, 6144), (8192, 2048, 2048), (8192, 2048, 8192), (8192, 8192, 2048)]
VARIANTS = {"exact G=2": (S.SM90_SRC, ()), "exact G=4": (S.SM90_SRC, ("KGROUP=4",)),
            "exact G=8": (S.SM90_SRC, ("KGROUP=8",)), "magic G=2": (S.SM90_MAGIC_SRC, ("KGROUP=2",)),
            "magic G=4": (S.SM90_MAGIC_SRC, ("KGROUP=4",))}
SOURCE = S._source


def cases():
    for group, layers in (("bench", LAYERS), ("block 2048", BLOCK_2048)):
        for M, K, N in layers:
            yield group, "fwd", (M, K, N), "int8"
            yield group, "dgrad", (M, N, K), "int8_sr"
            yield group, "wgrad", (N, M, K), "float"


def run(ta, tb, out, variant):
    S._source = lambda qblock, Kp, exact, source: VARIANTS[variant]
    return gemm_cuda(ta, tb, out=out, kernel="wgmma")


def as_float(c):
    return c if isinstance(c, torch.Tensor) else dequantize(c)


def main():
    print(f"GPU: {torch.cuda.get_device_name()}")
    names = list(VARIANTS)
    print("| shapes | gemm | mkn | " + " | ".join(f"{v} ms" for v in names) + " | note |")
    print("|---|---|---|" + "---|" * len(names) + "---|")
    ratios = {v: [] for v in names}
    for group, name, (m, k, n), out in cases():
        a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
        ta, tb = quantize(a, 128), quantize(b, 128)
        outs = {}
        for v in names:
            torch.manual_seed(0)
            outs[v] = as_float(run(ta, tb, out, v))
        ref = outs["exact G=2"]
        note = [f"{v} DIFFERS" for v in names if v.startswith("exact") and not torch.equal(outs[v], ref)]
        for v in names:
            if v.startswith("magic"):
                note.append(f"{v} rel {((outs[v] - ref).norm() / ref.norm()).item():.1e}")
        ms = {v: [] for v in names}
        for rep in range(5):
            for v in (names if rep % 2 == 0 else names[::-1]):
                ms[v].append(event_ms(lambda: run(ta, tb, out, v)))
        med = {v: statistics.median(t) for v, t in ms.items()}
        for v in names:
            ratios[v].append(med[v] / med["exact G=2"])
        print(f"| {group} | {name} {out} | {m}x{k}x{n} | "
              + " | ".join(f"{med[v]:.3f}" for v in names) + f" | {', '.join(note)} |", flush=True)
    S._source = SOURCE
    for v, r in ratios.items():
        print(f"{v}: / exact G=2 median {statistics.median(r):.3f}, range {min(r):.3f}-{max(r):.3f}")


if __name__ == "__main__":
    main()
