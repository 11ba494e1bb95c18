#!/usr/bin/env bash
# SASS of the Hopper GEMM's consumer K loop, per kernel source and QB: instructions per accumulator
# element per K-block, by opcode, and the registers of the setmaxnreg regions. Run from the repo root
# on the GPU machine (its image has nvcc and cuobjdump; no GPU is used):
#     bash notes/gemm_sm90_sass.sh
set -euo pipefail
command -v cuobjdump >/dev/null || { echo "cuobjdump not found (CUDA toolkit bin/ on PATH?)" >&2; exit 1; }
nvcc --version | tail -1
python3 notes/gemm_sm90_build.py --sass
