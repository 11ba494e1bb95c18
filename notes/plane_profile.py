"""Where the fused fallback GEMM's plane time goes (not part of the library).

    python3 notes/plane_profile.py                 # the fused GEMM's overhead by flagged fraction
    python3 notes/plane_profile.py --target F      # run the GEMM at flagged fraction F for ncu
    python3 notes/plane_profile.py --summary CSV   # summarise ncu's SASS source page (CSV)
    bash notes/plane_profile.sh                    # all of it on the GPU machine, into $OUT

Forward GEMM 16384x2048x8192, int8 out, QB = 32, uniform 'topk' flags (as bench.py's fallback
rows), GPU time of the kernels (bench.kernel_ms), median of 3.
--summary: warp-stall samples per SASS instruction from `ncu --page source --csv`, summed by
opcode, and the top instructions with their stall reasons (notes/plane_profile.log reads the
regions off their addresses: consume_plane is the loop that holds the exact promotion's I2FP).
"""
import csv
import collections
import gzip
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = [(16384, 2048, 8192), (16384, 8192, 2048)]


def data(M, K, N, frac):
    import torch
    from fallback import quantize_fallback
    from quantize import quantize
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, K, device="cuda", generator=g)
    w = torch.randn(N, K, device="cuda", generator=g)
    tw = quantize(w)
    if frac == 0:
        return quantize(x), tw, 0.0
    t, flagged = quantize_fallback(x, 32, "topk", frac)
    return t, tw, flagged


def timing():
    """The fused GEMM's time by flagged fraction against the plain GEMM's (median of 3), with
    _halves as it is and forced to one K-block list per tile (1) or per consumer half (2)."""
    import torch
    import int8_gemm_sm90_plane as P
    from bench import kernel_ms
    from int8_gemm import gemm_cuda
    auto = P._halves
    choices = {"fused": auto, "halves=1": lambda t, on_a: 1, "halves=2": lambda t, on_a: 2}
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| mkn | flagged | plain ms | " + " | ".join(f"{c} ms" for c in choices)
          + " | overhead |\n|---|---|---|" + "---|" * len(choices) + "---|")
    for M, K, N in SHAPES:
        plain, tw, _ = data(M, K, N, 0)
        t_plain = min(kernel_ms(lambda: gemm_cuda(plain, tw, out="int8")) for _ in range(2))
        for frac in (0.01, 0.05, 0.2, 1.0):
            t, tw, flagged = data(M, K, N, frac)
            ms = {}
            for c, f in choices.items():
                P._halves = f
                ms[c] = sorted(kernel_ms(lambda: gemm_cuda(t, tw, out="int8", kernel="wgmma"))
                               for _ in range(3))[1]
            P._halves = auto
            print(f"| {M}x{K}x{N} | {flagged:.3f} | {t_plain:.3f} | "
                  + " | ".join(f"{v:.3f}" for v in ms.values())
                  + f" | {ms['fused'] / t_plain - 1:+.0%} |", flush=True)


def target(frac):
    """The GEMM a few times: ncu profiles one launch (--launch-skip)."""
    import torch
    from int8_gemm import gemm_cuda
    M, K, N = SHAPES[0]
    t, tw, flagged = data(M, K, N, frac)
    print(f"flagged {flagged:.4f}")
    for _ in range(4):
        gemm_cuda(t, tw, out="int8", kernel="wgmma")
    torch.cuda.synchronize()


def summary(path):
    """Stall samples by opcode, by region and the top instructions of an ncu source-page CSV."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        rows = list(csv.reader(f))
    head = next(i for i, r in enumerate(rows) if any("Source" == c.strip() for c in r))
    cols, body = rows[head], rows[head + 1:]
    src = cols.index("Source")
    samp = [i for i, c in enumerate(cols) if c.startswith("Warp Stall Sampling (All")]
    if not samp:
        sys.exit(f"no sampling column in {cols}")
    stall_cols = [i for i, c in enumerate(cols) if c.startswith("stall_") or "Stall" in c]
    total = 0
    by_op, lines = collections.Counter(), []
    for r in body:
        if len(r) <= max(samp[0], src):
            continue
        try:
            n = float(r[samp[0]].replace(",", "") or 0)
        except ValueError:
            continue
        op = re.sub(r"^@!?U?P\w+\s+", "", r[src].strip()).split(" ")[0]
        by_op[op] += n
        total += n
        lines.append((n, r[src].strip(), {cols[i]: r[i] for i in stall_cols if r[i] not in ("", "0")}))
    print(f"samples: {total:.0f}; columns: {[cols[i] for i in samp + stall_cols]}")
    print("\n| opcode | samples | share |\n|---|---|---|")
    for op, n in by_op.most_common(25):
        print(f"| {op} | {n:.0f} | {n / total:.1%} |")
    print("\n| samples | instruction | stall columns |\n|---|---|---|")
    for n, s, st in sorted(lines, key=lambda x: -x[0])[:40]:
        print(f"| {n:.0f} | `{s[:70]}` | {st} |")


if __name__ == "__main__":
    if "--target" in sys.argv:
        target(float(sys.argv[sys.argv.index("--target") + 1]))
    elif "--summary" in sys.argv:
        summary(sys.argv[sys.argv.index("--summary") + 1])
    else:
        timing()
