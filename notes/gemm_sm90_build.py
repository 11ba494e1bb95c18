"""Compile the Hopper GEMM's kernel sources with nvcc for sm_90a and report what ptxas says: registers,
spills, and the warnings that mean the wgmma pipeline was serialised or setmaxnreg ignored (C7514,
C7517, C7519, C7508, C7511). No GPU needed (not part of the library; notes/gemm_sm90_sass.sh runs
it with --sass on the GPU machine, which has cuobjdump).

    python3 notes/gemm_sm90_build.py            # the table below, one row per source and QB
    python3 notes/gemm_sm90_build.py --sass     # + SASS of the consumer K loop (needs cuobjdump)

Per row: the source as _source() picks it (magic: K-groups of 16 / 8 / 4 at QB = 32 / 64 / 128; exact; the
ping-pong variant), ptxas's registers at entry and spill bytes per kernel, the flagged warnings, and
the PTX instructions of the consumer K loop (the first loop holding a wgmma but no float compare:
the fallback plane's loop compares scale products with 0) per accumulator element per K-block, as
a proxy for SASS. --sass: the same loop in SASS (cuobjdump -sass), per element per
K-block and by opcode per K-block, and the highest register the consumer and producer code names
(setmaxnreg 232 / 40: R231 / R39 at most; ptxas -v shows only the kernel's 168 at entry).
"""
import collections
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90 as S  # noqa: E402
import int8_gemm_sm90_pp as PP  # noqa: E402

BUILDS = [  # (name, source, QB, K-group: K-blocks per consumer loop iteration, or None: the default)
    ("magic", S.SM90_MAGIC_SRC, 32, 16), ("magic", S.SM90_MAGIC_SRC, 64, 8),
    ("magic", S.SM90_MAGIC_SRC, 128, 4),
    ("exact", S.SM90_SRC, 32, None), ("exact", S.SM90_SRC, 64, None), ("exact", S.SM90_SRC, 128, None),
    ("pp", PP.SM90_PP_SRC, 32, None), ("pp", PP.SM90_PP_SRC, 64, None), ("pp", PP.SM90_PP_SRC, 128, None),
]
BAD = ("C7514", "C7517", "C7519", "C7508", "C7511")
NACC = 64                                    # accumulators per consumer thread
KERNEL = "gemm_sm90_float_kernel"


def default_group(qb):
    return {32: 4, 64: 2, 128: 2}[qb]        # KGROUP's default in SM90_PTX_SRC


def compile_source(src, qb, group, out, kind):
    """nvcc -> out (kind: 'cubin' or 'ptx'); returns ptxas's -v output."""
    with tempfile.NamedTemporaryFile("w", suffix=".cu", delete=False) as f:
        f.write(src)
    defines = [f"-DQB={qb}"] + ([f"-DKGROUP={group}"] if group else [])
    cmd = ["nvcc", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", f"-{kind}", "-Xptxas", "-v",
           *defines, "-o", out, f.name]
    r = subprocess.run(cmd, capture_output=True, text=True)
    os.unlink(f.name)
    if r.returncode:
        sys.exit(r.stderr)
    return r.stderr


def ptxas_report(log):
    """{kernel: (registers, spill bytes)} and the flagged warnings of a ptxas -v log."""
    out, name = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            out[name] = [None, int(m.group(1)) + int(m.group(2))]
        m = re.search(r"Used (\d+) registers", line)
        if m and name in out:
            out[name][0] = int(m.group(1))
    return out, sorted({w for w in BAD if w in log})


def first_innermost(loops):
    """The body of the first loop, in program order, of (start, end, body) loops that holds no
    other: the consumer K loop, inside the loop over the CTA's tiles."""
    inner = [x for x in loops if not any(x[0] <= y[0] and y[1] <= x[1] and y[:2] != x[:2]
                                         for y in loops)]
    return min(inner)[2]


def ptx_loop(ptx):
    """PTX instructions of the consumer K loop of KERNEL: the first innermost loop (a label and the
    last branch back to it) whose body holds a wgmma and no float compare (consume_plane's)."""
    body = ptx[ptx.index(f".entry {KERNEL}"):]
    lines = [x.strip() for x in body.splitlines()]
    labels = {x[:-1]: i for i, x in enumerate(lines) if re.match(r"^\$\w+:$", x)}
    loops = []
    for i, x in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$\w+);", x)
        if m and labels.get(m.group(1), i) < i:
            seg = lines[labels[m.group(1)]:i + 1]
            plane = any(re.search(r"setp\.(eq|neu)\.f32", y) for y in seg)
            if any("wgmma.mma_async" in y for y in seg) and not plane:
                loops.append((labels[m.group(1)], i, seg))
    seg = first_innermost(loops)
    return [y for y in seg if y and not y.startswith(("$", "//", "{", "}", ".reg"))]


