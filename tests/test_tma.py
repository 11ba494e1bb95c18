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


def test_split_k_splits_only_outputs_of_few_tiles():
    """int8_gemm_sm90.split_k: a GPT-2 small weight gradient (768 x 768 out, K = 16384 tokens:
    36 tiles, 128 stages) splits, a large output does not; every split has whole consumer
    groups and at least SPLIT_MIN_STAGES stages, and the choice never costs more waves x stages
    than running unsplit."""
    from int8_gemm import cdiv
    from int8_gemm_sm90 import SPLIT_MAX, SPLIT_MIN_STAGES, UNIT_COST, split_k
    assert split_k(36, 128, 4, 132) > 1 and split_k(144, 128, 4, 132) > 1
    assert split_k(1024, 16, 4, 132) == 1 and split_k(6, 2, 1, 132) == 1
    for tiles in (1, 36, 108, 144, 300, 2048):
        for stages, group in ((4, 1), (17, 1), (64, 4), (128, 4), (512, 2)):
            s = split_k(tiles, stages, group, 132)
            assert 1 <= s <= SPLIT_MAX and s <= stages // group
            assert s == 1 or stages // s >= SPLIT_MIN_STAGES
            cost = cdiv(tiles * s, 132) * (cdiv(stages // group, s) * group + UNIT_COST)
            assert cost <= cdiv(tiles, 132) * (stages + UNIT_COST)
