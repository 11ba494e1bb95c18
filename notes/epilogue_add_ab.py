"""The float epilogue's add (gemm's `residual` and `accumulate`) against a separate torch add,
side by side in one process (not part of the library):

    unfused    the GEMM writes C, then torch adds it (x + C) or autograd-style (g += C)
    fused      the epilogue loads the old values and adds them (add_old)

    python3 notes/epilogue_add_ab.py

Shapes: the GEMMs of a width-2048 and a width-4096 block (B * T = 8192 tokens) that add: the
two c_proj forwards (residual) and the four weight gradients (accumulate into .grad), at QB = 32
and 128. The variants alternate per row; fused must equal unfused bit for bit.
The log beside this (epilogue_add_ab.log, at d9356c3) has a third column, "prefetch": the
kernel then asked each tile's old values into L2 when the tile started (a prefetch.global.L2
per 128-byte line). It changed the fused time by -5% to +9% (median +0.7%) and was removed.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import event_ms  # noqa: E402
from int8_gemm import gemm_cuda  # noqa: E402
from quantize import quantize  # noqa: E402


def cases(T=8192):
    for C in (2048, 4096):
        yield "attn c_proj fwd", "residual", T, C, C
        yield "mlp c_proj fwd", "residual", T, 4 * C, C
        for name, n, k in (("c_attn", 3 * C, C), ("attn c_proj", C, C), ("c_fc", 4 * C, C),
                           ("mlp c_proj", C, 4 * C)):
            yield f"{name} wgrad", "accumulate", n, T, k        # dW (n, k) = dY^T X, K = T


def main():
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| gemm | add | mkn | QB | unfused ms | fused ms | fused / unfused |")
    print("|---|---|---|---|---|---|---|")
    for name, how, m, k, n in cases():
        a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
        base = torch.randn(m, n, device="cuda")
        for qb in (32, 128):
            ta, tb = quantize(a, qb), quantize(b, qb)
            acc = base.clone()

            def unfused():
                c = gemm_cuda(ta, tb, kernel="wgmma")
                return base + c if how == "residual" else acc.add_(c)

            def fused():
                if how == "residual":
                    return gemm_cuda(ta, tb, kernel="wgmma", residual=base)
                return gemm_cuda(ta, tb, kernel="wgmma", accumulate=acc)
            variants = {"unfused": unfused, "fused": fused}
            outs = {}
            for v, fn in variants.items():
                acc.copy_(base)
                outs[v] = fn().clone()
            same = torch.equal(outs["fused"], outs["unfused"])
            ms = {v: [] for v in variants}
            for rep in range(3):
                for v in (list(variants) if rep % 2 == 0 else list(variants)[::-1]):
                    ms[v].append(event_ms(variants[v]))
            med = {v: sorted(t)[1] for v, t in ms.items()}
            print(f"| {name} | {how} | {m}x{k}x{n} | {qb} | {med['unfused']:.3f} | "
                  f"{med['fused']:.3f} | {med['fused'] / med['unfused']:.3f} |"
                  + ("" if same else " OUTPUTS DIFFER"), flush=True)


if __name__ == "__main__":
    main()
