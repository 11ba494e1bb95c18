"""
Plot validation-loss curves from train.py's log.jsonl files (one line per run):

    python plot_loss.py results/accuracy/*.jsonl --out=results/accuracy/loss_curves.png

Runs whose file names share a prefix before the first '_' go in one panel (e.g. llama_*, gpt2_*).
Needs matplotlib, which the project itself does not (pip install matplotlib).
"""
import argparse
import json
import os
from collections import defaultdict


def read_evals(path):
    rows = [json.loads(line) for line in open(path)]
    evals = [r for r in rows if "val_loss" in r]
    return [r["iter"] for r in evals], [r["val_loss"] for r in evals]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="+", help="log.jsonl files (copies named <group>_<mode>.jsonl)")
    p.add_argument("--out", default="loss_curves.png")
    args = p.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plot_loss.py needs matplotlib: pip install matplotlib")
    groups = defaultdict(list)
    for path in sorted(args.logs):
        name = os.path.basename(path).removesuffix(".jsonl")
        group, _, mode = name.partition("_")
        groups[group].append((mode or name, path))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, (group, runs) in zip(axes[0], groups.items()):
        for mode, path in runs:
            it, val = read_evals(path)
            ax.plot(it, val, marker="o", markersize=3, label=f"{mode} ({val[-1]:.4f})")
        ax.set_title(group)
        ax.set_xlabel("iteration")
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
