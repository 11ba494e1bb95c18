"""
Block-scaled INT8 GEMM: the reference, the tensor-core launcher, and the dispatch.

The math (DESIGN §2). With A (M, K) and B (N, K) quantized in QB x QB blocks,

    C = A @ B^T,   C[m, n] = sum_kb  s_A[m/QB, kb] * s_B[n/QB, kb] * P_kb[m, n]
                   P_kb     = A_q[:, kb] @ B_q[:, kb]^T        exact int32, |P| <= QB * 127^2

For each K-block the int8 partial sum is exact; only the rescale into the fp32 accumulator
rounds (in the reference and the exact kernels as one fp32 multiply-add per K-block; the wgmma
kernel's default "magic-number" promotion trades that for one instruction less per element,
and lands within about one unit of each K-block's s_A * s_B of it: see int8_gemm_sm90.py).
|P| <= 128 * 127^2 = 2.06M < 2^24, so the reference may even compute P in fp32 and stay exact. Epilogues:
    out='float'    C in fp32 or bf16, or added into an existing fp32 tensor (`accumulate`), or
                   added to an fp32 residual into a new tensor (`residual`: x + Y, the block's
                   residual stream, with no separate add kernel)
    out='int8'     C re-quantized in QB x QB blocks, round to nearest: forward activations
    out='int8_sr'  C re-quantized with stochastic rounding: input gradients

Layout: one only, "TN". a_q (Mp, Kp) and b_q (Np, Kp) int8 row-major (both K-contiguous, what
mma .row.col wants), a_s (Mp/QB, Kp/QB) and b_s (Np/QB, Kp/QB) fp32 row-major; Mp, Np, Kp are
multiples of QB and the padding is zero. dgrad and wgrad get their operands from QTensor.t()
(square blocks: a byte transpose, no requantization), so the kernel never loads transposed.

The mma.sync kernel's CUDA source lives in int8_gemm_mma.py (its docstring draws the tile, the
pipeline and the rescale); the Hopper wgmma kernel in int8_gemm_sm90.py. This file holds the
reference, the launcher and the dispatch.

Operands with a fallback plane (fallback.py) are a sum over plane pairs. On the GPU, gemm()
runs one kernel (wgmma, or mma.sync built with PLANE = 1) that reads the compact plane and adds
its flagged K-blocks as extra K-blocks (its cost grows with them: int8_gemm_sm90.py,
int8_gemm_mma.py); with planes on both operands, one tensor-core GEMM per plane pair
(gemm_planes); on the CPU the reference.
"""
from functools import lru_cache, partial

import numpy as np
import torch

from fallback_cuda import plane_lists_cuda
from int8_gemm_mma import GEMM_SRC
from quantize import QTensor, capability, get_kernel, launch, on_cuda, quantize, second_plane
from quantize_cuda import sr_salt

GEMM_OUTS = ("float", "int8", "int8_sr")


# ---------------------------------------------------------------------------------------------
# reference

def _planes(t):
    """An operand as a list of (q (R, C) int8, s (R/QB, C/QB) fp32) planes that sum to it: the
    plain blocks, plus the dense second plane (zero where unflagged) if any block is flagged."""
    planes = [(t.q, t.s)]
    if t.has_plane:
        planes.append(second_plane(t))
    return planes


