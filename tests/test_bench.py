"""bench.py's block rows: the table's columns, and the CUDA-graph timing replaying the same step."""
import pytest
import torch

from bench import bench_block, block_case, block_modes, graphed_step, main, mode_qblock


def test_block_rows_on_the_cpu_have_no_graphed_time():
    rows = bench_block(torch.device("cpu"), [64], "llama", 1, 32, modes=("bf16", "int8"))
    assert [r["op"] for r in rows] == ["llama block fwd+bwd, bf16", "llama block fwd+bwd, int8"]
    for r in rows:
        assert r["ms"] > 0 and r["held_MiB"] > 0
        assert r["graphed_ms"] is None and r["graphed_speedup"] is None
    assert rows[0]["speedup"] == 1.0


def test_block_modes_add_int8_rows_at_larger_block_edges():
    assert mode_qblock("int8") == ("int8", 32)
    assert mode_qblock("int8+fallback QB128") == ("int8+fallback", 128)
    modes = block_modes([32, 128])
    assert modes[:5] == ("bf16", "bf16 compile", "fp8 torchao compile", "int8", "int8+fallback")
    assert modes[5:] == ("int8 QB128", "int8+fallback QB128")


def test_an_int8_block_row_at_qb128_runs_the_qb128_block():
    block, _, _ = block_case("gpt2", 128, 1, 32, "int8 QB128", torch.device("cpu"))
    assert block.spec.qblock == 128 and not block.spec.fb.enabled
    block, _, _ = block_case("gpt2", 128, 1, 32, "int8+fallback QB128", torch.device("cpu"))
    assert block.spec.qblock == 128 and block.spec.fb.enabled
    rows = bench_block(torch.device("cpu"), [128], "gpt2", 1, 32, modes=("bf16", "int8 QB128"))
    assert rows[1]["op"] == "gpt2 block fwd+bwd, int8 QB128" and rows[1]["ms"] > 0


def test_bench_refuses_an_unsupported_block_edge(tmp_path):
    with pytest.raises(ValueError, match="qblock must be one of"):
        main(["--only=block", "--device=cpu", f"--out={tmp_path}", "--block_qblocks=32,48"])


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["bf16", "int8", "int8+fallback"])
def test_a_graph_replay_computes_the_eager_step(mode):
    """The gradients one replay adds are the ones one eager step adds (bf16: up to cuBLAS picking
    other kernels under capture; int8: up to stochastic rounding, whose salt each replay
    redraws). A replay that lost part of the step would be off by O(1)."""
    device = torch.device("cuda")
    block, step, _ = block_case("llama", 256, 2, 128, mode, device)
    params = [p for p in block.parameters() if p.requires_grad]
    step()
    for p in params:
        p.grad.zero_()
    step()
    eager = [p.grad.clone() for p in params]
    replay = graphed_step(step, block, device)
    for p in params:
        p.grad.zero_()
    replay()
    torch.cuda.synchronize()
    for p, g in zip(params, eager):
        err = ((p.grad - g).norm() / g.norm()).item()
        assert err <= (1e-2 if mode == "bf16" else 0.1), f"{mode}: {err:.2e}"


def test_outlier_channels_make_topk_flag_whole_kblock_columns():
    from bench import outlier_channels
    from fallback import quantize_fallback
    x = torch.randn(256, 512, generator=torch.Generator().manual_seed(0))
    xc = outlier_channels(x, 32, 0.125)                # 2 of the 16 K-block columns
    assert torch.equal((xc != x).any(0).view(16, 32).all(1).nonzero().flatten(),
                       torch.tensor([0, 15]))
    t, flagged = quantize_fallback(xc, 32, "topk", 0.125)
    grid = (t.slot >= 0)
    assert flagged == 0.125 and grid[:, [0, 15]].all() and grid.sum() == 2 * grid.shape[0]
