"""Run the default wgmma GEMM a few times for ncu (not part of the library):

    ncu --kernel-name regex:gemm_sm90_int8 --launch-skip 2 --launch-count 1 ... \
        python3 notes/sm90_ncu.py QB M K N

notes/sm90_ncu.sh profiles QB 128 and 64 at 16384x8192x2048 (forward, int8 out) and summarises
the warp stalls with notes/plane_profile.py --summary.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from int8_gemm import gemm_cuda  # noqa: E402
from quantize import quantize  # noqa: E402

qb, M, K, N = (int(v) for v in sys.argv[1:5])
a = quantize(torch.randn(M, K, device="cuda"), qb)
b = quantize(torch.randn(N, K, device="cuda"), qb)
for _ in range(4):
    gemm_cuda(a, b, out="int8", kernel="wgmma")
torch.cuda.synchronize()
