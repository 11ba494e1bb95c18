"""A width-2048 block step (bench.py's, graphed as bench.graphed_step times it) with quantize_kernel's
MIN_CTAS rule (quantize_cuda.QUANTIZE_MIN_CTAS) off and on, side by side in one process (not part
of the library):

    python3 notes/block_quantize_ab.py

Per style (GPT-2, Llama) and variant: the graphed step's median ms (bench.timeit, 5 alternating
rounds of 20) and the quantize kernels' GPU ms per step (profile_block.kernel_times, eager).
"""
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quantize_cuda as Q  # noqa: E402
from bench import block_case, graphed_step, timeit  # noqa: E402
from profile_block import kernel_times  # noqa: E402

VARIANTS = {"MIN_CTAS 1": {}, "rule": dict(Q.QUANTIZE_MIN_CTAS)}


def main():
    dev = torch.device("cuda")
    print(f"GPU: {torch.cuda.get_device_name()}  rule: {VARIANTS['rule']}")
    print("| block | variant | graphed ms | quantize kernels ms |\n|---|---|---|---|")
    for style in ("gpt2", "llama"):
        replays, quant, keep = {}, {}, []
        for name, rule in VARIANTS.items():
            Q.QUANTIZE_MIN_CTAS = rule
            block, step, _ = block_case(style, 2048, 4, 2048, "int8 QB128", dev)
            keep.append((block, step))        # the graph replays their tensors
            step()
            quant[name] = sum(ms for k, (ms, _) in kernel_times(step).items()
                              if k.startswith("quantize_kernel"))
            replays[name] = graphed_step(step, block, dev)
        ms = {name: [] for name in VARIANTS}
        for rep in range(5):
            for name in (list(VARIANTS) if rep % 2 == 0 else list(VARIANTS)[::-1]):
                ms[name].append(timeit(replays[name], warmup=2, reps=20))
        for name in VARIANTS:
            print(f"| {style} 2048 QB 128 | {name} | {statistics.median(ms[name]):.3f} | "
                  f"{quant[name]:.3f} |", flush=True)
    Q.QUANTIZE_MIN_CTAS = VARIANTS["rule"]


if __name__ == "__main__":
    main()
