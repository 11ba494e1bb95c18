"""CUDA-graph replay of a training micro-step (cuda_graph.py): fresh stochastic rounding on every
replay, the same training as the eager step, and re-capture when a fallback plane outgrows its
captured capacity. All GPU."""
import pytest
import torch

from cuda_graph import GraphedMicroStep
from fallback import PlaneBudget
from model import GPT, GPTConfig

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def zero_salt():
    """Other tests compare SR kernels bit for bit with their reference: leave the salt at 0."""
    yield
    from quantize_cuda import sr_salt
    sr_salt(torch.device("cuda")).zero_()


def sr_ops():
    """(name, fn) of every kernel that rounds stochastically, on fixed random inputs."""
    from int8_gelu_cuda import gelu_bwd_cuda, swiglu_bwd_cuda
    from int8_gemm import gemm_cuda
    from quantize_cuda import quantize_cuda
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(256, 512, device="cuda", generator=g)
    w = torch.randn(384, 512, device="cuda", generator=g)
    xq, wq = quantize_cuda(x), quantize_cuda(w)
    hq, dg, dg_half = quantize_cuda(x), quantize_cuda(x * 0.1), quantize_cuda(x[:, :256] * 0.1)
    return [("quantize", lambda: quantize_cuda(x, stochastic=True).q),
            ("gemm int8_sr", lambda: gemm_cuda(xq, wq, out="int8_sr").q),
            ("gelu_bwd", lambda: gelu_bwd_cuda(dg, hq).q),
            ("swiglu_bwd", lambda: swiglu_bwd_cuda(dg_half, hq).q)]


@pytest.mark.parametrize("refresh", [True, False])
def test_every_replay_rounds_anew(refresh):
    """The seeds are launch arguments, frozen at capture: without refresh_sr_salt in the graph
    every replay rounds alike (which is why the step refreshes it); with it, every replay
    draws new noise, from torch's CUDA generator (so manual_seed still reproduces a run)."""
    from quantize_cuda import refresh_sr_salt
    for name, fn in sr_ops():
        fn()                                                  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            if refresh:
                refresh_sr_salt(torch.device("cuda"))
            out = fn()
        replays = []
        for _ in range(2):
            graph.replay()
            replays.append(out.clone())
        same = torch.equal(replays[0], replays[1])
        assert same != refresh, f"{name}: replays {'differ' if not same else 'are equal'}"


def tiny_gpt(**kw):
    return GPTConfig(block_size=64, vocab_size=256, n_layer=2, n_head=2, n_embd=128,
                     mlp="swiglu", norm="rmsnorm", **kw)


def train(cfg, steps, graphed, batches):
    """`steps` AdamW steps of a fresh model from seed 0 on `batches`, eager or graphed: the
    losses, the final parameters and the GraphedMicroStep (None when eager); the step's peak
    memory (bytes), whether it captured and the memory allocated after it, per step, in
    step.peaks."""
    torch.manual_seed(0)
    model = GPT(cfg).cuda()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    step = GraphedMicroStep(model, autocast, 1.0, model.fb if cfg.fallback else None) if graphed else None
    losses, peaks = [], []
    for x, y in batches[:steps]:
        torch.cuda.reset_peak_memory_stats()
        captures = step.captures if step is not None else 0
        if step is not None:
            loss = step(x, y).clone()
        else:
            with autocast:
                _, loss = model(x, y)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=step is None)
        losses.append(loss.item())
        if step is not None:
            step.end_step()
        peaks.append((torch.cuda.max_memory_allocated(), step is not None and step.captures > captures,
                      torch.cuda.memory_allocated()))
        if step is not None:
            step.peaks = peaks
    return losses, [p.detach().clone() for p in model.parameters()], step


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 64, (12, 8, 65), generator=g) * 3 % 256   # a learnable pattern
    return [(d[:, :-1].cuda(), d[:, 1:].cuda()) for d in data]


@pytest.mark.parametrize("mode", ["bf16", "int8", "int8+fallback"])
def test_graphed_step_trains_like_the_eager_one(batches, mode):
    cfg = tiny_gpt(int8=mode != "bf16", fallback=mode == "int8+fallback", fallback_threshold=1.5)
    eager, p_eager, _ = train(cfg, 12, False, batches)
    graph, p_graph, step = train(cfg, 12, True, batches)
    assert step.captures >= 1 and step.graph is not None
    # bf16 replays the eager arithmetic; int8 differs by its stochastic rounding noise only
    tol = 1e-3 if mode == "bf16" else 2e-2
    for i, (a, b) in enumerate(zip(eager, graph)):
        assert abs(a - b) <= tol * a, f"{mode} step {i}: eager loss {a:.4f}, graphed {b:.4f}"
    assert graph[-1] < 0.9 * graph[0]
    drift = max((a - b).norm() / a.norm() for a, b in zip(p_eager, p_graph))
    assert drift < (1e-3 if mode == "bf16" else 5e-2), drift
    if mode == "int8+fallback":   # the replays' flag counts reached the budgets and the stats
        model_fb = step.fallback
        assert model_fb.fractions() and all(0 <= v <= 1 for v in model_fb.fractions().values())
        assert all(b.captured is not None for b in model_fb.budgets.values())


def test_a_plane_that_outgrows_its_capacity_recaptures(batches, monkeypatch):
    """With no headroom or slack every capacity is the last count, and the counts move: a replay
    that flags more blocks than its plane holds keeps the rest in plain int8 (counted as an
    overflow) and the next micro-step captures again."""
    monkeypatch.setattr(PlaneBudget, "HEADROOM", 1.0)
    monkeypatch.setattr(PlaneBudget, "SLACK", 0.0)
    monkeypatch.setattr(PlaneBudget, "DECAY", 0.0)
    cfg = tiny_gpt(int8=True, fallback=True, fallback_threshold=1.5)
    losses, _, step = train(cfg, 12, True, batches)
    overflows, dropped = step.fallback.overflows()
    assert overflows > 0 and dropped > 0 and step.captures > 1
    assert all(l == l and l < 10 for l in losses)
    # a re-capture frees the old graph's memory before it runs the step eagerly: its peak is
    # about a replay's (the graph's memory), not that plus another step's activations
    again = [peak for peak, captured, _ in step.peaks[1:] if captured]
    replays = [peak for peak, captured, _ in step.peaks if not captured]
    assert again and replays and max(again) < 1.5 * max(replays), (again, replays)
    # and nothing accumulates from one capture to the next (a new side stream per capture once
    # kept a 64 MiB cuBLAS workspace each)
    allocated = [a for _, _, a in step.peaks]
    assert max(allocated[1:]) - allocated[1] < 8 * 2**20, allocated
