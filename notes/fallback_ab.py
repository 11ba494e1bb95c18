"""The fused fallback GEMM's variants timed side by side in one process (not part of the library).

    python3 notes/fallback_ab.py [--quick] [--errors]     (--errors: the error table alone)

Forward GEMM, int8 out, QB = 32, activations X (M, K) with a second plane on the 'topk' rule's
fraction of blocks (random data: flags spread uniformly, as in bench.py's fallback rows), by
flagged fraction. Variants of the plane's part of the kernel, each adding one change:

    exact        every K-block promoted exactly (what gemm() ran with a plane before this A/B)
    magic        the plain K-blocks by the magic-number promotion, as the plain GEMM
    magic+skip   and a warp whose row block has no flagged block in a plane K-block skips that
                 promotion (promote_kblock's SKIP_ZERO, in consume_plane): the kernel now

against the plain GEMM without a plane (magic: the default, and exact). GPU time of the kernels
(bench.kernel_ms: the K-block lists included, the quantizer not); the variants alternate per row.
The magic variants' outputs must be equal bit for bit; magic against exact is printed (relative
error over the reference's norm). The log's second run also timed two changes that measured
slower and were dropped: the producer's scale threads reading their stage's list entry a stage
ahead (+prefetch), and the consumers draining the wgmma pipeline once per two plane stages
(+pipelined).

Then the error table: on GLU-like activations (randn with sparse 300-600x outliers, ~5% of blocks
flagged by the default rule) against a float activation times the int8 weight, how much of
plain int8's activation error each promotion leaves ("gap closed": 1 - err / plain int8's).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90 as S  # noqa: E402
from bench import kernel_ms  # noqa: E402
from fallback import quantize_fallback  # noqa: E402
from int8_gemm import gemm_cuda  # noqa: E402
from quantize import dequantize, quantize  # noqa: E402

SKIP = {"exact": S.SM90_SRC, "magic": S.SM90_MAGIC_SRC}
NO_SKIP = {k: v.replace(", true>(acc", ">(acc") for k, v in SKIP.items()}
VARIANTS = {"exact": ("wgmma_exact", NO_SKIP), "magic": ("wgmma", NO_SKIP),
            "magic+skip": ("wgmma", SKIP)}
LAYERS = [(16384, 2048, 8192), (16384, 8192, 2048), (16384, 768, 3072), (16384, 3072, 768)]


def use(sources):
    """Point the module at one pair of sources (_source() looks them up at each launch)."""
    S.SM90_SRC, S.SM90_MAGIC_SRC = sources["exact"], sources["magic"]


def main():
    quick = "--quick" in sys.argv
    if "--errors" in sys.argv:
        return error_table()
    names = list(VARIANTS)
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| mkn | flagged | plain ms | plain exact ms | " + " | ".join(f"{v} ms" for v in names)
          + " | " + " | ".join(f"{v} / plain" for v in names) + " | magic vs exact |")
    print("|---|---|---|---|" + "---|" * (2 * len(names) + 1))
    for M, K, N in LAYERS[:2] if quick else LAYERS:
        x, w = torch.randn(M, K, device="cuda"), torch.randn(N, K, device="cuda")
        tw, plain = quantize(w), quantize(x)
        use(SKIP)
        t_plain = kernel_ms(lambda: gemm_cuda(plain, tw, out="int8", kernel="wgmma"))
        t_exact = kernel_ms(lambda: gemm_cuda(plain, tw, out="int8", kernel="wgmma_exact"))
        for frac in (0.01, 0.05, 0.2, 1.0):
            t, flagged = quantize_fallback(x, 32, "topk", frac)
            out, ms = {}, {v: [] for v in names}
            for v in names:
                use(VARIANTS[v][1])
                out[v] = gemm_cuda(t, tw, kernel=VARIANTS[v][0])
            for rep in range(3):                              # alternate the variants
                for v in names if rep % 2 == 0 else names[::-1]:
                    use(VARIANTS[v][1])
                    ms[v].append(kernel_ms(lambda: gemm_cuda(t, tw, out="int8",
                                                             kernel=VARIANTS[v][0])))
            med = {v: sorted(ms[v])[1] for v in names}
            same = all(torch.equal(out[v], out["magic"]) for v in names[2:])
            ref = dequantize(t).double() @ dequantize(tw).double().t()
            err = ((out["magic"].double() - out["exact"].double()).norm() / ref.norm()).item()
            print(f"| {M}x{K}x{N} | {flagged:.3f} | {t_plain:.3f} | {t_exact:.3f} | "
                  + " | ".join(f"{med[v]:.3f}" for v in names) + " | "
                  + " | ".join(f"{med[v] / t_plain:.3f}" for v in names)
                  + f" | {err:.1e} |" + ("" if same else " MAGIC VARIANTS DIFFER"), flush=True)
    use(SKIP)
    error_table()


def error_table(M=4096, K=2048, N=2048, QB=32):
    """Relative errors of the fallback GEMM on GLU-like X against the float activation X and
    against the two-plane operand it carries (dequantize: the plain and the second plane)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, K, device="cuda", generator=g)
    spikes = torch.rand(M, K, device="cuda", generator=g) < 0.05 / QB ** 2
    x = torch.where(spikes, x.sign() * 300 * (1 + torch.rand(M, K, device="cuda", generator=g)), x)
    tw = quantize(torch.randn(N, K, device="cuda", generator=g), QB)
    w = dequantize(tw).double()

    def err(c, ref):
        return ((c.double() - ref).norm() / ref.norm()).item()
    ref = x.double() @ w.t()                                  # float activation, int8 weight
    plain = err(gemm_cuda(quantize(x, QB), tw, kernel="wgmma_exact"), ref)
    print(f"\nGLU-like X {M}x{K}, W {N}x{K} int8: relative error against X @ dequantize(W)^T "
          f"(gap closed: 1 - err / plain int8's) and against the operand's two planes\n\n"
          f"| rule | flagged | GEMM | err vs X | gap closed | err vs two planes |\n"
          f"|---|---|---|---|---|---|\n| | | plain int8, exact | {plain:.3e} | 0 | |")
    for rule, threshold in (("median", 2.5), ("median", 0.0)):
        t, flagged = quantize_fallback(x, QB, rule, threshold)
        two = dequantize(t).double() @ w.t()
        for name, kernel in (("exact", "wgmma_exact"), ("magic plain K-blocks", "wgmma")):
            c = gemm_cuda(t, tw, kernel=kernel)
            print(f"| {rule} {threshold} | {flagged:.3f} | {name} | {err(c, ref):.3e} | "
                  f"{1 - err(c, ref) / plain:.4f} | {err(c, two):.2e} |")


if __name__ == "__main__":
    main()