def block_gemm_ref(a_q, a_s, b_q, b_s, qblock):
    """One plane pair: sum_kb (a_s x b_s)[kb] * (a_q[:, kb] @ b_q[:, kb]^T), padded (Mp, Np) fp32."""
    QB = qblock
    Mp, Kp = a_q.shape
    Np = b_q.shape[0]
    acc = torch.zeros(Mp // QB, QB, Np // QB, QB, device=a_q.device)
    with torch.autocast(a_q.device.type, enabled=False):   # bf16 would round the exact sums
        for kb in range(Kp // QB):
            k = slice(kb * QB, (kb + 1) * QB)
            # int8 values are exact in fp32 and every partial sum is an integer below 2^24
            p = a_q[:, k].float() @ b_q[:, k].float().t()              # (Mp, Np) exact
            scale = a_s[:, kb, None] * b_s[None, :, kb]                 # (Mp/QB, Np/QB)
            acc += p.view(Mp // QB, QB, Np // QB, QB) * scale[:, None, :, None]
    return acc.view(Mp, Np)


def gemm_ref(a, b, out="float", out_dtype=torch.float32, shape=None, generator=None,
             accumulate=None, residual=None):
    """Reference block-scaled GEMM: C = A @ B^T for QTensors a (M, K) and b (N, K).

    out: 'float' (tensor of out_dtype) | 'int8' | 'int8_sr' (QTensor).
    shape: logical shape of C (default (M, N)), e.g. (B, T, N) for an activation.
    accumulate: an fp32 tensor with M*N elements; C is added into it, and it is returned.
    residual: an fp32 tensor with M*N elements; returns residual + C, a new fp32 tensor of the
              residual's shape (residual itself unchanged).
    """
    check_gemm(a, b, out, out_dtype, accumulate, residual)
    acc = None
    for a_q, a_s in _planes(a):
        for b_q, b_s in _planes(b):
            part = block_gemm_ref(a_q, a_s, b_q, b_s, a.qblock)
            acc = part if acc is None else acc + part
    shape = torch.Size(shape) if shape is not None else torch.Size((a.rows, b.rows))
    c = acc[:a.rows, :b.rows].reshape(shape)                       # padding dropped
    if accumulate is not None:
        return accumulate.add_(c.reshape(accumulate.shape))
    if residual is not None:
        return residual + c.reshape(residual.shape)
    if out == "float":
        return c.to(out_dtype)
    return quantize(c, a.qblock, stochastic=(out == "int8_sr"), generator=generator)


def check_gemm(a, b, out, out_dtype=torch.float32, accumulate=None, residual=None):
    if not isinstance(a, QTensor) or not isinstance(b, QTensor):
        raise TypeError("gemm operands must be QTensors (quantize them first)")
    if out not in GEMM_OUTS:
        raise ValueError(f"out must be one of {GEMM_OUTS}, got {out!r}")
    if a.qblock != b.qblock:
        raise ValueError(f"operands have different block sizes: {a.qblock} and {b.qblock}")
    if a.cols != b.cols:
        raise ValueError(f"inner dimensions differ: A is {a.rows}x{a.cols}, "
                         f"B is {b.rows}x{b.cols} (C = A @ B^T needs equal K)")
    if a.device != b.device:
        raise ValueError(f"operands on different devices: {a.device} and {b.device}")
    if out == "float" and not out_dtype.is_floating_point:
        raise ValueError(f"float output needs a floating-point out_dtype, got {out_dtype}")
    if accumulate is not None and residual is not None:
        raise ValueError("give accumulate (C added in place) or residual (C added into a new "
                         "tensor), not both")
    for name, t in (("accumulate", accumulate), ("residual", residual)):
        if t is None:
            continue
        if out != "float" or t.dtype != torch.float32:
            raise ValueError(f"{name} needs out='float' and an fp32 tensor, got "
                             f"out={out!r}, {t.dtype}")
        if t.numel() != a.rows * b.rows or t.device != a.device:
            raise ValueError(f"{name} must hold {a.rows}x{b.rows} elements on {a.device}, "
                             f"got {tuple(t.shape)} on {t.device}")


# ---------------------------------------------------------------------------------------------
# launcher

TILE = 128                       # BM = BN of the kernel


def _smem_bytes(qblock):
    """Dynamic shared memory of the kernel: STAGES x (BM + BN) x BK bytes (as in GEMM_COMMON_SRC)."""
    bk = max(64, qblock)
    stages = 4 if bk == 64 else 3
    return stages * 2 * TILE * bk


@lru_cache(maxsize=None)
def _kernel(name, qblock, device_index, plane=False):
    defines = (f"QB={qblock}",) + (("PLANE=1",) if plane else ())
    kernel = get_kernel(GEMM_SRC, name, defines, torch.device("cuda", device_index))
    kernel.max_dynamic_shared_size_bytes = _smem_bytes(qblock)    # > 48 KB needs an opt-in
    return kernel


def _check_operand(t, name):
    QB = t.qblock
    if not t.q.is_cuda:
        raise ValueError(f"gemm_cuda: {name}.q must be a CUDA tensor, got {t.q.device}")
    if t.q.dtype != torch.int8 or t.s.dtype != torch.float32:
        raise TypeError(f"gemm_cuda: {name} must be int8 values with fp32 scales, "
                        f"got {t.q.dtype} and {t.s.dtype}")
    if t.q.dim() != 2 or t.q.shape[0] % QB or t.q.shape[1] % QB:
        raise ValueError(f"gemm_cuda: {name}.q must be 2-D with sides padded to multiples of "
                         f"{QB}, got {tuple(t.q.shape)}")
    if tuple(t.s.shape) != (t.q.shape[0] // QB, t.q.shape[1] // QB):
        raise ValueError(f"gemm_cuda: {name}.s must be {t.q.shape[0] // QB}x{t.q.shape[1] // QB}"
                         f" (one scale per block), got {tuple(t.s.shape)}")
    if not (t.q.is_contiguous() and t.s.is_contiguous()):
        raise ValueError(f"gemm_cuda: {name}.q and {name}.s must be contiguous")
    if t.q.data_ptr() % 16:
        raise ValueError(f"gemm_cuda: {name}.q must be 16-byte aligned (cp.async, TMA)")
    if t.q.numel() >= 2**31:
        raise ValueError(f"gemm_cuda: {name}.q has {t.q.numel()} elements; the kernel's 32-bit "
                         f"offsets need fewer than 2^31")


KERNELS = ("auto", "mma", "wgmma", "wgmma_exact", "wgmma_pp")


def _auto_kernel(device_index):
    """'wgmma' (int8_gemm_sm90.py) on Hopper (sm_90), 'mma' (this file) elsewhere."""
    return "wgmma" if capability(device_index) == (9, 0) else "mma"


def gemm_cuda(a, b, out="float", out_dtype=torch.float32, shape=None, generator=None,
              accumulate=None, kernel="auto", residual=None):
    """The tensor-core kernel; same contract as gemm_ref (CUDA QTensors; one of them may carry a
    fallback plane, whose flagged K-blocks then run as extra K-blocks, promoted exactly; gemm()
    picks the kernel for that: plane_kernel).
    kernel: 'auto' | 'mma' (mma.sync, sm_80+) | 'wgmma' (sm_90a; the magic-number promotion
    where K splits into its K-groups, within about one unit of each K-block's scale product of
    the exact sums: int8_gemm_sm90.py) | 'wgmma_exact' (the same kernel, exact promotion) | 'wgmma_pp'
    (ping-pong, exact)."""
    check_gemm(a, b, out, out_dtype, accumulate, residual)
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    _check_operand(a, "a")
    _check_operand(b, "b")
    QB = a.qblock
    if a.q.shape[1] != b.q.shape[1]:
        raise ValueError(f"gemm_cuda: padded K differs: {a.q.shape[1]} and {b.q.shape[1]}")
    M, N = a.rows, b.rows
    (Mp, Kp), Np = a.q.shape, b.q.shape[0]
    shape = torch.Size(shape) if shape is not None else torch.Size((M, N))
    if shape.numel() != M * N:
        raise ValueError(f"gemm_cuda: shape {tuple(shape)} does not hold {M}x{N} elements")
    device = a.q.device
    if kernel == "auto":
        kernel = _auto_kernel(device.index)
    planes = a.has_plane + b.has_plane
    if planes == 2:
        raise ValueError("gemm_cuda: the kernels take one operand's fallback plane; use gemm(), "
                         "which sums plane pairs")
    if kernel != "mma":
        if capability(device.index) != (9, 0):
            raise ValueError(f"gemm_cuda: kernel={kernel!r} needs an sm_90 GPU (H100/H200), got "
                             f"{torch.cuda.get_device_name(device)}")
        if kernel == "wgmma_pp":
            import int8_gemm_sm90_pp as sm90
        else:
            import int8_gemm_sm90 as sm90
        exact = {"exact": True} if kernel == "wgmma_exact" else {}
    grid = (cdiv(Mp, TILE) * cdiv(Np, TILE),)    # one CTA per 128 x 128 tile
    block = (256,)                                             # 8 warps, 64 x 32 each
    smem = _smem_bytes(QB)
    ab = (a.q, a.s, b.q, b.s)
    if out == "float":
        add = accumulate if accumulate is not None else residual     # read by the epilogue
        if add is not None and not add.is_contiguous():
            raise ValueError(f"gemm_cuda: {'accumulate' if add is accumulate else 'residual'} "
                             "must be contiguous")
        if accumulate is not None:
            c = accumulate
        elif residual is not None:
            c = _empty(residual.shape, torch.float32, device)
        elif out_dtype not in (torch.float32, torch.bfloat16):     # the kernel writes fp32/bf16
            return gemm_cuda(a, b, out, torch.float32, shape, kernel=kernel).to(out_dtype)
        else:
            c = _empty(shape, out_dtype, device)
        if kernel != "mma":
            sm90.launch_float(a, b, c, M, N, add, **exact)
            return c
        launch(_kernel("gemm_float_kernel", QB, device.index, bool(planes)), grid, block,
               ab + (c, np.int32(M), np.int32(N), np.int32(Mp), np.int32(Np), np.int32(Kp),
                     np.int32(c.dtype == torch.bfloat16), np.uint64(0) if add is None else add)
               + _mma_plane_args(a, b), shared_mem=smem)
        return c
    q = _empty((Mp, Np), torch.int8, device)                   # padded like quantize()
    s = _empty((Mp // QB, Np // QB), torch.float32, device)
    stochastic = out == "int8_sr"
    seed = _seed(generator) if stochastic else 0
    if kernel != "mma":
        sm90.launch_int8(a, b, q, s, stochastic, seed, **exact)
        return QTensor(q, s, shape, QB)
    launch(_kernel("gemm_int8_kernel", QB, device.index, bool(planes)), grid, block,
           ab + (q, s, np.int32(Mp), np.int32(Np), np.int32(Kp), np.int32(stochastic),
                 np.uint32(seed), sr_salt(device)) + _mma_plane_args(a, b), shared_mem=smem)
    return QTensor(q, s, shape, QB)


def plane_operand(t):
    """The compact plane of t (slot, q2, s2), checked against t's block grid, as the kernel reads
    it: q2 contiguous and 16-byte aligned (its TMA map, its 16-byte cp.async; copied if not: it is
    small)."""
    QB, grid = t.qblock, (t.q.shape[0] // t.qblock, t.q.shape[1] // t.qblock)
    slot, q2, s2 = t.slot, t.q2, t.s2
    if slot.dtype != torch.int32 or tuple(slot.shape) != grid:
        raise ValueError(f"gemm_cuda: the plane's slot must be {grid} int32 (one per block), got "
                         f"{tuple(slot.shape)} {slot.dtype}")
    if q2.dtype != torch.int8 or q2.dim() != 3 or tuple(q2.shape[1:]) != (QB, QB):
        raise ValueError(f"gemm_cuda: the plane's q2 must be (n, {QB}, {QB}) int8, got "
                         f"{tuple(q2.shape)} {q2.dtype}")
    if s2.dtype != torch.float32 or tuple(s2.shape) != (q2.shape[0],):
        raise ValueError(f"gemm_cuda: the plane's s2 must be ({q2.shape[0]},) fp32, got "
                         f"{tuple(s2.shape)} {s2.dtype}")
    if not (slot.device == q2.device == s2.device == t.q.device):
        raise ValueError("gemm_cuda: the plane's slot, q2 and s2 must be on the operand's device")
    if not q2.is_contiguous() or q2.data_ptr() % 16:
        q2 = q2.clone(memory_format=torch.contiguous_format)
    return slot, q2, s2


def _mma_plane_args(a, b):
    """The mma.sync kernel's p_* arguments: the one operand's compact plane and its K-block lists
    per 128-row tile (the wgmma kernel's, fallback_cuda.plane_lists_cuda), or nulls."""
    t = a if a.has_plane else b if b.has_plane else None
    if t is None:
        return (np.uint64(0),) * 5 + (np.int32(0),) * 2
    slot, q2, s2 = plane_operand(t)
    listed, count, slots, scales, _ = plane_lists_cuda(slot, s2, t.qblock)
    return (listed, count, slots, scales, q2, np.int32(listed.shape[1]), np.int32(t is b))


def _empty(shape, dtype, device):
    """Output allocation (one place, so tests can poison it)."""
    return torch.empty(shape, dtype=dtype, device=device)


def cdiv(a, b):
    return (a + b - 1) // b


def _seed(generator):
    """A 32-bit seed for the rounding hash, drawn from torch's generator (so manual_seed works)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device).item())


# ---------------------------------------------------------------------------------------------
# public API

def gemm(a, b, out="float", out_dtype=torch.float32, shape=None, generator=None, accumulate=None,
         residual=None):
    """C = A @ B^T on int8 blocks; see gemm_ref for the arguments. CUDA operands run on the
    tensor-core kernel (wgmma on sm_90, mma.sync elsewhere), the rest on the reference."""
    if isinstance(a, QTensor) and isinstance(b, QTensor) and on_cuda(a.q, b.q):
        if a.has_plane or b.has_plane:       # (no flagged block: the plain GEMM, exactly)
            kernel = plane_kernel(a, b, _auto_kernel(a.q.device.index))
            if not (a.has_plane and b.has_plane):
                # fused: the plane's flagged K-blocks run as extra K-blocks of one kernel
                return gemm_cuda(a, b, out, out_dtype, shape, generator, accumulate, kernel,
                                 residual)
            return gemm_planes(a, b, out, out_dtype, shape, generator, accumulate,
                               partial(gemm_cuda, kernel=kernel), residual)
        return gemm_cuda(a, b, out, out_dtype, shape, generator, accumulate, residual=residual)
    return gemm_ref(a, b, out, out_dtype, shape, generator, accumulate, residual)


MAGIC_PLANE_MAX = 0.25      # the largest plane, as a fraction of its operand's blocks, whose
                            # fused GEMM keeps the magic-number promotion (plane_kernel)


def plane_kernel(a, b, kernel):
    """The kernel for operands with a fallback plane, given the plain GEMM's. The fused wgmma
    kernel promotes the plane's K-blocks exactly and the plain ones as `kernel` does; 'wgmma'
    (the magic-number promotion, 0.76-0.89x the exact one's time) rounds at about one unit of
    the largest scale product in each group of 8-16 K-blocks, an outlier block's where there is
    one: on GLU-like activations 7e-4 relative to the two-plane product against the exact
    promotion's 2e-7 (notes/fallback_ab.log). That adds ~5% to the error left against the float
    activation at the default rule's ~5% flagged, but triples it with every block flagged: so a
    plane of more than MAGIC_PLANE_MAX of the blocks (threshold 0 among them) gets the exact
    kernel. q2's size is known on the host (the flagged count, or its budget's capacity)."""
    t = a if a.has_plane else b
    if kernel == "wgmma" and t.q2.shape[0] > MAGIC_PLANE_MAX * t.slot.numel():
        return "wgmma_exact"
    return kernel


def gemm_planes(a, b, out, out_dtype, shape, generator, accumulate, plain_gemm, residual=None):
    """Operands with a fallback plane as a sum of plain GEMMs over plane pairs, each run by
    `plain_gemm` into one fp32 accumulator; the epilogue then acts on the sum.

    On CUDA this serves planes on both operands: each second plane is expanded to a dense int8
    tensor (zero outside flagged blocks) and costs a whole GEMM whatever the flagged fraction.
    The kernels fuse one operand's plane instead.
    """
    check_gemm(a, b, out, out_dtype, accumulate, residual)
    acc = accumulate if accumulate is not None else torch.zeros(
        a.rows * b.rows, dtype=torch.float32, device=a.q.device)
    for a_q, a_s in _planes(a):
        for b_q, b_s in _planes(b):
            plain_gemm(QTensor(a_q, a_s, a.shape, a.qblock), QTensor(b_q, b_s, b.shape, b.qblock),
                       "float", accumulate=acc)
    if accumulate is not None:
        return accumulate
    if residual is not None:                                # residual + C, as the kernels add it
        return residual + acc.view(residual.shape)
    shape = torch.Size(shape) if shape is not None else torch.Size((a.rows, b.rows))
    c = acc.view(shape)
    if out == "float":
        return c.to(out_dtype)
    return quantize(c, a.qblock, stochastic=(out == "int8_sr"), generator=generator)


__all__ = ["gemm", "gemm_ref", "gemm_cuda", "gemm_planes", "plane_kernel", "plane_operand",
           "block_gemm_ref", "check_gemm", "GEMM_OUTS"]
