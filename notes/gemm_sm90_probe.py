"""Quick probe of the wgmma kernel (no assertion): rel err vs the reference on a 256-row head and
the time of float / int8 out at 16384x8192x2048 (mkn), QB = 32, 64, 128, next to mma and bf16."""
import sys

import torch

sys.path.insert(0, ".")
from int8_gemm import gemm_cuda, gemm_ref  # noqa: E402
from quantize import QTensor, quantize  # noqa: E402
from bench import event_ms as time_ms  # noqa: E402  (CUDA events, medians)

m, k, n = 16384, 8192, 2048
a, b = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
t16 = time_ms(lambda: a.bfloat16() @ b.bfloat16().t())
ab, bb = a.bfloat16(), b.bfloat16()
t16 = time_ms(lambda: ab @ bb.t())
print(f"bf16 {t16:.3f} ms {2 * m * n * k / t16 / 1e9:.0f} TFLOPS")
for QB in (32, 64, 128):
    ta, tb = quantize(a, QB), quantize(b, QB)
    head = QTensor(ta.q[:256].contiguous(), ta.s[:256 // QB].contiguous(), torch.Size((256, k)), QB)
    ref = gemm_ref(head, tb)
    for kern in ("mma", "wgmma"):
        c = gemm_cuda(ta, tb, kernel=kern)
        err = ((c[:256] - ref).norm() / ref.norm()).item()
        for out in ("float", "int8"):
            t = time_ms(lambda: gemm_cuda(ta, tb, out=out, kernel=kern))
            tops = 2 * m * n * k / t / 1e9
            print(f"QB={QB} {kern:5s} {out:5s} err {err:.2e} {t:.3f} ms {tops:.0f} TOPS "
                  f"{t16 / t:.2f}x bf16", flush=True)
