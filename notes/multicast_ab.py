"""TMA multicast of A to a pair of CTAs (int8_gemm_sm90._cluster, CLUSTER = 2) against one CTA
per tile walk (CLUSTER = 1), side by side in one process (not part of the library):

    single     each persistent CTA loads its A and B tiles (the kernel before multicast)
    pair       a cluster of two CTAs computes two tiles side by side along N; each loads half
               of their shared A tile for both, so A's L2 -> SM traffic halves

    python3 notes/multicast_ab.py [--qblocks=32,64,128]

Shapes: bench.py's GEMM layers (fwd int8 out, dgrad int8 SR out, wgrad fp32 out) and the twelve
GEMMs of a width-2048 GPT-2 block (B * T = 8192 tokens). Variants alternate per row (5 rounds,
median); the pair's output must equal the single CTA's bit for bit (same sums, same order;
the SR rows from the same torch seed).
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90  # noqa: E402
from bench import event_ms  # noqa: E402
from int8_gemm import gemm_cuda  # noqa: E402
from quantize import quantize  # noqa: E402

LAYERS = [(16384, 768, 3072), (16384, 3072, 768), (16384, 2048, 8192), (16384, 8192, 2048),
          (8192, 4096, 4096)]
BLOCK_2048 = [(8192, 2048, 6144), (8192, 2048, 2048), (8192, 2048, 8192), (8192, 8192, 2048)]


def cases():
    for group, layers in (("bench", LAYERS), ("block 2048", BLOCK_2048)):
        for M, K, N in layers:
            yield group, "fwd", (M, K, N), "int8"
            yield group, "dgrad", (M, N, K), "int8_sr"
            yield group, "wgrad", (N, M, K), "float"


def run(ta, tb, out, multicast):
    int8_gemm_sm90.MULTICAST = multicast
    return gemm_cuda(ta, tb, out=out, kernel="wgmma")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--qblocks", default="32,64,128")
    qblocks = [int(q) for q in p.parse_args().qblocks.split(",")]
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| shapes | gemm | mkn | QB | single ms | pair ms | pair / single | pair TOPS |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = {qb: [] for qb in qblocks}
    for group, name, (m, k, n), out in cases():
        a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
        for qb in qblocks:
            ta, tb = quantize(a, qb), quantize(b, qb)
            torch.manual_seed(0)
            c1 = run(ta, tb, out, False)
            torch.manual_seed(0)
            c2 = run(ta, tb, out, True)
            same = (torch.equal(c1, c2) if out == "float"
                    else torch.equal(c1.q, c2.q) and torch.equal(c1.s, c2.s))
            ms = {False: [], True: []}
            for rep in range(5):
                for v in ((False, True) if rep % 2 == 0 else (True, False)):
                    ms[v].append(event_ms(lambda: run(ta, tb, out, v)))
            single, pair = statistics.median(ms[False]), statistics.median(ms[True])
            ratios[qb].append(pair / single)
            print(f"| {group} | {name} {out} | {m}x{k}x{n} | {qb} | {single:.3f} | {pair:.3f} | "
                  f"{pair / single:.3f} | {2 * m * n * k / pair / 1e9:.0f} |"
                  + ("" if same else " OUTPUTS DIFFER"), flush=True)
    int8_gemm_sm90.MULTICAST = True
    for qb, r in ratios.items():
        print(f"QB {qb}: pair / single median {statistics.median(r):.3f}, "
              f"range {min(r):.3f}-{max(r):.3f}")


if __name__ == "__main__":
    main()
