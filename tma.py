"""
TMA tensor maps for the Hopper GEMM's producer (int8_gemm_sm90_ring.py).

A tensor map (CUtensorMap, 128 opaque bytes) tells the Tensor Memory Accelerator where a 2-D
array lies in global memory, its extent (reads past it return zeros), and the box that one
`cp.async.bulk.tensor` copies into shared memory, swizzled as the wgmma descriptors of
int8_gemm_sm90_ring.py expect: the ring's tiles are 128 x 128-byte boxes with the 128-byte
swizzle; the fallback plane's stages (int8_gemm_sm90_plane.py) take one K-block at a time, boxes
QB bytes wide with the QB-byte swizzle. The driver builds it (cuTensorMapEncodeTiled,
called through ctypes: neither CuPy nor torch wraps it), and the kernel takes it by value as a
`const __grid_constant__` parameter: CuPy passes a one-element numpy array by its bytes, and a
CUDA graph captures those bytes with the launch.

The epilogues store their output tile the same way (int8_gemm_sm90.py): from a C tile in shared
memory, in boxes of 128 rows x 128 bytes (128 int8, 64 bf16 or 32 fp32 columns), and an fp32 map
also lets TMA add the tile into the array (the weight gradient's accumulate) or load a residual.

A map depends only on (address, rows, row bytes, box, element size), so maps are cached on that
key; a freed and reused address with the same shape gets the same bytes, which is right.
"""
import ctypes
from functools import lru_cache

import numpy as np

BOX = 128                     # the box: 128 rows x 128 bytes of K (one ring stage of one operand)

# CUtensorMap enums (cuda.h)
_DATA = {1: 0, 2: 9, 4: 7}          # by element size: UINT8, BFLOAT16, FLOAT32
_INTERLEAVE_NONE = 0
_SWIZZLE = {32: 1, 64: 2, 128: 3}   # CU_TENSOR_MAP_SWIZZLE_32B / 64B / 128B, by the box's width
_L2_PROMOTION_256B = 3
_OOB_FILL_ZEROS = 0


@lru_cache(maxsize=None)
def _encode_tiled():
    """The driver's cuTensorMapEncodeTiled (CUDA 12.0+), with its C signature."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        raise RuntimeError("tma: the CUDA driver (libcuda.so.1) is not loadable") from e
    u32p, u64p = ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint64)
    fn = lib.cuTensorMapEncodeTiled
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, u64p, u64p,
                   u32p, u32p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return fn


@lru_cache(maxsize=4096)
def tile_map(address, rows, row_bytes, box_rows=BOX, box_bytes=BOX, elem=1):
    """The tensor map of a row-major (rows, row_bytes) array at device `address` of int8 (elem =
    1), bf16 (2) or fp32 (4) elements, box box_rows x box_bytes (32, 64 or 128 bytes wide,
    swizzled by its width), zeros past its edges: a (1,) numpy array of 128 bytes, to pass as a
    kernel argument. Coordinates in the kernel count elements."""
    if address % 16 or row_bytes % 16:
        raise ValueError(f"tma: address and row bytes must be multiples of 16, got {address:#x}, "
                         f"{row_bytes}")
    if box_bytes not in _SWIZZLE or not 0 < box_rows <= 256 or rows < 1 or elem not in _DATA:
        raise ValueError(f"tma: a box of {box_rows} x {box_bytes} bytes of {elem}-byte elements "
                         f"over {rows} rows is not supported (rows >= 1, box rows 1-256, box "
                         "bytes 32, 64 or 128, elements of 1, 2 or 4 bytes)")
    buf = np.zeros(128 + 64, np.uint8)                 # the driver wants the map 64-byte aligned
    at = (-buf.ctypes.data) % 64
    dims = (ctypes.c_uint64 * 2)(row_bytes // elem, rows)      # innermost first, in elements
    strides = (ctypes.c_uint64 * 1)(row_bytes)         # bytes from one row to the next
    box = (ctypes.c_uint32 * 2)(box_bytes // elem, box_rows)
    steps = (ctypes.c_uint32 * 2)(1, 1)
    err = _encode_tiled()(buf.ctypes.data + at, _DATA[elem], 2, address, dims, strides, box, steps,
                          _INTERLEAVE_NONE, _SWIZZLE[box_bytes], _L2_PROMOTION_256B, _OOB_FILL_ZEROS)
    if err:
        raise RuntimeError(f"tma: cuTensorMapEncodeTiled failed (CUresult {err}) for rows={rows}, "
                           f"row_bytes={row_bytes}")
    return buf[at:at + 128].copy().view(np.dtype((np.void, 128)))
