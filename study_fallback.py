"""
Which fallback rule? A measurement on real activations (issue 6, DESIGN §2 "Fallback").

For a trained Llama-style model (RMSNorm + SwiGLU) and a GPT-2-style model (LayerNorm + GELU),
forward hooks on the float model capture the activations that feed the block GEMMs (the inputs
of attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj, the last being the MLP down projection)
on a few validation batches. For each activation X (M, K) and its layer weight W (N, K):

    stats      kurtosis, block absmax percentiles (/ median block), crest = absmax / rms per block
    reference  C = X @ W^T in fp64 of the float operands
    floor      X (float) @ deq(W_q)^T: the weight's own int8 error, which no rule can remove
    ceiling    plain per-block int8, gemm(quantize(X), W_q)
    sweep      mixed_gemm(quantize_fallback(X, rule, t), W_q) for every rule in fallback.RULES
               over a grid of thresholds (topk: fractions): flagged fraction and
               rel err = ||C_q - C|| / ||C||  (also the mean per-token relative error)

and the same on synthetic GLU-like activations (Gaussian with sparse 100-1000x outliers, some
concentrated in a few channels), since a tiny CPU model may not grow LLM-size outliers. The
error at 1%, 5%, 10% flagged is read off each rule's (mean fraction, mean error) curve by
linear interpolation between sweep points.

    python study_fallback.py                    # trains out/{llama,gpt2}-study if missing
    python study_fallback.py --llama=A/ckpt.pt --gpt2=B/ckpt.pt --batches=4

Writes results/fallback_rule_study.json and .md (tables), and a PNG if matplotlib is present.
An analysis tool, not part of the training path; tests/test_study_fallback.py keeps it alive.
"""
import argparse
import datetime
import json
import os
import platform

import torch

from fallback import (RULES, add_second_plane, gathered_blocks, mixed_gemm, outlier_scores,
                      quantize_fallback)
from int8_linear import gemm
from model import GPT, GPTConfig
from quantize import as_2d, block_absmax, dequantize, pad_2d, quantize

GEMM_INPUTS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
SWEEP = {"crest": [4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 24.0, 28.0],
         "median": [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 5.0, 8.0, 16.0, 32.0, 64.0],
         "topk": [0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3]}
TARGETS = (0.01, 0.05, 0.10)
IN_MODEL = (("crest", 12.0), ("crest", 16.0), ("median", 2.5), ("median", 3.0), ("median", 4.0))
STYLES = {"llama": dict(mlp="swiglu", norm="rmsnorm"), "gpt2": dict(mlp="gelu", norm="layernorm")}


# ---------------------------------------------------------------------------------------------
# models and activations

def load_or_train(path, style, iters):
    """The float model in a train.py checkpoint; trains one (fp32, CPU defaults) if missing."""
    if not os.path.isfile(path):
        import train
        s = STYLES[style]
        train.main([f"--mlp={s['mlp']}", f"--norm={s['norm']}", f"--max_iters={iters}",
                    f"--out_dir={os.path.dirname(path)}", "--dtype=float32", "--device=cpu",
                    "--sample=False", "--progress=False"])
    ckpt = torch.load(path, map_location="cpu")
    args = dict(ckpt["model_args"], int8=False, fallback=False)
    model = GPT(GPTConfig(**args))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def val_batches(block_size, n, batch_size=16, seed=0):
    """n batches of (batch_size, block_size) token ids from the stdlib corpus's val split."""
    from data import load_data
    _, val, _, _, _ = load_data("stdlib")
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ix = torch.randint(len(val) - block_size, (batch_size,), generator=g).tolist()
        out.append(torch.stack([torch.from_numpy(val[i:i + block_size].astype("int64"))
                                for i in ix]))
    return out


@torch.no_grad()
def capture(model, batches):
    """[(name, X (B*T, K) fp32, W (N, K) fp32)] for every GEMM input of every block, per batch."""
    grabbed, hooks = [], []
    for i, block in enumerate(model.transformer.h):
        for what in GEMM_INPUTS:
            lin = block.get_submodule(what)
            hooks.append(lin.register_forward_hook(
                lambda m, inp, out, name=f"h.{i}.{what}": grabbed.append(
                    (name, as_2d(inp[0]).float().clone(), m.weight.detach().float()))))
    try:
        for idx in batches:
            model(idx)
    finally:
        for h in hooks:
            h.remove()
    return grabbed


