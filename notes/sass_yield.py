"""Experiment (not part of the library): does the warp scheduler's yield hint on the promotion's
FFMAs let the wgmma and the promotion overlap? DeepGEMM found that flipping the yield bit (and
clearing the reuse bits, since a yielded warp loses its operand reuse cache) on part of the FFMAs
of its FP8 promotion made the MMA and the FFMAs overlap better (+10% on some shapes).

    python3 notes/sass_yield.py build     # CPU: nvcc cubins of the wgmma kernel + patched copies
    python3 notes/sass_yield.py time      # GPU: time every cubin, check outputs are bit-identical

sm_90 instructions are 128 bits; the scheduling control sits in bits 105-125 (the high word's
bits 41-61): stall count (4 bits), yield (1), write barrier (3), read barrier (3), wait mask (6),
operand reuse (4). ptxas sets the yield bit to 1 on almost every instruction; DeepGEMM clears it.
"""
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
OUT = os.path.join(HERE, "yield_cubins")
KERNEL = "gemm_sm90_float_kernel"
YIELD = 1 << 45            # in the high 64-bit word
REUSE = 0xF << 58
BUILDS = [("magic", 32, 16), ("magic", 64, 8), ("exact", 32, 4), ("exact", 128, 2)]
RULES = ("base", "all", "alt", "reuse", "alt_fmul")


def text_section(data, kernel):
    """(offset, size) of .text.<kernel> in an ELF64 cubin."""
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    heads = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = heads[shstrndx][4]
    for name, _, _, _, offset, size in heads:
        end = data.index(b"\0", names + name)
        if data[names + name:end].decode() == ".text." + kernel:
            return offset, size
    raise KeyError(kernel)


def is_ffma(lo):
    return (lo & 0x1FF) == 0x023          # FFMA R,R,R 0x223 / R,imm,R 0x823 / R,c,R 0xa23 ...


def is_fp(lo):
    return (lo & 0x1FF) in (0x023, 0x020, 0x021)   # FFMA, FMUL, FADD


def patch(data, kernel, rule):
    """A copy of the cubin with the yield bit cleared (and reuse bits cleared) on the chosen FFMAs."""
    data = bytearray(data)
    offset, size = text_section(bytes(data), kernel)
    n = changed = 0
    for at in range(offset, offset + size, 16):
        lo, hi = struct.unpack_from("<QQ", data, at)
        pick = is_fp(lo) if rule == "alt_fmul" else is_ffma(lo)
        if not pick:
            continue
        n += 1
        if rule == "all" or (rule in ("alt", "alt_fmul") and n % 2 == 0) or (rule == "reuse" and hi & REUSE):
            if hi & YIELD:
                changed += 1
            hi &= ~(YIELD | REUSE)
            struct.pack_into("<QQ", data, at, lo, hi)
    return bytes(data), n, changed


def build():
    import int8_gemm_sm90 as S
    os.makedirs(OUT, exist_ok=True)
    for kind, qb, g in BUILDS:
        src = S.SM90_MAGIC_SRC if kind == "magic" else S.SM90_SRC
        with tempfile.NamedTemporaryFile("w", suffix=".cu", delete=False) as f:
            f.write(src)
        base = os.path.join(OUT, f"{kind}{qb}_base.cubin")
        subprocess.run(["nvcc", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-cubin",
                        f"-DQB={qb}", f"-DKGROUP={g}", "-o", base, f.name], check=True)
        os.unlink(f.name)
        data = open(base, "rb").read()
        for rule in RULES[1:]:
            out, n, changed = patch(data, KERNEL, rule)
            open(os.path.join(OUT, f"{kind}{qb}_{rule}.cubin"), "wb").write(out)
            print(f"{kind}{qb} {rule}: {n} FFMAs, {changed} yield bits cleared")


def load_cubin(kind, qb, rule):
    """The float kernel of one of build()'s cubins, ready for its shared memory."""
    import cupy
    from int8_gemm_sm90_ring import _smem_bytes
    fn = cupy.RawModule(path=os.path.join(OUT, f"{kind}{qb}_{rule}.cubin")).get_function(KERNEL)
    fn.max_dynamic_shared_size_bytes = _smem_bytes(qb)
    return fn


def gemm_runner(kern, ta, tb, c):
    """A no-argument launch of kernel `kern` computing c (M x N fp32) = A B^T, no plane: the
    argument list of int8_gemm_sm90.launch_float."""
    from int8_gemm_sm90 import float_kernel_args
    from int8_gemm_sm90_ring import _smem_bytes
    from quantize import launch
    m, n, qb = ta.q.shape[0], tb.q.shape[0], ta.qblock
    args = float_kernel_args(ta, tb, c, m, n)
    return lambda: launch(kern, ((m // 128) * (n // 128),), (384,), args, shared_mem=_smem_bytes(qb))


def time_all():
    import torch
    from bench import event_ms
    from int8_gemm_sm90 import _kernel, _source
    from quantize import quantize
    print("| build | mkn | bf16 ms | " + " | ".join(RULES) + " | nvrtc lib | identical |")
    print("|---" * (len(RULES) + 5) + "|")
    for m, k, n in ((16384, 8192, 2048), (16384, 2048, 8192)):
        torch.manual_seed(0)
        a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
        a[:, 5] *= 300.0
        ab, bb = a.bfloat16(), b.bfloat16()
        t16 = event_ms(lambda: ab @ bb.t())
        for kind, qb, g in BUILDS:
            ta, tb = quantize(a, qb), quantize(b, qb)
            c = torch.empty(m, n, device="cuda")
            kernels = {rule: load_cubin(kind, qb, rule) for rule in RULES}
            kernels["lib"] = _kernel(KERNEL, qb, 0, *_source(qb, k, kind == "exact", None))
            outs, times = {}, {}
            for rule, fn in kernels.items():
                run = gemm_runner(fn, ta, tb, c)
                c.fill_(float("nan"))
                run()
                outs[rule] = c.clone()
                times[rule] = event_ms(run)
            same = all(torch.equal(outs[r], outs["base"]) for r in kernels)
            cells = " | ".join(f"{times[r]:.3f} ({times['base'] / times[r]:.2f}x)" for r in RULES)
            print(f"| {kind}{qb} G{g} | {m}x{k}x{n} | {t16:.3f} | {cells} | {times['lib']:.3f} | {same} |",
                  flush=True)


def order():
    """The library's NVRTC kernel against the nvcc cubin, alternating (is the gap an order effect?)."""
    import cupy
    import torch
    from bench import event_ms
    from int8_gemm_sm90 import _kernel, _source
    from quantize import quantize
    print("nvrtc", cupy.cuda.nvrtc.getVersion(), "driver", cupy.cuda.runtime.driverGetVersion())
    m, k, n = 16384, 8192, 2048
    a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
    for kind, qb, g in BUILDS:
        ta, tb = quantize(a, qb), quantize(b, qb)
        c = torch.empty(m, n, device="cuda")
        lib = _kernel(KERNEL, qb, 0, *_source(qb, k, kind == "exact", None))
        row = [f"{name} {event_ms(gemm_runner(kern, ta, tb, c)):.3f}"
               for name, kern in (("lib", lib), ("nvcc", load_cubin(kind, qb, "base"))) * 3]
        print(f"{kind}{qb}:", ", ".join(row), flush=True)


if __name__ == "__main__":
    {"build": build, "time": time_all, "order": order}[sys.argv[1]]()
