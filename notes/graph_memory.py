"""Where a re-captured CUDA graph's memory goes (not part of the library): train.py's GPU default
model with int8 + fallback (whose plane budgets grow early in training, so it re-captures), with
the memory allocated printed at every capture: at the start of the capture's eager run (after the
old graph's references are dropped) and after the capture.

    python3 notes/graph_memory.py [train.py arguments...]

Found with it: allocated memory grew by 64 MiB per re-capture, and a gc.collect() before the
eager run changed nothing: each capture's eager run used a new side stream, and cuBLAS keeps a
workspace per stream. cuda_graph.py now keeps one side stream.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import cuda_graph  # noqa: E402
import train  # noqa: E402

MIB = 2**20


def main(argv):
    capture, run = cuda_graph.GraphedMicroStep._capture, cuda_graph.GraphedMicroStep._run

    def traced_run(self):
        if not torch.cuda.is_current_stream_capturing():
            print(f"capture {self.captures + 1}: eager run starts at "
                  f"{torch.cuda.memory_allocated() / MIB:,.0f} MiB allocated", flush=True)
        return run(self)

    def traced_capture(self, X, Y):
        torch.cuda.reset_peak_memory_stats()
        out = capture(self, X, Y)
        print(f"capture {self.captures}: after it {torch.cuda.memory_allocated() / MIB:,.0f} MiB, "
              f"peak {torch.cuda.max_memory_allocated() / MIB:,.0f} MiB", flush=True)
        return out

    cuda_graph.GraphedMicroStep._run, cuda_graph.GraphedMicroStep._capture = traced_run, traced_capture
    train.main(["--int8", "--fallback", "--progress=False", "--sample=False", "--out_dir=/tmp/graph_memory",
                "--max_iters=250", "--eval_interval=1000", "--eval_iters=2"] + argv)


if __name__ == "__main__":
    main(sys.argv[1:])
