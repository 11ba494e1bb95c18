"""The magic-number promotion (int8_gemm_sm90.py, SM90_MAGIC_SRC) against the exact one (SM90_SRC),
timed in one device call (not part of the library).

    python3 notes/gemm_sm90_magic_variants.py

For QB = 32, 64, 128 and each K-group size G (K-blocks per consumer loop iteration; each of the two
D buffers sums G / 2 of them), on (M, K, N) = (16384, 8192, 2048) and (16384, 2048, 8192), float
out: time (CUDA events, medians of 5 x 20 launches), TOPS, ratio to cuBLAS bf16 in the same run,
the relative error against the reference on a 256-row head, and whether unit scales give the
float64 product exactly.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90 as S  # noqa: E402
from int8_gemm_sm90_ring import _smem_bytes  # noqa: E402
from bench import event_ms as time_ms  # noqa: E402  (CUDA events, medians)

VARIANTS = [  # (name, source, QB, G)
    ("exact", S.SM90_SRC, 32, 4), ("magic", S.SM90_MAGIC_SRC, 32, 8), ("magic", S.SM90_MAGIC_SRC, 32, 16),
    ("exact", S.SM90_SRC, 64, 2), ("magic", S.SM90_MAGIC_SRC, 64, 4), ("magic", S.SM90_MAGIC_SRC, 64, 8),
    ("exact", S.SM90_SRC, 128, 2), ("magic", S.SM90_MAGIC_SRC, 128, 4),
]


def main():
    import torch
    from int8_gemm import gemm_ref
    from quantize import QTensor, get_kernel, launch, quantize
    print("| variant | QB | G | mkn | ms | TOPS | x bf16 | rel err | unit scales exact |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m, k, n in ((16384, 8192, 2048), (16384, 2048, 8192)):
        a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
        a[:, 5] *= 300.0                                   # an outlier channel: scales differ
        ab, bb = a.bfloat16(), b.bfloat16()
        t16 = time_ms(lambda: ab @ bb.t())
        print(f"| cuBLAS bf16 | | | {m}x{k}x{n} | {t16:.3f} | {2 * m * n * k / t16 / 1e9:.0f} | 1 | | |")
        for name, src, qb, g in VARIANTS:
            ta, tb = quantize(a, qb), quantize(b, qb)
            head = QTensor(ta.q[:256].contiguous(), ta.s[:256 // qb].contiguous(), torch.Size((256, k)), qb)
            ref = gemm_ref(head, tb)
            c = torch.empty(m, n, device="cuda")
            smem = _smem_bytes(qb)
            kern = get_kernel(src, "gemm_sm90_float_kernel", (f"QB={qb}", f"KGROUP={g}"))
            kern.max_dynamic_shared_size_bytes = smem
            grid = ((m // 128) * (n // 128),)

            def run(ta=ta, tb=tb):
                launch(kern, grid, (384,), S.float_kernel_args(ta, tb, c, m, n), shared_mem=smem)
            c.fill_(float("nan"))
            run()
            err = ((c[:256] - ref).norm() / ref.norm()).item()
            t = time_ms(run)
            # unit scales: exact integer sums (|sum| < 2^24) must come out exactly
            ones_a, ones_b = torch.ones_like(ta.s), torch.ones_like(tb.s)
            qa = torch.randint(-127, 128, (256, k), device="cuda", dtype=torch.int8)
            qb_ = torch.randint(-127, 128, (256, k), device="cuda", dtype=torch.int8)
            cu = torch.empty(256, 256, device="cuda")
            ua = QTensor(qa, ones_a[:256 // qb].contiguous(), torch.Size((256, k)), qb)
            ub = QTensor(qb_, ones_b[:256 // qb].contiguous(), torch.Size((256, k)), qb)
            launch(kern, (4,), (384,), S.float_kernel_args(ua, ub, cu, 256, 256), shared_mem=smem)
            exact = torch.equal(cu.double(), qa.double() @ qb_.double().t())
            tops = 2 * m * n * k / t / 1e9
            print(f"| {name} | {qb} | {g} | {m}x{k}x{n} | {t:.3f} | {tops:.0f} | {t16 / t:.2f} | {err:.1e} | {exact} |",
                  flush=True)


if __name__ == "__main__":
    main()
