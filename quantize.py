"""
Per-block INT8 quantization: the block format every other module speaks.

A 2-D tensor x (rows, cols) is cut into square QB x QB blocks (QB = 32 by default; 64 and 128
also supported). Each block gets one fp32 scale and 127 int8 levels on each side of zero:

    s[i, j] = absmax(x[block i, j]) / 127          x_s  (rows/QB, cols/QB)  fp32
    q       = round(x * (127 / absmax))             x_q  (rows, cols)        int8, in [-127, 127]
    x      ~= q * s

Jetfire (Xi et al. 2024, arXiv 2403.12422, Sec. 4) uses these blocks for every activation,
weight and gradient. Three properties make the format work:

- Zeros never change a block's absmax, so a side that is not a multiple of QB is zero-padded
  to the next multiple and the padding is invisible to the caller (`QTensor.shape` keeps the
  logical shape; `q` and `s` are padded).
- An all-zero block has s = 0 and q = 0: the reciprocal is taken only where absmax > 0.
- The blocks are square, so the transpose of a quantized tensor is the byte-transposed q with
  the transposed scale grid: no requantization, no new rounding error. This is how one saved
  int8 activation serves both the forward GEMM (X) and the weight-gradient GEMM (X^T).

Rounding is round-to-nearest-even (torch.round) for forward activations and weights, and
unbiased stochastic rounding for gradients: q = sign(x) * floor(|x| * 127/absmax + u) with
u ~ U[0, 1), so E[q * s] = x exactly.

The exact fp32 arithmetic (a CUDA kernel that follows it is bit exact for RTN):
    inv = (1 / absmax) * 127      (torch evaluates `127 / amax` as reciprocal, then multiply:
                                   two fp32 roundings, not one correctly rounded division)
    q   = clamp(round(x * inv), -127, 127)
    s   = absmax / 127            (fp32 division, correctly rounded)

Higher-rank tensors are viewed as 2-D (prod(shape[:-1]), shape[-1]): rows are tokens (or
output features for a weight), columns are channels.

This file also holds the glue between torch and CuPy that every kernel file uses: lazy import,
compile-once kernel cache, launching on torch's current stream. Nothing here needs a GPU or CuPy
at import time.
"""
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np
import torch

QBLOCKS = (32, 64, 128)
QMAX = 127.0


@dataclass
class QTensor:
    """An int8 tensor quantized in QB x QB blocks (a plain container, not a tensor subclass).

    q:     (R, C) int8, R and C padded up to multiples of qblock (padding is zero)
    s:     (R/QB, C/QB) fp32 block scales; 0 for an all-zero block
    shape: the logical shape (any rank); its 2-D view is (prod(shape[:-1]), shape[-1])

    An optional second plane holds the fallback residual of outlier blocks (see fallback.py):
    slot:  (R/QB, C/QB) int32, -1 for a plain block, else an index into q2 / s2
    q2:    (n_flagged, QB, QB) int8, the residual x - q*s of each flagged block, quantized
    s2:    (n_flagged,) fp32 scale of each residual block
    flagged: (2,) int32 on the device when fallback_cuda.py's kernels built the plane: the
           flagged blocks and those of them in q2 (the log reads it without another pass)
    """
    q: torch.Tensor
    s: torch.Tensor
    shape: torch.Size
    qblock: int = 32
    slot: Optional[torch.Tensor] = None
    q2: Optional[torch.Tensor] = None
    s2: Optional[torch.Tensor] = None
    flagged: Optional[torch.Tensor] = None

    @property
    def rows(self):  # logical rows of the 2-D view
        return self.shape.numel() // self.shape[-1] if len(self.shape) else 1

    @property
    def cols(self):  # logical columns of the 2-D view
        return self.shape[-1]

    @property
    def device(self):
        return self.q.device

    @property
    def has_fallback(self):
        return self.slot is not None

    @property
    def has_plane(self):
        """A second plane with room for at least one flagged block (has_fallback may have none;
        a PlaneBudget's plane may have spare slots: slot says which blocks use it)."""
        return self.slot is not None and self.q2.shape[0] > 0

    def t(self):
        """The transpose of the 2-D view, without requantizing (blocks are square)."""
        return transpose(self)

    def dequantize(self):
        return dequantize(self)

    def tensors(self):
        """The tensors to hand to ctx.save_for_backward (None where a field is absent)."""
        return (self.q, self.s, self.slot, self.q2, self.s2)

    @staticmethod
    def from_tensors(tensors, shape, qblock):
        """Inverse of tensors(): rebuild a QTensor from ctx.saved_tensors."""
        q, s, slot, q2, s2 = tensors
        return QTensor(q, s, torch.Size(shape), qblock, slot, q2, s2)

    def nbytes(self):
        """Bytes this tensor holds on the device (what saving it for backward costs)."""
        n = self.q.numel() + 4 * self.s.numel()
        if self.has_fallback:
            n += 4 * self.slot.numel() + self.q2.numel() + 4 * self.s2.numel()
        return n


