"""bench.py's block rows: the table's columns, and the CUDA-graph timing replaying the same step."""
import pytest
import torch

from bench import bench_block, block_case, graphed_step


def test_block_rows_on_the_cpu_have_no_graphed_time():
    rows = bench_block(torch.device("cpu"), [64], "llama", 1, 32, modes=("bf16", "int8"))
    assert [r["op"] for r in rows] == ["llama block fwd+bwd, bf16", "llama block fwd+bwd, int8"]
    for r in rows:
        assert r["ms"] > 0 and r["held_MiB"] > 0
        assert r["graphed_ms"] is None and r["graphed_speedup"] is None
    assert rows[0]["speedup"] == 1.0


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
