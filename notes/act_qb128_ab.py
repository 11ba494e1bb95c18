"""The GELU / SwiGLU kernels at QB = 128 under each launch configuration (not part of the
library):

    python3 notes/act_qb128_ab.py

At QB = 128 a CTA is one group of 512 threads; with two blocks per group (BPG = 2) the
forward GELU takes 86 registers a thread and the backward 119, so an SM holds one CTA (512
threads) and a CTA-wide barrier per block stalls all of it. Variants: BPG 1 or 2, and
MIN_CTAS 1 or 2 (__launch_bounds__: at 2, 64 registers a thread, spilling where the kernel
needs more). Kernel time (torch.profiler) of each op on the activations of a width-2048 block
(8192 tokens: GPT-2's 4C hidden, Llama's 2 x 5504), GB/s as bench.py counts the bytes, and
the QB = 32 kernels' time on the same tensors. Outputs must equal the default's bit for bit.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gelu_cuda as G  # noqa: E402
from bench import kernel_ms  # noqa: E402
from int8_gelu import gelu_bwd, gelu_fwd, swiglu_bwd, swiglu_fwd  # noqa: E402
from quantize import quantize  # noqa: E402

VARIANTS = [(1, 1), (2, 1), (1, 2), (2, 2)]
DEFAULT = dict(G.QB128_CONFIG)


def ops(T=8192, H=8192, H_glu=5504):
    """(op, fn(qb) -> closure, bytes moved): bytes as int8 in + out per element."""
    h = torch.randn(T, H, device="cuda") * 2
    hg = torch.randn(T, 2 * H_glu, device="cuda") * 2
    dg, dgg = torch.randn(T, H, device="cuda"), torch.randn(T, H_glu, device="cuda")
    q = {qb: (quantize(h, qb), quantize(hg, qb), quantize(dg, qb), quantize(dgg, qb))
         for qb in (32, 128)}
    gen = torch.Generator()                  # (a CPU one: no sync per seed)

    def seeded(f):
        def run():
            gen.manual_seed(1)
            return f(gen)
        return run
    yield ("gelu_fwd", lambda qb: lambda: gelu_fwd(q[qb][0]), 2 * T * H)
    yield ("gelu_bwd", lambda qb: seeded(lambda g: gelu_bwd(q[qb][2], q[qb][0], generator=g)),
           3 * T * H)
    yield ("swiglu_fwd", lambda qb: lambda: swiglu_fwd(q[qb][1]), 3 * T * H_glu)
    yield ("swiglu_bwd", lambda qb: seeded(lambda g: swiglu_bwd(q[qb][3], q[qb][1], generator=g)),
           5 * T * H_glu)


def main():
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| op | QB 32 ms | " + " | ".join(f"BPG {b}, MIN_CTAS {m} ms" for b, m in VARIANTS)
          + " | best | GB/s (best) |")
    print("|---|---|" + "---|" * (len(VARIANTS) + 2))
    for name, make, nbytes in ops():
        ms32 = kernel_ms(make(32))
        ref, ms = None, {}
        for v in VARIANTS:
            G.QB128_CONFIG = dict(DEFAULT, **{name: v})
            out = make(128)()
            got = torch.cat([out.q.flatten().float(), out.s.flatten()])
            ref = got if ref is None else ref
            assert torch.equal(got, ref), f"{name} {v}: output differs"
            ms[v] = kernel_ms(make(128))
        best = min(ms, key=ms.get)
        print(f"| {name} | {ms32:.4f} | " + " | ".join(f"{ms[v]:.4f}" for v in VARIANTS)
              + f" | {best} | {nbytes / ms[best] / 1e6:.0f} |", flush=True)
    G.QB128_CONFIG = DEFAULT


if __name__ == "__main__":
    main()