def save_q(ctx, *items):
    """Save QTensors and plain tensors (or None) for backward through ctx.save_for_backward, so
    saved-tensor hooks see every byte; load_q(ctx) returns them in the same order."""
    ctx.q_meta = [(t.shape, t.qblock) if isinstance(t, QTensor) else None for t in items]
    ctx.save_for_backward(*[x for t in items
                            for x in (t.tensors() if isinstance(t, QTensor) else (t,))])


def load_q(ctx):
    saved, items, i = ctx.saved_tensors, [], 0
    for meta in ctx.q_meta:
        if meta is None:                                       # a plain tensor: one slot
            items.append(saved[i])
            i += 1
        else:                                                  # a QTensor: five slots
            items.append(QTensor.from_tensors(saved[i:i + 5], *meta))
            i += 5
    return items


# ---------------------------------------------------------------------------------------------
# input checks shared by every op

def check_qblock(qblock):
    if qblock not in QBLOCKS:
        raise ValueError(f"qblock must be one of {QBLOCKS}, got {qblock}")


def check_float(x, name="x"):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1 or x.numel() == 0:
        raise ValueError(f"{name} must be non-empty with at least one dimension, got shape "
                         f"{tuple(x.shape)}")


def check_finite(x, name="x"):
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf; int8 blocks cannot represent them "
                         f"(a diverging run? lower the learning rate)")


def pad_to(n, qblock):
    return (n + qblock - 1) // qblock * qblock


def as_2d(x):
    """View a tensor of any rank as (rows, cols), rows = prod of the leading dimensions."""
    return x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x


def pad_2d(x, qblock):
    """Zero-pad a 2-D tensor so both sides are multiples of qblock (a no-op when they are)."""
    R, C = x.shape
    Rp, Cp = pad_to(R, qblock), pad_to(C, qblock)
    if (Rp, Cp) == (R, C):
        return x
    return torch.nn.functional.pad(x, (0, Cp - C, 0, Rp - R))


