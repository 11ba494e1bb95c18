"""tma.py: the tensor maps of the Hopper GEMM's TMA loads. The maps' contents are the driver's;
the GPU tests of the wgmma kernels (test_int8_linear_cuda.py) check what they load."""
import numpy as np
import pytest
import torch

from tma import BOX, tile_map


@pytest.mark.parametrize("address,row_bytes", [(0x1008, 128), (0x1000, 100)])
def test_tile_map_rejects_misaligned(address, row_bytes):
    with pytest.raises(ValueError, match="multiples of 16"):
        tile_map(address, 256, row_bytes)


@pytest.mark.gpu
def test_tile_map_is_a_128_byte_argument():
    q = torch.zeros(300, 160, dtype=torch.int8, device="cuda")
    m = tile_map(q.data_ptr(), 300, 160)
    assert isinstance(m, np.ndarray) and m.size == 1 and m.itemsize == 128 and BOX == 128
    assert m.tobytes() != bytes(128)                      # the driver wrote it
    assert tile_map(q.data_ptr(), 300, 160) is m          # cached on (address, rows, row bytes)
    assert tile_map(q.data_ptr(), 299, 160).tobytes() != m.tobytes()


@pytest.mark.parametrize("box_rows,box_bytes,elem", [(128, 48, 1), (0, 32, 1), (257, 32, 1),
                                                    (128, 128, 8)])
def test_tile_map_rejects_unsupported_boxes(box_rows, box_bytes, elem):
    with pytest.raises(ValueError, match="not supported"):
        tile_map(0x1000, 256, 128, box_rows, box_bytes, elem)


@pytest.mark.gpu
def test_tile_map_keys_on_the_box():
    q = torch.zeros(256, 128, dtype=torch.int8, device="cuda")
    full, narrow = tile_map(q.data_ptr(), 256, 128), tile_map(q.data_ptr(), 256, 128, 128, 32)
    assert narrow is not full and narrow.tobytes() != full.tobytes()
    assert tile_map(q.data_ptr(), 256, 128, 32, 32).tobytes() != narrow.tobytes()


@pytest.mark.gpu
def test_tile_map_keys_on_the_element_size():
    """The epilogues' fp32 / bf16 maps (int8_gemm_sm90.float_args): the same bytes as another type."""
    c = torch.zeros(256, 64, device="cuda")
    maps = [tile_map(c.data_ptr(), 256, 256, 128, 128, elem) for elem in (1, 2, 4)]
    assert len({m.tobytes() for m in maps}) == 3
