"""plot_loss.py reads train.py's log.jsonl; the plot itself needs matplotlib (optional)."""
import json

import pytest

from plot_loss import main, read_evals


def write_log(path, vals):
    with open(path, "w") as f:
        for i, v in enumerate(vals):
            f.write(json.dumps(dict(iter=i * 10, loss=v + 0.1, lr=1e-3)) + "\n")
            f.write(json.dumps(dict(iter=i * 10 + 10, train_loss=v, val_loss=v)) + "\n")


def test_read_evals_keeps_only_eval_lines(tmp_path):
    write_log(tmp_path / "llama_int8.jsonl", [3.0, 2.5, 2.2])
    assert read_evals(tmp_path / "llama_int8.jsonl") == ([10, 20, 30], [3.0, 2.5, 2.2])


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    for mode in ("bf16", "int8"):
        write_log(tmp_path / f"gpt2_{mode}.jsonl", [3.0, 2.4])
    out = tmp_path / "curves.png"
    main([str(p) for p in tmp_path.glob("*.jsonl")] + [f"--out={out}"])
    assert out.read_bytes()[:4] == b"\x89PNG"
