"""quantize_kernel's occupancy: MIN_CTAS (for every TRANS) (__launch_bounds__' CTAs per SM, which caps the
registers: 57 at QB = 128 leave room for 2 CTAs of 512 threads) on the quantize calls of a
width-2048 block step (B * T = 8192), side by side in one process (not part of the library):

    python3 notes/quantize_occupancy_ab.py

Variants alternate (5 rounds, median of bench.kernel_ms: GPU time, the calls are shorter than their Python); outputs must be equal bit for bit.
"""
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quantize_cuda as Q  # noqa: E402
from bench import kernel_ms  # noqa: E402

VARIANTS = {128: (1, 3), 32: (1, 12)}
DEFAULT = dict(Q.QUANTIZE_MIN_CTAS)


def calls(qb):
    w = {n: torch.randn(*n, device="cuda") for n in ((6144, 2048), (8192, 2048), (2048, 8192))}
    y = torch.randn(8192, 2048, device="cuda", dtype=torch.bfloat16)
    dout = torch.randn(8192, 2048, device="cuda")
    dq, dk, dv = (torch.randn(8192, 2048, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    g = torch.Generator().manual_seed(0)
    return {
        "W (6144x2048 fp32)": lambda: Q.quantize_cuda(w[(6144, 2048)], qb),
        "W^T (8192x2048 fp32)": lambda: Q.quantize_cuda(w[(8192, 2048)], qb, transposed=True),
        "y + y^T (bf16)": lambda: Q.quantize_cuda(y, qb, with_t=True),
        "dout + ^T SR (fp32)": lambda: Q.quantize_cuda(dout, qb, True, g, with_t=True),
        "dqkv + ^T SR (bf16, 3 parts)": lambda: Q.quantize_cuda(dq, qb, True, g, with_t=True,
                                                                parts=(dk, dv)),
    }


def flat(r):
    ts = r if isinstance(r, tuple) else (r,)
    return [x for t in ts for x in (t.q, t.s)]


def main():
    print(f"GPU: {torch.cuda.get_device_name()}")
    for qb, variants in VARIANTS.items():
        print(f"\n## QB {qb}\n| call | " + " | ".join(f"MIN_CTAS {v} ms" for v in variants)
              + " | equal |\n|---|" + "---|" * (len(variants) + 1))
        for name, fn in calls(qb).items():
            outs, ms = [], {v: [] for v in variants}
            for v in variants:
                Q.QUANTIZE_MIN_CTAS = {(qb, trans): v for trans in (0, 1, 2)}
                torch.manual_seed(0)
                outs.append(flat(fn()) if "SR" not in name else None)
            for rep in range(5):
                for v in (variants if rep % 2 == 0 else variants[::-1]):
                    Q.QUANTIZE_MIN_CTAS = {(qb, trans): v for trans in (0, 1, 2)}
                    ms[v].append(kernel_ms(fn))
            equal = all(o is None or all(torch.equal(a, b) for a, b in zip(o, outs[0]))
                        for o in outs)
            print(f"| {name} | " + " | ".join(f"{statistics.median(ms[v]):.4f}" for v in variants)
                  + f" | {equal} |", flush=True)
        Q.QUANTIZE_MIN_CTAS = DEFAULT


if __name__ == "__main__":
    main()
