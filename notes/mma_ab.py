"""A/B of the mma.sync GEMM's main loop, variants alternating in one process (not part of the library).

    python3 notes/mma_ab.py [--old notes/_mma_v2.py]
    python3 notes/mma_ab.py --target v3     # one variant, 16384x2048x8192 QB 32 int8 out, 4 launches (for ncu)

Variants (forward int8 out, and the float out of one wgrad layout; QB = 32, 64, 128):
  v2        the kernel before (two int32 D buffers, 1 CTA of 8 warps per SM, ~250 registers),
            from --old (a copy of int8_gemm_mma.py at 2ea6660)
  v3        the shipped kernel (one 16-row slice's D at a time, 2 CTAs per SM, <= 128 registers)
  v3_magic  QB = 32 only: v3 with the stage's K-blocks promoted by the magic-number Abel sum
            (D runs on across them: 1 + KB_STAGE FFMA per element per stage instead of
            2 KB_STAGE FADD + FFMA)
  v3_bk128, v3_magic_bk128: the same with 128 bytes of K per stage (3 stages, 4 K-blocks a stage
            at QB = 32), half the barriers and stage set-ups per K
(v3_1cta, v3 for 1 CTA per SM, was within +-6% of v2 in the first run: notes/mma_ab.log)
cuBLAS bf16 (torch.matmul) and torch._int_mm timed in the same rounds. Outputs of v3 against v2
compared bit for bit; v3_magic's error against v2 printed.
"""
import argparse
import importlib.util
import os
import statistics
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm as G  # noqa: E402
import int8_gemm_mma as MMA  # noqa: E402
from bench import event_ms  # noqa: E402
from quantize import QTensor, get_kernel, launch, quantize  # noqa: E402
from quantize_cuda import sr_salt  # noqa: E402

