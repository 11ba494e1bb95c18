"""Smoke test of the fallback rule study (study_fallback.py): a tiny random model, a tiny sweep."""
import json

import torch

import study_fallback as sf
from model import GPT, GPTConfig

TINY_SWEEP = {"crest": [4.0, 12.0], "median": [2.0, 8.0], "topk": [0.05, 0.3]}


def test_capture_names_every_gemm_input():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=256, n_layer=2, n_head=2, n_embd=64,
                          mlp="swiglu", norm="rmsnorm")).eval()
    grabbed = sf.capture(model, [torch.randint(0, 256, (2, 32))])
    assert [n for n, _, _ in grabbed] == [f"h.{i}.{w}" for i in range(2) for w in sf.GEMM_INPUTS]
    shapes = {n.split(".", 2)[2]: (tuple(x.shape), tuple(w.shape)) for n, x, w in grabbed}
    assert shapes["mlp.c_proj"] == ((64, 256), (64, 256))   # hidden: 8*64/3 -> 256
    assert all(x.shape[1] == w.shape[1] for _, x, w in grabbed)


def test_sweep_report_and_the_rules_on_glu_like_outliers(tmp_path):
    torch.manual_seed(1)
    x, w = sf.glu_like(256, 128, seed=1), torch.randn(64, 128)    # 8 x 4 = 32 blocks
    res = sf.sweep_tensor(x, w, sweep=TINY_SWEEP)
    assert 2 * res["floor"] < res["plain"]           # the outliers cost plain int8 precision
    by = {(p["rule"], p["threshold"]): p for p in res["points"]}
    assert by[("topk", 0.3)]["frac"] == round(0.3 * 32) / 32
    for p in res["points"]:                         # fallback never makes the GEMM worse
        assert res["floor"] * 0.99 <= p["err"] <= res["plain"] * 1.0001, p
    assert by[("median", 2.0)]["err"] < res["floor"] * 1.02   # outlier blocks caught: at floor
    agg = sf.aggregate([res, res])
    assert agg["n"] == 2 and agg["plain"] == res["plain"]
    assert sf.at_fraction(agg, "topk", 0.0) == res["plain"]
    assert sf.at_fraction(agg, "topk", 0.99) is None
    md = sf.report({"glu": {}}, [sf.stats_row("glu", [sf.activation_stats(x)])],
                   {"glu": agg}, out_dir=str(tmp_path))
    assert "## Error at a flagged budget" in md and "| glu | 5% |" in md
    saved = json.loads((tmp_path / "fallback_rule_study.json").read_text())
    assert set(saved["groups"]["glu"]["curves"]) == {"crest", "median", "topk"}
