"""Ping-pong variants of the wgmma kernel (int8_gemm_sm90_pp.py), timed in one device call (not
part of the library).

    python3 notes/gemm_sm90_pp_variants.py [--check] [--diag]

Each variant is a text substitution of SM90_SRC (v1) or SM90_PP_SRC, compiled for QB = 32, 64
and 128 and timed on (M, K, N) = (16384, 8192, 2048), float out. Every variant here computes the
right sums: rel err against the reference on a 256-row head is printed next to the time.
--diag times DIAG instead (wrong sums on purpose: is the promotion hidden behind the wgmma?).
--check only writes each variant's source to /tmp (for nvcc -cubin checks on a machine without a
GPU).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90 as S  # noqa: E402
from int8_gemm_sm90_ring import _smem_bytes  # noqa: E402
import int8_gemm_sm90_pp as P  # noqa: E402
from bench import event_ms as time_ms  # noqa: E402  (CUDA events, medians)

PROMOTE = "acc[i] = fmaf(__int2float_rn(d[i]), sab[(i / 4) * 8 / QB], acc[i]);"
# exact int -> float for |P| < 2^22 (QB * 127^2 <= 2.1e6): integer add into the bits of 2^23 + 2^22,
# then one FADD; IADD + FADD + FFMA, none of them I2FP
MAGIC = "acc[i] = fmaf(__int_as_float(d[i] + 0x4B400000) - 12582912.f, sab[(i / 4) * 8 / QB], acc[i]);"
ARRIVE = "            if (wg == 0 || kb + g + 1 < KB) named_bar_arrive(TURN0 + 1 - wg);   // its turn\n"
FINISH = "                finish_kblock(acc, d[(g - 1) % 2], base, kb + g - 1, rb);\n            }\n"
assert PROMOTE in S.SM90_SRC and ARRIVE in P.SM90_PP_SRC and FINISH in P.SM90_PP_SRC
VARIANTS = {
    "v1": (S.SM90_SRC, {}),
    "v1_magic": (S.SM90_SRC, {PROMOTE: MAGIC}),
    # turn passed right after the issue (shipped int8_gemm_sm90_pp.py)
    "pp": (P.SM90_PP_SRC, {}),
    "pp_magic": (P.SM90_PP_SRC, {PROMOTE: MAGIC}),
    # turn passed after the promotion: promotions strictly alternate (FA3's softmax placement)
    "pp_late": (P.SM90_PP_SRC, {ARRIVE: "", FINISH: FINISH + ARRIVE}),
    "pp_late_magic": (P.SM90_PP_SRC, {ARRIVE: "", FINISH: FINISH + ARRIVE, PROMOTE: MAGIC}),
}


# --diag: timing only (wrong sums): does the promotion overlap the tensor-core work at all?
WGMMA = "wgmma_m64n128k32_s8(d, smem_desc(sA + j * QB + 32 * s), smem_desc(sB + j * QB + 32 * s), s > 0);"
FENCE_D = "fence_operands(d);\n    const float* s ="
assert WGMMA in S.SM90_SRC and FENCE_D in S.SM90_SRC
DIAG = {
    "v1": (S.SM90_SRC, {}),
    # wgmma + waits + barriers, no promotion (D is kept live, acc stays 0)
    "no_promote": (S.SM90_SRC, {FENCE_D: "fence_operands(d);\n    return;\n    const float* s ="}),
    # promotion of D without any wgmma (D zero-initialised, then \"rewritten\" by an empty asm)
    "no_wgmma": (S.SM90_SRC, {WGMMA: "fence_operands(d);", "int d[2][NACC];": "int d[2][NACC] = {};"}),
}
if "--diag" in sys.argv:
    VARIANTS = DIAG


def source(name):
    src, subs = VARIANTS[name]
    for old, new in subs.items():
        src = src.replace(old, new)
    return src

def main():
    if "--check" in sys.argv:
        for name in VARIANTS:
            with open(f"/tmp/pp_variant_{name}.cu", "w") as f:
                f.write(source(name))
        return
    import torch
    from int8_gemm import gemm_ref
    from quantize import QTensor, get_kernel, launch, quantize
    m, k, n = 16384, 8192, 2048
    a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
    ab, bb = a.bfloat16(), b.bfloat16()
    t16 = time_ms(lambda: ab @ bb.t())
    print(f"bf16 {t16:.3f} ms {2 * m * n * k / t16 / 1e9:.0f} TFLOPS")
    print("| variant | QB | ms | TOPS | x bf16 | rel err |\n|---|---|---|---|---|---|")
    for qb in (32, 64, 128):
        ta, tb = quantize(a, qb), quantize(b, qb)
        head = QTensor(ta.q[:256].contiguous(), ta.s[:256 // qb].contiguous(), torch.Size((256, k)), qb)
        ref = gemm_ref(head, tb)
        c = torch.empty(m, n, device="cuda")
        smem = _smem_bytes(qb)
        for name in VARIANTS:
            kern = get_kernel(source(name), "gemm_sm90_float_kernel", (f"QB={qb}",))
            kern.max_dynamic_shared_size_bytes = smem
            args = (ta.q, ta.s, tb.q, tb.s, c, np.int32(m), np.int32(n), np.int32(m), np.int32(n),
                    np.int32(k), np.int32(0), np.int32(0))
            grid = ((m // 128) * (n // 128),)
            c.fill_(float("nan"))
            run = lambda: launch(kern, grid, (384,), args, shared_mem=smem)  # noqa: E731
            run()
            err = ((c[:256] - ref).norm() / ref.norm()).item()
            t = time_ms(run)
            tops = 2 * m * n * k / t / 1e9
            print(f"| {name} | {qb} | {t:.3f} | {tops:.0f} | {t16 / t:.2f} | {err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