STAGE_LOOP = """    #pragma unroll
    for (int kbl = 0; kbl < KB_STAGE; ++kbl) {
        float sab[RB_WARP];                                    // s_A * s_B of this K-block
        #pragma unroll
        for (int r = 0; r < RB_WARP; ++r) sab[r] = cur.a[kbl][r] * cur.b[kbl];
        mma_kblock(L, sA, sB, kbl, acc, sab);
    }
"""
MAGIC_LOOP = """    static_assert(STEPS_PER_QB == 1, "magic stage: QB = 32");
    // D runs on over the stage's KB_STAGE K-blocks: F_k = MAGIC + P_0 + ... + P_k (|.| < 2^22), and
    // sum_k c_k P_k = sum_k (c_k - c_k+1) F_k + c_last F_last - MAGIC c_0 (Abel summation)
    const int magic[4] = {MAGIC, MAGIC, MAGIC, MAGIC};
    float c[KB_STAGE][RB_WARP];
    #pragma unroll
    for (int k = 0; k < KB_STAGE; ++k)
        #pragma unroll
        for (int r = 0; r < RB_WARP; ++r) c[k][r] = cur.a[k][r] * cur.b[k];
    float coef[KB_STAGE][RB_WARP];
    #pragma unroll
    for (int k = 0; k < KB_STAGE; ++k)
        #pragma unroll
        for (int r = 0; r < RB_WARP; ++r) coef[k][r] = k + 1 < KB_STAGE ? c[k][r] - c[k + 1][r] : c[k][r];
    unsigned b[KB_STAGE][NI][2];
    #pragma unroll
    for (int s = 0; s < KB_STAGE; ++s)
        #pragma unroll
        for (int j = 0; j < NI / 2; ++j) {
            unsigned r[4];
            ldmatrix_x4(r, sB + L.b_frag[s] + 16 * BK * j);
            b[s][2 * j][0] = r[0]; b[s][2 * j][1] = r[1]; b[s][2 * j + 1][0] = r[2]; b[s][2 * j + 1][1] = r[3];
        }
    #pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
        const int r = 16 * mi / QB;
        int d[NI][4];
        #pragma unroll
        for (int s = 0; s < KB_STAGE; ++s) {
            unsigned a[4];
            ldmatrix_x4(a, sA + L.a_frag[s] + 16 * BK * mi);
            #pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
                if (s == 0) mma_m16n8k32_s8(d[ni], a, b[s][ni], magic);
                else        mma_m16n8k32_s8(d[ni], a, b[s][ni], d[ni]);
            }
            #pragma unroll
            for (int ni = 0; ni < NI; ++ni)
                #pragma unroll
                for (int j = 0; j < 4; ++j) {
                    if (s == 0) acc[mi][ni][j] = fmaf(-12582912.0f, c[0][r], acc[mi][ni][j]);
                    acc[mi][ni][j] = fmaf(coef[s][r], __int_as_float(d[ni][j]), acc[mi][ni][j]);
                }
        }
    }
"""
# B's fragments loaded per (slice, K-block) instead of once per stage (4x the B ldmatrix traffic,
# 24 registers fewer): for 4 K-blocks a stage
MAGIC_LOOP_RELOAD = (MAGIC_LOOP
    .replace("""    unsigned b[KB_STAGE][NI][2];
    #pragma unroll
    for (int s = 0; s < KB_STAGE; ++s)
        #pragma unroll
        for (int j = 0; j < NI / 2; ++j) {""", """    auto load_b = [&](unsigned (&b)[NI][2], int s) {
        #pragma unroll
        for (int j = 0; j < NI / 2; ++j) {""")
    .replace("b[s][2 * j][0] = r[0]; b[s][2 * j][1] = r[1]; b[s][2 * j + 1][0] = r[2]; b[s][2 * j + 1][1] = r[3];\n        }",
             "b[2 * j][0] = r[0]; b[2 * j][1] = r[1]; b[2 * j + 1][0] = r[2]; b[2 * j + 1][1] = r[3];\n        }\n    };")
    .replace("""            unsigned a[4];
            ldmatrix_x4(a, sA""", """            unsigned a[4], b[1][NI][2];
            load_b(b[0], s);
            ldmatrix_x4(a, sA""")
    .replace("b[s][ni], magic)", "b[0][ni], magic)").replace("b[s][ni], d[ni])", "b[0][ni], d[ni])"))
BK128 = {"constexpr int BK = QB > 64 ? QB : 64;": "constexpr int BK = 128;",
         "constexpr int STAGES = BK == 64 ? 4 : 3;": "constexpr int STAGES = 3;"}
SHAPES = [(16384, 768, 3072), (16384, 3072, 768), (16384, 2048, 8192), (16384, 8192, 2048),
          (8192, 4096, 4096)]


def variants(old_src):
    assert STAGE_LOOP in MMA.GEMM_SRC
    return {
        "v2": (old_src, ()),
        "v3": (MMA.GEMM_SRC, ()),
        "v3_magic": (MMA.GEMM_SRC.replace(STAGE_LOOP, MAGIC_LOOP), ()),
        "v3_bk128": (sub(MMA.GEMM_SRC, BK128), ()),
        "v3_magic_bk128": (sub(MMA.GEMM_SRC.replace(STAGE_LOOP, MAGIC_LOOP_RELOAD), BK128), ()),
    }


def sub(src, subs):
    for old, new in subs.items():
        assert old in src, old
        src = src.replace(old, new)
    return src


