"""bench.py's gemm section as one table with both kernels side by side (not part of the library):

    python3 notes/gemm_table.py results/bench_gemm_fallback_71806cf.json

Per bench row (op, mkn): cuBLAS bf16's time and TFLOPS in the same run, then each kernel's
speedup over it at QB = 32 / 64 / 128; wgmma's cells also give its TOPS and their % of the
2.0 POPS int8 wgmma ceiling. Large shapes: the three layers with 16384 x 2048 x 8192,
16384 x 8192 x 2048 and 8192 x 4096 x 4096 (issue 5's QB = 64 / 128 targets apply there).
"""
import json
import sys

QBS = (32, 64, 128)
LARGE = ("16384x2048x8192", "16384x8192x2048", "8192x4096x4096")
WGMMA_PEAK = 2000.0                                   # TOPS, DESIGN's measured wgmma ceiling


def table(report):
    rows = report["sections"]["gemm"]
    by = {(r["op"], r["layer"], r["mkn"], r["kernel"], r["QB"]): r for r in rows}
    keys = list(dict.fromkeys((r["op"], r["layer"], r["mkn"]) for r in rows))
    out = ["| GEMM | layer | mkn | bf16 ms (TFLOPS) | mma 32 | mma 64 | mma 128 | wgmma 32 | "
           "wgmma 64 | wgmma 128 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for op, layer, mkn in keys:
        m, k, n = (int(v) for v in mkn.split("x"))
        first = by[(op, layer, mkn, "wgmma", 32)]
        bf16 = first["bf16_ms"]
        cells = [f"{by[(op, layer, mkn, 'mma', qb)]['speedup']:.2f}x" for qb in QBS]
        for qb in QBS:
            r = by[(op, layer, mkn, "wgmma", qb)]
            cells.append(f"**{r['speedup']:.2f}x** {r['TOPS']:.0f} ({100 * r['TOPS'] / WGMMA_PEAK:.0f}%)")
        name = op.replace("gemm ", "")
        out.append(f"| {name} | {layer}{' (large)' if layer in LARGE else ''} | {mkn} | "
                   f"{bf16:.3f} ({2 * m * k * n / bf16 / 1e9:.0f}) | " + " | ".join(cells) + " |")
    return "\n".join(out)


def ranges(report):
    rows = report["sections"]["gemm"]
    out = []
    for kernel in ("mma", "wgmma"):
        for qb in QBS:
            sel = [r for r in rows if r["kernel"] == kernel and r["QB"] == qb]
            big = [r["speedup"] for r in sel if r["layer"] in LARGE]
            allv = [r["speedup"] for r in sel]
            tops = [r["TOPS"] for r in sel if r["layer"] in LARGE]
            out.append(f"{kernel} QB {qb}: all rows {min(allv):.2f}-{max(allv):.2f}x, large "
                       f"{min(big):.2f}-{max(big):.2f}x ({min(tops):.0f}-{max(tops):.0f} TOPS)")
    return "\n".join(out)


if __name__ == "__main__":
    report = json.load(open(sys.argv[1]))
    print(f"{report['device']}, {report['date']}, commit {report['commit']}\n")
    print(table(report))
    print()
    print(ranges(report))
