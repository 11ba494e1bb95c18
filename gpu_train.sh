#!/usr/bin/env bash
# Model-level runs on a GPU: train.py's GPU default model (GPT-2 small on the default corpus) in
# bf16, int8 and int8 + fallback, one seed and the same data; text logs and log.jsonl copies land
# in $OUT (default results/model), named ${NAME}_<mode>.{log,jsonl} (NAME: default gpt2).
#   MODES="bf16 int8" bash gpu_train.sh --max_iters=2000 --eval_iters=20
#   NAME=llama_s1 bash gpu_train.sh --mlp=swiglu --norm=rmsnorm --seed=1 ...   (another model)
set -o pipefail
OUT=${OUT:-results/model}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
for mode in ${MODES:-bf16 int8 int8-fallback}; do
  case $mode in
    bf16) flags="" ;;
    int8) flags="--int8" ;;
    int8-fallback) flags="--int8 --fallback" ;;
    *) echo "unknown mode $mode (bf16, int8, int8-fallback)"; exit 2 ;;
  esac
  run=$(mktemp -d)
  echo "=== python3 train.py $flags $*" | tee "$OUT/${NAME:-gpt2}_$mode.log"
  /usr/bin/time -f "wall %e s" python3 train.py $flags --out_dir="$run" --progress=False \
    --sample=False "$@" 2>&1 | tee -a "$OUT/${NAME:-gpt2}_$mode.log" || status=1
  cp "$run/log.jsonl" "$OUT/${NAME:-gpt2}_$mode.jsonl"
done
exit $status