def glu_like(rows, cols, seed=0, channels=2, channel_rate=0.01, sparse_rate=2e-5,
             scale=(100, 1000)):
    """Gaussian activations with GLU-like outliers scale[0]-scale[1] x the typical magnitude: a few
    hot channels that fire on `channel_rate` of the tokens, plus random sparse ones. With the
    defaults about 5% of 32 x 32 blocks hold an outlier."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g)
    big = (scale[0] + (scale[1] - scale[0]) * torch.rand(rows, cols, generator=g)) * x.sign()
    hot = torch.zeros(rows, cols, dtype=torch.bool)
    hot[:, torch.randperm(cols, generator=g)[:channels]] = True
    hot &= torch.rand(rows, cols, generator=g) < channel_rate
    hot |= torch.rand(rows, cols, generator=g) < sparse_rate
    return torch.where(hot, big, x)


SYNTHETIC = {"synthetic GLU-like": {},   # sparse 100-1000x, 2 channels hot on 1% of tokens
             "synthetic channels 20-50x": dict(channels=2, channel_rate=1.0, sparse_rate=0.0,
                                                  scale=(20, 50))}   # LLM.int8-style features


@torch.no_grad()
def in_model_flags(model, idx, rule, threshold):
    """Flagged fraction per activation in the int8 + fallback model with the same weights: a
    check that what the study predicts is what training would log (mean, max, worst name)."""
    args = dict(vars(model.config), int8=True, fallback=True, fallback_rule=rule,
                fallback_threshold=threshold)
    m = GPT(GPTConfig(**args))
    m.load_state_dict(model.state_dict())
    m.eval()(idx)
    st = m.fallback_stats()
    worst = max(st, key=st.get)
    return dict(rule=rule, threshold=threshold, mean=sum(st.values()) / len(st), max=st[worst],
                worst=worst)


# ---------------------------------------------------------------------------------------------
# measurements

def activation_stats(x, qblock=32):
    """Outlier statistics of one activation (what a rule sees)."""
    xp = pad_2d(x, qblock)
    amax = block_absmax(xp, qblock).flatten()
    crest = outlier_scores(xp, qblock, "crest").flatten()[amax > 0]
    amax = amax[amax > 0]
    xd = x.double()
    z = (xd - xd.mean()) / xd.std()
    q = lambda t, p: t.quantile(p).item()
    med = amax.median().item()
    return dict(kurtosis=z.pow(4).mean().item(),
                absmax_over_rms=(xd.abs().max() / xd.square().mean().sqrt()).item(),
                block_p50=med, block_p99_over_p50=q(amax, 0.99) / med,
                block_max_over_p50=amax.max().item() / med,
                crest_p50=q(crest, 0.5), crest_p99=q(crest, 0.99), crest_max=crest.max().item())


def rel_errors(c, ref):
    """(||c - ref|| / ||ref||, mean over tokens of the same per row), in fp64."""
    d = c.double() - ref
    per_row = d.norm(dim=1) / ref.norm(dim=1).clamp_min(1e-30)
    return (d.norm() / ref.norm()).item(), per_row.mean().item()


def sweep_tensor(x, w, qblock=32, sweep=SWEEP):
    """Floor, ceiling and every (rule, threshold) point for one activation x and weight w;
    `ranked`: the same budget in this tensor, blocks taken in the order of the crest score or
    of the block absmax (the order of 'median' and 'topk')."""
    w_q = quantize(w, qblock)
    ref = x.double() @ w.double().t()
    floor = rel_errors(x.double() @ dequantize(w_q).double().t(), ref)
    plain = rel_errors(gemm(quantize(x, qblock), w_q), ref)
    seen = {}                                            # flag pattern -> errors: many repeat

    def measure(x_q):
        key = (x_q.slot >= 0).numpy().tobytes()
        if key not in seen:
            seen[key] = rel_errors(mixed_gemm(x_q, w_q), ref)
        return seen[key]

    points, ranked = [], []
    for rule in RULES:
        for t in sweep[rule]:
            x_q, frac = quantize_fallback(x, qblock, rule, t)
            err, row = measure(x_q)
            points.append(dict(rule=rule, threshold=t, frac=frac, err=err, row_err=row))
    xp = pad_2d(x, qblock)
    for order in ("crest", "absmax"):
        scores = outlier_scores(xp, qblock, "crest" if order == "crest" else "median").flatten()
        for target in TARGETS:
            flags = torch.zeros(scores.numel(), dtype=torch.bool)
            flags[scores.topk(max(1, round(target * scores.numel()))).indices] = True
            x_q = add_second_plane(quantize(x, qblock), flags.view(-1, xp.shape[1] // qblock),
                                   gathered_blocks(xp, qblock))
            ranked.append(dict(order=order, target=target, err=measure(x_q)[0]))
    return dict(floor=floor[0], plain=plain[0], plain_row=plain[1], points=points, ranked=ranked)


def aggregate(results):
    """Means over tensors: floor, plain, and per (rule, threshold) the mean frac and errors."""
    n = len(results)
    out = dict(n=n, floor=sum(r["floor"] for r in results) / n,
               plain=sum(r["plain"] for r in results) / n, curves={}, ranked={})
    for j, p in enumerate(results[0]["ranked"]):
        key = f"{p['order']}@{p['target']}"
        out["ranked"][key] = sum(r["ranked"][j]["err"] for r in results) / n
    for j, p in enumerate(results[0]["points"]):
        pts = [r["points"][j] for r in results]
        out["curves"].setdefault(p["rule"], []).append(dict(
            threshold=p["threshold"], frac=sum(q["frac"] for q in pts) / n,
            err=sum(q["err"] for q in pts) / n, row_err=sum(q["row_err"] for q in pts) / n,
            max_frac=max(q["frac"] for q in pts)))
    return out


def at_fraction(agg, rule, target):
    """Mean error of `rule` at mean flagged fraction `target`, interpolated along its curve
    (with the plain-int8 point at fraction 0); None if the sweep never reaches it."""
    pts = sorted([(0.0, agg["plain"])] + [(p["frac"], p["err"]) for p in agg["curves"][rule]])
    for (f0, e0), (f1, e1) in zip(pts, pts[1:]):
        if f0 <= target <= f1:
            return e0 if f1 == f0 else e0 + (e1 - e0) * (target - f0) / (f1 - f0)
    return None


# ---------------------------------------------------------------------------------------------
# report

def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def stats_row(label, st):
    """One table row from several tensors' activation_stats: the worst tensor, median crest."""
    worst = lambda k, fmt: format(max(s[k] for s in st), fmt)
    return [label, len(st), worst("kurtosis", ".1f"), worst("absmax_over_rms", ".1f"),
            worst("block_p99_over_p50", ".1f"), worst("block_max_over_p50", ".1f"),
            f"{sum(s['crest_p50'] for s in st) / len(st):.2f}", worst("crest_p99", ".2f"),
            worst("crest_max", ".2f")]