def runner(src, defines, qb, a, b, out):
    smem = 3 * 2 * 128 * 128 if "BK = 128;" in src else G._smem_bytes(qb)
    if out == "int8":
        k = get_kernel(src, "gemm_int8_kernel", (f"QB={qb}",) + defines)
        k.max_dynamic_shared_size_bytes = smem
        Mp, Np, Kp = a.q.shape[0], b.q.shape[0], a.q.shape[1]
        q = torch.empty(Mp, Np, dtype=torch.int8, device="cuda")
        s = torch.empty(Mp // qb, Np // qb, device="cuda")
        args = (a.q, a.s, b.q, b.s, q, s, np.int32(Mp), np.int32(Np), np.int32(Kp), np.int32(0),
                np.uint32(0), sr_salt(a.q.device))
        res = lambda: QTensor(q, s, torch.Size((Mp, Np)), qb).dequantize()  # noqa: E731
    else:
        k = get_kernel(src, "gemm_float_kernel", (f"QB={qb}",) + defines)
        k.max_dynamic_shared_size_bytes = smem
        Mp, Np, Kp = a.q.shape[0], b.q.shape[0], a.q.shape[1]
        c = torch.empty(Mp, Np, device="cuda")
        args = (a.q, a.s, b.q, b.s, c, np.int32(Mp), np.int32(Np), np.int32(Mp), np.int32(Np),
                np.int32(Kp), np.int32(0), np.uint64(0))
        res = lambda: c  # noqa: E731
    grid = (G.cdiv(Mp, 128) * G.cdiv(Np, 128),)
    return (lambda: launch(k, grid, (256,), args, shared_mem=smem)), res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default=os.path.join(os.path.dirname(__file__), "_mma_v2.py"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--target", help="run this variant 4 times and exit (for ncu)")
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("mma_old", args.old)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    V = variants(old.GEMM_SRC)
    torch.manual_seed(0)
    if args.target:
        x, w = torch.randn(16384, 2048, device="cuda"), torch.randn(8192, 2048, device="cuda")
        fn, _ = runner(*V[args.target], 32, quantize(x, 32), quantize(w, 32), "int8")
        for _ in range(4):
            fn()
        torch.cuda.synchronize()
        return
    print(torch.cuda.get_device_name(), torch.__version__)
    print("| mkn | out | QB | bf16 ms | _int_mm ms | " + " | ".join(f"{v} ms (x bf16)" for v in V)
          + " | v3 == v2 | rel err of " + " / ".join(n for n in V if n.startswith("v3_")) + " |")
    print("|---" * (7 + len(V)) + "|")
    cases = [(s, "int8") for s in SHAPES] + [((3072, 16384, 768), "float")]   # + a wgrad layout
    for (M, K, N), out in cases:
        x = torch.randn(M, K, device="cuda")
        w = torch.randn(N, K, device="cuda")
        xb, wb = x.bfloat16(), w.bfloat16()
        xi, wi = x.clamp(-3, 3).mul(40).to(torch.int8), w.clamp(-3, 3).mul(40).to(torch.int8).t()
        for qb in (32, 64, 128):
            a, b = quantize(x, qb), quantize(w, qb)
            fns = {n: runner(src, d, qb, a, b, out) for n, (src, d) in V.items()
                   if not (("magic" in n and qb != 32) or ("bk128" in n and qb == 128))}
            times = {n: [] for n in ["bf16", "int_mm"] + list(fns)}
            for _ in range(args.rounds):
                times["bf16"].append(event_ms(lambda: xb @ wb.t()))
                times["int_mm"].append(event_ms(lambda: torch._int_mm(xi, wi)))
                for n, (fn, _) in fns.items():
                    times[n].append(event_ms(fn))
            med = {n: statistics.median(t) for n, t in times.items()}
            outs = {}
            for n, (fn, res) in fns.items():
                fn()
                outs[n] = res().clone()
            same = torch.equal(outs["v3"], outs["v2"])
            err = " / ".join(f"{((outs[n] - outs['v2']).norm() / outs['v2'].norm()).item():.1e}"
                             for n in outs if n.startswith("v3_"))
            cells = " | ".join(f"{med[n]:.3f} ({med['bf16'] / med[n]:.2f}x)" if n in med else "-" for n in V)
            print(f"| {M}x{K}x{N} | {out} | {qb} | {med['bf16']:.3f} | {med['int_mm']:.3f} | {cells} | {same} | {err} |",
                  flush=True)


if __name__ == "__main__":
    main()
