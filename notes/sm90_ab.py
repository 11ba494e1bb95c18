"""Variants of the Hopper GEMM timed side by side in one process (not part of the library).

    python3 notes/sm90_ab.py [--quick] [--fixed]

The variants are launcher options of int8_gemm_sm90.py: one CTA per tile (persistent=False) or
one per SM walking the tiles. (Its first version also timed the plain tiles by cp.async against
TMA: notes/tma_ab.log; the cp.async producer has since left the kernel.) Default: bench.py's three GEMMs of each layer shape (fwd int8 out, dgrad int8 SR out,
wgrad fp32 out) at QB = 32, 64, 128 through gemm_cuda(kernel='wgmma'), with cuBLAS bf16 timed in
the same run. --fixed: the per-tile fixed cost instead, M = 16384, N = 3072 at K = 256, 768, 3072
in each output type, QB = 32. The variants alternate per row (clocks drift under sustained load),
and their outputs must be equal bit for bit (the SR seed is fixed). Prints a markdown table.
"""
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90 as S  # noqa: E402
from bench import event_ms  # noqa: E402
from int8_gemm import gemm_cuda  # noqa: E402
from quantize import quantize  # noqa: E402

LAYERS = [(16384, 768, 3072), (16384, 3072, 768), (16384, 2048, 8192), (16384, 8192, 2048),
          (8192, 4096, 4096)]
VARIANTS = {"TMA": dict(persistent=False), "TMA+persistent": dict()}
LAUNCH = (S.launch_float, S.launch_int8)


def use(variant):
    """Point the module's launchers at one variant (gemm_cuda looks them up at each call)."""
    S.launch_float = functools.partial(LAUNCH[0], **VARIANTS[variant])
    S.launch_int8 = functools.partial(LAUNCH[1], **VARIANTS[variant])


def cases(fixed, quick):
    """(name, m, k, n, out, QBs) rows"""
    if fixed:
        for out in ("float", "int8", "int8_sr"):
            for k in (256, 768, 3072):
                yield out, 16384, k, 3072, out, (32,)
        return
    for M, K, N in (LAYERS[2:4] if quick else LAYERS):
        yield "fwd", M, K, N, "int8", (32, 64, 128)
        yield "dgrad", M, N, K, "int8_sr", (32, 64, 128)
        yield "wgrad", N, M, K, "float", (32, 64, 128)


def main():
    fixed, quick = "--fixed" in sys.argv, "--quick" in sys.argv
    names = list(VARIANTS)
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| gemm | mkn | QB | bf16 ms | " + " | ".join(f"{v} ms" for v in names) + " | "
          + " | ".join(f"{v} / {names[0]}" for v in names[1:]) + f" | {names[-1]} x bf16 | TOPS |")
    print("|---|---|---|---|" + "---|" * (2 * len(names) + 1))
    for name, m, k, n, out, qbs in cases(fixed, quick):
        a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
        a[:, 7] *= 50.0                                       # an outlier channel: scales differ
        ab, bb = a.bfloat16(), b.bfloat16()
        t16 = event_ms(lambda: ab @ bb.t())
        for qb in qbs:
            ta, tb = quantize(a, qb), quantize(b, qb)
            gen = torch.Generator()                           # (a CUDA one: a sync per seed)

            def run():
                gen.manual_seed(1)
                return gemm_cuda(ta, tb, out=out, kernel="wgmma", generator=gen)
            res, ms = {}, {v: [] for v in names}
            for v in names:
                use(v)
                r = run()
                res[v] = r if out == "float" else torch.cat([r.q.flatten().float(), r.s.flatten()])
            same = all(torch.equal(res[v], res[names[0]]) for v in names)
            for rep in range(3):                              # alternate the variants
                for v in (names if rep % 2 == 0 else names[::-1]):
                    use(v)
                    ms[v].append(event_ms(run))
            med = {v: sorted(ms[v])[1] for v in names}
            tops = 2 * m * n * k / (med[names[-1]] * 1e-3) / 1e12
            print(f"| {name} | {m}x{k}x{n} | {qb} | {t16:.3f} | "
                  + " | ".join(f"{med[v]:.3f}" for v in names) + " | "
                  + " | ".join(f"{med[v] / med[names[0]]:.3f}" for v in names[1:])
                  + f" | {t16 / med[names[-1]]:.2f} | {tops:.0f} |"
                  + ("" if same else " OUTPUTS DIFFER"), flush=True)
    use(names[-1])


if __name__ == "__main__":
    main()