def budget_rows(name, agg):
    rows = []
    for target in TARGETS:
        errs = {r: at_fraction(agg, r, target) for r in RULES}
        best = min((e, r) for r, e in errs.items() if e is not None)[1] if any(
            e is not None for e in errs.values()) else "-"
        closed = lambda e: (agg["plain"] - e) / max(agg["plain"] - agg["floor"], 1e-30)
        gap = lambda e: f"{e:.3e} ({closed(e):.0%})" if e is not None else "n/a"
        rows.append([name, f"{target:.0%}", f"{agg['floor']:.3e}", f"{agg['plain']:.3e}",
                     *[gap(e) for e in errs.values()], best,
                     *[gap(agg["ranked"][f"{o}@{target}"]) for o in ("crest", "absmax")]])
    return rows


def report(data, stats_rows, groups, checks=(), out_dir="results"):
    """Markdown and JSON under out_dir; returns the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    head = (f"# Fallback rule study\n\nMachine: CPU ({platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}), {datetime.date.today().isoformat()}. "
            f"Generated by `python study_fallback.py`; QB = 32; errors are means over tensors.\n")
    stats = md_table(["activation", "tensors", "kurtosis", "absmax/rms", "block p99/p50",
                      "block max/p50", "crest p50", "crest p99", "crest max"], stats_rows)
    budget = md_table(["data", "flagged", "floor (X float)", "plain int8",
                       *[f"{r} (gap closed)" for r in RULES], "best",
                       "per tensor, crest order", "per tensor, absmax order"],
                      [row for name, agg in groups.items() for row in budget_rows(name, agg)])
    sweeps = []
    for name, agg in groups.items():
        rows = [[r, p["threshold"], f"{p['frac']:.2%}", f"{p['max_frac']:.2%}", f"{p['err']:.3e}",
                 f"{p['row_err']:.3e}"] for r, c in agg["curves"].items() for p in c]
        sweeps.append(f"### {name}\n\nfloor {agg['floor']:.3e}, plain int8 {agg['plain']:.3e}, "
                      f"{agg['n']} tensors\n\n" + md_table(
                          ["rule", "threshold", "mean flagged", "max flagged", "rel err",
                           "per-token rel err"], rows))
    check = md_table(["model", "rule", "threshold", "mean flagged", "max flagged", "worst layer"],
                     [[c[0], c[1], c[2], f"{c[3]:.2%}", f"{c[4]:.2%}", c[5]] for c in checks])
    md = "\n\n".join([head, "## Activation statistics\n", stats,
                      "## Error at a flagged budget (interpolated)\n", budget,
                      "## In the int8 + fallback model (one validation batch)\n", check,
                      "## Sweeps\n", *sweeps]) + "\n"
    with open(os.path.join(out_dir, "fallback_rule_study.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out_dir, "fallback_rule_study.json"), "w") as f:
        json.dump(dict(data, groups=groups, in_model=checks), f, indent=1)
    plot(groups, os.path.join(out_dir, "fallback_rule_study.png"))
    return md


def plot(groups, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.8), squeeze=False)
    for ax, (name, agg) in zip(axes[0], groups.items()):
        for rule, c in agg["curves"].items():
            pts = sorted((p["frac"], p["err"]) for p in c)
            ax.plot([f for f, _ in pts], [e for _, e in pts], "o-", ms=3, label=rule)
        ax.axhline(agg["plain"], color="gray", ls="--", label="plain int8")
        ax.axhline(agg["floor"], color="k", ls=":", label="floor (X float)")
        ax.set(xscale="symlog", xlim=(0, 1), yscale="log", title=name, xlabel="flagged fraction",
               ylabel="GEMM rel err")
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama", default="out/llama-study/ckpt.pt", help="SwiGLU/RMSNorm checkpoint")
    p.add_argument("--gpt2", default="out/gpt2-study/ckpt.pt", help="GELU/LayerNorm checkpoint")
    p.add_argument("--iters", type=int, default=400, help="training steps if a ckpt is missing")
    p.add_argument("--batches", type=int, default=2, help="validation batches (16 x block_size)")
    p.add_argument("--out_dir", default="results")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    stats_rows, groups, data, checks = [], {}, {}, []
    for style, path in (("llama", a.llama), ("gpt2", a.gpt2)):
        model = load_or_train(path, style, a.iters)
        batches = val_batches(model.config.block_size, a.batches)
        grabbed = capture(model, batches)
        checks += [[style] + list(in_model_flags(model, batches[0], r, t).values())
                   for r, t in IN_MODEL]
        by_kind = {}
        for name, x, w in grabbed:
            by_kind.setdefault(name.split(".", 2)[2], []).append((name, x, w))
        results_all = []
        for kind, items in by_kind.items():
            st = [activation_stats(x) for _, x, _ in items]
            stats_rows.append(stats_row(f"{style} {kind} {tuple(items[0][1].shape)}", st))
            res = [sweep_tensor(x, w) for _, x, w in items]
            results_all += res
            data[f"{style} {kind}"] = dict(stats=st, floor=[r["floor"] for r in res],
                                           plain=[r["plain"] for r in res])
            if kind == "mlp.c_proj":
                groups[f"{style} mlp.c_proj"] = aggregate(res)
            print(f"{style} {kind}: {len(items)} tensors done", flush=True)
        groups[f"{style} all GEMM inputs"] = aggregate(results_all)
    w = torch.randn(128, 384) * 0.05
    for name, kw in SYNTHETIC.items():
        xs = [glu_like(2048, 384, seed=s, **kw) for s in range(3)]
        st = [activation_stats(x) for x in xs]
        stats_rows.append(stats_row(f"{name} (2048, 384)", st))
        groups[name] = aggregate([sweep_tensor(x, w) for x in xs])
        data[name] = dict(stats=st)
    print(report(data, stats_rows, groups, checks, a.out_dir))


if __name__ == "__main__":
    main()