def blocks(x, qblock):
    """(R, C) -> (R/QB, QB, C/QB, QB) view; block (i, j) is [i, :, j, :]."""
    R, C = x.shape
    return x.reshape(R // qblock, qblock, C // qblock, qblock)


def block_absmax(x, qblock):
    """absmax of every QB x QB block of a padded 2-D tensor: (R/QB, C/QB) fp32."""
    return blocks(x, qblock).abs().amax(dim=(1, 3)).float()


def expand_blocks(g, qblock):
    """(R/QB, C/QB) per-block values -> (R, C), each value repeated over its block."""
    return g.repeat_interleave(qblock, 0).repeat_interleave(qblock, 1)


# ---------------------------------------------------------------------------------------------
# reference implementation (plain torch; CPU or GPU)

def quantize_ref(x, qblock=32, stochastic=False, generator=None):
    """Reference quantizer. x: float tensor of any rank >= 1 -> QTensor."""
    check_qblock(qblock)
    check_float(x)
    check_finite(x)
    shape = x.shape
    xp = pad_2d(as_2d(x).float(), qblock)                      # (R, C) fp32, padded
    amax = block_absmax(xp, qblock)                            # (R/QB, C/QB)
    s = amax / QMAX
    inv = torch.where(amax > 0, QMAX / amax.clamp_min(1e-38), torch.zeros_like(amax))
    y = xp * expand_blocks(inv, qblock)                        # in [-127, 127]
    if stochastic:
        u = torch.rand(y.shape, device=y.device, generator=generator)
        y = torch.sign(y) * torch.floor(y.abs() + u)
    else:
        y = torch.round(y)                                     # half to even
    q = y.clamp(-QMAX, QMAX).to(torch.int8)
    return QTensor(q, s.contiguous(), shape, qblock)


def dequantize_ref(t):
    """Reference dequantizer: QTensor -> fp32 tensor of the logical shape."""
    x = t.q.float() * expand_blocks(t.s, t.qblock)
    if t.has_fallback:
        x = x + fallback_plane(t)
    return x[:t.rows, :t.cols].reshape(t.shape)


def second_plane(t):
    """The fallback plane in dense form: q2 (R, C) int8, zero outside flagged blocks, and its
    scale grid s2 (R/QB, C/QB) fp32, zero for plain blocks. Same layout as (t.q, t.s)."""
    QB = t.qblock
    Rb, Cb = t.slot.shape
    if not t.has_plane:                              # nothing flagged
        return torch.zeros_like(t.q), torch.zeros_like(t.s)
    # a gather of every block (slot -1 reads block 0) and a mask, not boolean indexing: no
    # host sync, so the GPU stays ahead of Python
    plain = (t.slot < 0).view(-1)
    idx = t.slot.view(-1).clamp(min=0).long()
    q2 = t.q2.index_select(0, idx).masked_fill_(plain[:, None, None], 0)   # (Rb*Cb, QB, QB)
    s2 = t.s2.index_select(0, idx).masked_fill_(plain, 0)
    return q2.view(Rb, Cb, QB, QB).permute(0, 2, 1, 3).reshape(Rb * QB, Cb * QB), s2.view(Rb, Cb)


def fallback_plane(t):
    """The dense second plane q2 * s2 (zero outside flagged blocks), padded (R, C) fp32."""
    q2, s2 = second_plane(t)
    return q2.float() * expand_blocks(s2, t.qblock)


def transpose_ref(t):
    """Transpose of the 2-D view: byte-transposed data, transposed scale grid."""
    shape = torch.Size((t.cols, t.rows))
    return with_transposed_plane(QTensor(t.q.t().contiguous(), t.s.t().contiguous(), shape,
                                         t.qblock), t)


def with_transposed_plane(tt, t):
    """Give tt, the plain transpose of t, t's fallback plane transposed (if t has one): the slot
    grid transposed, each q2 block byte-transposed in its place, the same s2. Returns tt."""
    if t.has_fallback:
        tt.slot = t.slot.t().contiguous()
        if on_cuda(t.q2):
            from quantize_cuda import transpose_plane_cuda
            tt.q2 = transpose_plane_cuda(t.q2)
        else:
            tt.q2 = t.q2.transpose(1, 2).contiguous()
        tt.s2 = t.s2
        tt.flagged = t.flagged
    return tt


# ---------------------------------------------------------------------------------------------
# public API: CUDA tensors go to the kernels of quantize_cuda.py, everything else to the reference

def on_cuda(*tensors):
    """True when every tensor given is on a CUDA device and our CuPy kernels can run there."""
    return all(t.is_cuda for t in tensors) and _cuda_ok()


def quantize(x, qblock=32, stochastic=False, generator=None, with_t=False, transposed=False):
    """Quantize a float tensor (any rank >= 1) into QB x QB int8 blocks.

    stochastic=False: round to nearest even (forward activations, weights).
    stochastic=True:  unbiased stochastic rounding (gradients).
    with_t=True:      return (t, t.t()): on CUDA both come from one read of x (for the tensors
                      the backward GEMMs consume both ways: an output gradient).
    transposed=True:  return t.t() alone, written straight in that layout (what the dgrad
                      GEMM needs of a weight).
    """
    check_qblock(qblock)
    check_float(x)
    if with_t and transposed:
        raise ValueError("with_t returns both layouts, transposed only the transposed one: "
                         "pick one")
    if on_cuda(x):
        from quantize_cuda import quantize_cuda
        x = x if x.dtype in (torch.float32, torch.bfloat16) else x.float()
        return quantize_cuda(x.contiguous(), qblock, stochastic, generator, with_t, transposed)
    t = quantize_ref(x, qblock, stochastic, generator)
    if transposed:
        return transpose_ref(t)
    return (t, transpose_ref(t)) if with_t else t


def quantize_cat(xs, qblock=32, stochastic=False, generator=None, with_t=False):
    """quantize(torch.cat(xs, -1), ...) without the concatenation on CUDA: the kernel reads the
    parts where they are (at most 3, of one shape and dtype, each a multiple of qblock wide).
    The attention backward's dq, dk, dv become dqkv's int8 blocks this way."""
    for x in xs:
        check_float(x)
    if len(xs) <= 3 and on_cuda(*xs) and len({(x.shape, x.dtype) for x in xs}) == 1 \
            and xs[0].shape[-1] % qblock == 0 and xs[0].dtype in (torch.float32, torch.bfloat16):
        check_qblock(qblock)
        from quantize_cuda import quantize_cuda
        xs = [x.contiguous() for x in xs]
        return quantize_cuda(xs[0], qblock, stochastic, generator, with_t, parts=tuple(xs[1:]))
    return quantize(torch.cat(xs, -1), qblock, stochastic, generator, with_t)


def dequantize(t):
    """QTensor -> fp32 tensor of the logical shape (the fallback plane included, if any)."""
    if on_cuda(t.q, t.s) and not t.has_fallback and t.q.is_contiguous() and t.s.is_contiguous():
        from quantize_cuda import dequantize_cuda
        return dequantize_cuda(t)
    return dequantize_ref(t)


def transpose(t):
    """Transpose of the 2-D view, without requantizing (the fallback plane goes along)."""
    if on_cuda(t.q, t.s) and t.q.is_contiguous() and t.s.is_contiguous():
        from quantize_cuda import transpose_cuda
        return transpose_cuda(t)
    return transpose_ref(t)


# ---------------------------------------------------------------------------------------------
# CuPy glue, used by every kernel file. CuPy is imported on first use, never at import time.

def cuda_available():
    """True when CUDA tensors can be handed to our CuPy kernels."""
    if not torch.cuda.is_available():
        return False
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


def capturing():
    """True inside a CUDA graph capture, where nothing may sync with the host (torch's own
    check fails on a CPU-only build)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


@lru_cache(maxsize=None)
def _cuda_ok():
    return cuda_available()


@lru_cache(maxsize=None)
def capability(device_index):
    """torch.cuda.get_device_capability, cached (the uncached call costs ~5 us a GEMM)."""
    return torch.cuda.get_device_capability(device_index)


@lru_cache(maxsize=None)
def _arch_option(device_index):
    major, minor = capability(device_index)
    suffix = "a" if (major, minor) == (9, 0) else ""  # sm_90a unlocks wgmma on Hopper
    return f"-arch=sm_{major}{minor}{suffix}"


@lru_cache(maxsize=None)
def _compile(source, name, options, device_index):
    import cupy
    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(code=source, options=options)
        return module.get_function(name)


def get_kernel(source, name, defines=(), device=None):
    """Compile `name` from `source` once per (defines, device); cached for the process.

    defines: ("QB=32", ...) become -D options, so one source serves every block size.
    """
    device_index = (device.index if device is not None and device.index is not None
                    else torch.cuda.current_device())
    options = ("-std=c++17", _arch_option(device_index)) + tuple(f"-D{d}" for d in defines)
    return _compile(source, name, options, device_index)


@lru_cache(maxsize=64)
def _cupy_stream(handle, device_index):
    """CuPy's view of a torch stream, made once per stream (making one costs ~10 us)."""
    import cupy
    return cupy.cuda.ExternalStream(handle, device_index)


def launch(kernel, grid, block, args, shared_mem=0):
    """Launch a CuPy RawKernel on torch's current stream (so ordering with torch ops holds).

    Tensors in args are passed as raw device pointers; give scalars as exact C types
    (np.int32, np.float32: a Python float would be a C double).
    """
    # torch's current stream as a raw handle (torch.cuda.current_stream() builds a Python
    # Stream object, ~5 us); the RawKernel's compiled cupy.cuda.Function takes the stream as an
    # argument (entering `with stream:` instead costs ~13 us a launch, measured on an H100)
    device_index = torch._C._cuda_getDevice()       # (torch.cuda.current_device(): ~2 us more)
    stream = _cupy_stream(torch._C._cuda_getCurrentRawStream(device_index), device_index)
    c_args = tuple(np.uint64(a.data_ptr()) if isinstance(a, torch.Tensor) else a for a in args)
    kernel.kernel(grid, block, c_args, shared_mem, stream)
