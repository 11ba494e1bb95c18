"""Split-K of the wgmma float kernel (int8_gemm_sm90.split_k) timed against no split, in one
process (not part of the library).

    python3 notes/splitk_ab.py [--model]

GEMM part: weight-gradient shapes (C = dY^T X: M = out features, N = in features, K = tokens),
fp32 accumulated into an existing tensor (the model's .grad: the only epilogue that splits),
QB = 32 and 128, GPU time (bench.kernel_ms): split_k's choice ('auto'), splits = 1, and forced
2 / 4 / 8; cuBLAS bf16 (a fresh product) in the same run. Shapes: GPT-2 small's four per layer
(16 x 1024 tokens; the last two are also bench.py's small-output wgrads), and a large wgrad as a
control (it should not split).
--model: train.py's GPU default (GPT-2 small, B = 16, T = 1024, graphed) int8 at QB = 32 and 128
for 40 steps, with split_k's choice and with SPLIT_MAX = 1: median ms per step over steps 10-39.
"""
import json
import os
import statistics
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import int8_gemm_sm90 as S  # noqa: E402
from bench import kernel_ms  # noqa: E402
from int8_gemm import gemm_cuda  # noqa: E402
from quantize import quantize  # noqa: E402

SHAPES = [(2304, 16384, 768), (768, 16384, 768), (3072, 16384, 768),   # GPT-2 small's (M, K, N)
          (768, 16384, 3072), (8192, 16384, 2048)]                     # last: a large control


def gemm_part():
    launch = S.launch_float
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| M x K x N (wgrad) | QB | bf16 ms | auto splits | 1 | auto | 2 | 4 | 8 | "
          "auto / 1 | auto vs bf16 | max rel diff auto vs 1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for M, K, N in SHAPES:
        dy, x = torch.randn(M, K, device="cuda"), torch.randn(N, K, device="cuda")
        a16, b16 = dy.bfloat16(), x.bfloat16()
        t_bf16 = kernel_ms(lambda: a16 @ b16.t())
        for qb in (32, 128):
            ta, tb = quantize(dy, qb), quantize(x, qb)
            auto = S._splits(ta, tb, False, None)
            ms, res = {}, {}
            for sp in (1, None, 2, 4, 8):
                S.launch_float = (lambda *a, _s=sp, **kw: launch(*a, splits=_s, **kw))
                acc = torch.zeros(M, N, device="cuda")
                res[sp] = gemm_cuda(ta, tb, accumulate=acc.clone())
                ms[sp] = min(kernel_ms(lambda: gemm_cuda(ta, tb, accumulate=acc))
                             for _ in range(3))
            S.launch_float = launch
            diff = ((res[None] - res[1]).abs().max() / res[1].abs().max()).item()
            print(f"| {M}x{K}x{N} | {qb} | {t_bf16:.3f} | {auto} | {ms[1]:.3f} | "
                  f"{ms[None]:.3f} | {ms[2]:.3f} | {ms[4]:.3f} | {ms[8]:.3f} | "
                  f"{ms[None] / ms[1]:.2f} | {t_bf16 / ms[None]:.2f}x | {diff:.1e} |", flush=True)


def model_part():
    import train
    print("\n| model | QB | splits | median ms / step (10-39) | tok/s |")
    print("|---|---|---|---|---|")
    for qb in (32, 128):
        for cap in (S.SPLIT_MAX, 1):
            S.SPLIT_MAX, keep = cap, S.SPLIT_MAX
            with tempfile.TemporaryDirectory() as d:
                train.main(["--int8", f"--qblock={qb}", "--max_iters=40", "--eval_iters=1",
                            "--eval_interval=1000", f"--out_dir={d}", "--progress=False",
                            "--sample=False", "--log_interval=1"])
                log = [json.loads(line) for line in open(os.path.join(d, "log.jsonl"))]
            S.SPLIT_MAX = keep
            steps = [e for e in log if "dt_ms" in e and e["iter"] >= 10]
            med = statistics.median(e["dt_ms"] for e in steps)
            tok = statistics.median(e["tokens_per_s"] for e in steps)
            print(f"| GPT-2 small int8 | {qb} | {'split_k' if cap > 1 else 'none'} | {med:.2f} | "
                  f"{tok:,.0f} |", flush=True)


if __name__ == "__main__":
    gemm_part()
    if "--model" in sys.argv:
        model_part()
