"""The Hopper GEMM's plain tiles loaded by TMA (int8_gemm_sm90_ring.py, TMA=1, the default) against
the same kernel loading them with cp.async (TMA=0), in one process (not part of the library).

    python3 notes/tma_ab.py [--quick]

bench.py's three GEMMs of each layer shape (fwd int8 out, dgrad int8 SR out, wgrad fp32 out) at
QB = 32, 64, 128 through gemm_cuda(kernel='wgmma'), with cuBLAS bf16 timed in the same run. The two
loaders alternate per row (clocks drift under sustained load), and their outputs must be equal bit
for bit (the float ones; the int8 ones too: the SR seed is fixed). Prints a markdown table.
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
LAUNCH = (S.launch_float, S.launch_int8)


def loader(tma):
    """Point the module's launchers at one loader (gemm_cuda looks them up at each call)."""
    S.launch_float = functools.partial(LAUNCH[0], tma=tma)
    S.launch_int8 = functools.partial(LAUNCH[1], tma=tma)


def main():
    quick = "--quick" in sys.argv
    layers = LAYERS[2:4] if quick else LAYERS
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| gemm | mkn | QB | bf16 ms | cp.async ms | TMA ms | TMA / cp.async | TMA x bf16 | TOPS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for M, K, N in layers:
        for name, m, n, k, out in (("fwd", M, N, K, "int8"), ("dgrad", M, K, N, "int8_sr"),
                                   ("wgrad", N, K, M, "float")):
            a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
            a[:, 7] *= 50.0                                   # an outlier channel: scales differ
            ab, bb = a.bfloat16(), b.bfloat16()
            t16 = event_ms(lambda: ab @ bb.t())
            for qb in (32, 64, 128):
                ta, tb = quantize(a, qb), quantize(b, qb)
                gen = torch.Generator(device="cuda")

                def run():
                    gen.manual_seed(1)
                    return gemm_cuda(ta, tb, out=out, kernel="wgmma", generator=gen)
                res, ms = {}, {True: [], False: []}
                for tma in (False, True):
                    loader(tma)
                    res[tma] = run()
                same = (torch.equal(res[True], res[False]) if out == "float" else
                        torch.equal(res[True].q, res[False].q) and torch.equal(res[True].s, res[False].s))
                for rep in range(3):                          # alternate the loaders
                    for tma in ((False, True) if rep % 2 == 0 else (True, False)):
                        loader(tma)
                        ms[tma].append(event_ms(run))
                old, new = sorted(ms[False])[1], sorted(ms[True])[1]
                tops = 2 * m * n * k / (new * 1e-3) / 1e12
                print(f"| {name} | {m}x{k}x{n} | {qb} | {t16:.3f} | {old:.3f} | {new:.3f} | "
                      f"{new / old:.3f} | {t16 / new:.2f} | {tops:.0f} |"
                      + ("" if same else " OUTPUTS DIFFER"), flush=True)
    loader(True)


if __name__ == "__main__":
    main()