def sass_loop(sass):
    """SASS instructions (opcode with modifiers) of the consumer K loop of KERNEL: the first
    innermost loop (backward branch) whose body holds an IGMMA and no FSETP.NEU (consume_plane's)."""
    text = sass[sass.index(f"Function : {KERNEL}"):]
    ins = [(int(m.group(1), 16), m.group(2)) for m in
           re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*?)\s*;", text)]
    loops = []
    for pc, txt in ins:
        m = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", txt)
        if m and int(m.group(1), 16) < pc:
            body = [x for p, x in ins if int(m.group(1), 16) <= p <= pc]
            if any("GMMA" in x for x in body) and not any("FSETP.NEU" in x for x in body):
                loops.append((int(m.group(1), 16), pc, body))
    body = first_innermost(loops)
    return [re.sub(r"^@!?U?P\w+\s+", "", x).split()[0] for x in body]


def sass_max_registers(sass):
    """Highest register the consumers (after setmaxnreg.inc 232) and the producer (after
    setmaxnreg.dec 40) name in KERNEL's SASS: ptxas -v reports only the kernel's entry count."""
    text = sass[sass.index(f"Function : {KERNEL}"):]
    text = text[:text.find("Function :", 10)] if "Function :" in text[10:] else text
    ins = [(int(m.group(1), 16), m.group(2)) for m in
           re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*?)\s*;", text)]
    alloc = next(p for p, x in ins if "USETMAXREG.TRY_ALLOC" in x)
    dealloc = next(p for p, x in ins if "USETMAXREG.DEALLOC" in x)
    end_c = max(p for p, x in ins if alloc < p < dealloc and x == "EXIT")
    end_p = min(p for p, x in ins if p > dealloc and x == "EXIT")

    def highest(lo, hi):
        return max(int(r) for p, x in ins if lo <= p <= hi for r in re.findall(r"\bR(\d+)\b", x))
    return highest(alloc, end_c), highest(dealloc, end_p)


def main():
    sass = "--sass" in sys.argv
    tmp = tempfile.mkdtemp()
    print("| source | QB | G | registers (float, int8 kernel) | spill bytes | warnings | PTX loop | "
          "PTX / element / K-block |" + (" SASS loop | SASS / element / K-block | highest register: "
                                      "consumer, producer |" if sass else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|---|---|" if sass else ""))
    opcodes = []
    for name, src, qb, group in BUILDS:
        g = group or default_group(qb)
        cubin = os.path.join(tmp, f"{name}_{qb}.cubin")
        regs, warns = ptxas_report(compile_source(src, qb, group, cubin, "cubin"))
        ptx_file = os.path.join(tmp, f"{name}_{qb}.ptx")
        compile_source(src, qb, group, ptx_file, "ptx")
        n_ptx = len(ptx_loop(open(ptx_file).read()))
        row = (f"| {name} | {qb} | {g} | {regs['gemm_sm90_float_kernel'][0]}, "
               f"{regs['gemm_sm90_int8_kernel'][0]} | {sum(v[1] for v in regs.values())} | "
               f"{' '.join(warns) or 'none'} | {n_ptx} | {n_ptx / (NACC * g):.2f} |")
        if sass:
            dump = subprocess.run(["cuobjdump", "-sass", cubin], capture_output=True, text=True,
                                  check=True).stdout
            ops = sass_loop(dump)
            row += f" {len(ops)} | {len(ops) / (NACC * g):.2f} | R%d, R%d |" % sass_max_registers(dump)
            opcodes.append((name, qb, g, collections.Counter(ops)))
        print(row, flush=True)
    for name, qb, g, count in opcodes:
        print(f"\n{name} QB={qb} G={g}, SASS of the consumer loop per K-block (/ element: / {NACC}):")
        print(", ".join(f"{op} {n / g:g}" for op, n in count.most_common()))


if __name__ == "__main__":
    main()
