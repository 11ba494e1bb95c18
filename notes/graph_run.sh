# The CUDA-graph check of session 6 in one device call: the graph tests (and the GPU train.py
# tests), then GPT-2 small for 100 steps in each mode with and without the graph (medians).
#   bash notes/graph_run.sh    (on the device machine; $OUT collects the logs)
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py tests/test_train.py -m gpu -x 2>&1 | tail -25 | tee $OUT/graph_tests.log
for g in True False; do
  OUT=$OUT/speed_graph_$g MODES="bf16 int8 int8-fallback" bash gpu_train.sh --max_iters=100 --eval_interval=1000 --eval_iters=5 --cuda_graph=$g > /dev/null 2>&1
  for f in $OUT/speed_graph_$g/*.jsonl; do python3 -c "
import json,sys,statistics as st
L=[json.loads(l) for l in open('$f')]
t=[e['tokens_per_s'] for e in L if 'tokens_per_s' in e][2:]
d=[e['dt_ms'] for e in L if 'dt_ms' in e][2:]
v=[e for e in L if 'val_loss' in e]
c=[e.get('graph_captures') for e in L if 'loss' in e]
print('$g', '$f'.split('/')[-1], 'tok/s', round(st.median(t)), 'dt', round(st.median(d),1), 'val', v[-1].get('val_loss') if v else None, 'captures', c[-1])
"; done
  grep -H "peak memory\|Error" $OUT/speed_graph_$g/*.log | head -8
done
