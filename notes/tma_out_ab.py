"""The wgmma float kernel's epilogue: C through shared memory and TMA (out_mode STORE /
ACCUMULATE / RESIDUAL) against the stores from the registers it had before (tma_out=False),
side by side in one process (not part of the library):

    python3 notes/tma_out_ab.py

Shapes: the float-output GEMMs of a width-2048 GPT-2 block (B * T = 8192 tokens) as the model
runs them (qkv forward and the attention projection's dgrad to bf16, the two forwards into the
residual stream with the residual added, the four weight gradients accumulated into fp32), and
bench.py's large layers as fp32 out and accumulate. QB = 128 and 32. Variants alternate (5 rounds,
median of bench.event_ms); the outputs must be equal bit for bit.
"""
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90 as S  # noqa: E402
from bench import event_ms  # noqa: E402
from quantize import quantize  # noqa: E402

BLOCK_2048 = [("qkv fwd", (8192, 2048, 6144), "bf16"), ("proj fwd", (8192, 2048, 2048), "residual"),
              ("fc2 fwd", (8192, 8192, 2048), "residual"), ("proj dgrad", (8192, 2048, 2048), "bf16"),
              ("qkv wgrad", (6144, 8192, 2048), "accumulate"),
              ("proj wgrad", (2048, 8192, 2048), "accumulate"),
              ("fc wgrad", (8192, 8192, 2048), "accumulate"),
              ("fc2 wgrad", (2048, 8192, 8192), "accumulate")]
LAYERS = [(16384, 2048, 8192), (16384, 8192, 2048), (8192, 4096, 4096)]


def cases():
    for name, mkn, out in BLOCK_2048:
        yield "block 2048", name, mkn, out
    for m, k, n in LAYERS:
        yield "bench", "fwd", (m, k, n), "fp32"
        yield "bench", "wgrad", (n, m, k), "accumulate"


def main():
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| QB | shapes | gemm | mkn | out | registers ms | TMA ms | TMA / registers | equal |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = {32: [], 128: []}
    for qb in (128, 32):
        for group, name, (m, k, n), out in cases():
            ta = quantize(torch.randn(m, k, device="cuda"), qb)
            tb = quantize(torch.randn(n, k, device="cuda"), qb)
            dtype = torch.bfloat16 if out == "bf16" else torch.float32
            c = torch.empty(m, n, device="cuda", dtype=dtype)
            extra = torch.randn(m, n, device="cuda") if out in ("residual", "accumulate") else None
            if out == "accumulate":
                c.copy_(extra)
            add = extra if out == "residual" else c if out == "accumulate" else None

            def run(tma_out):
                S.launch_float(ta, tb, c, m, n, add, tma_out=tma_out)
            outs = []
            for tma_out in (False, True):
                if out == "accumulate":
                    c.copy_(extra)
                run(tma_out)
                outs.append(c.clone())
            equal = torch.equal(*outs)
            ms = {False: [], True: []}
            for rep in range(5):
                for v in ((False, True) if rep % 2 == 0 else (True, False)):
                    ms[v].append(event_ms(lambda: run(v)))
            med = {v: statistics.median(t) for v, t in ms.items()}
            ratios[qb].append(med[True] / med[False])
            print(f"| {qb} | {group} | {name} | {m}x{k}x{n} | {out} | {med[False]:.3f} | "
                  f"{med[True]:.3f} | {med[True] / med[False]:.3f} | {equal} |", flush=True)
    for qb, r in ratios.items():
        print(f"QB {qb}: TMA / registers median {statistics.median(r):.3f}, "
              f"range {min(r):.3f}-{max(r):.3f}")


if __name__ == "__main__":
    main()
