#!/usr/bin/env bash
# notes/plane_profile.py on the GPU machine: the timing, then ncu's warp-stall sampling of the plain
# GEMM and of the fused one at 5% flagged (16384x2048x8192), summarised. Everything into $OUT.
OUT=${OUT:-/tmp/plane_profile}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 notes/plane_profile.py 2>&1 | tee "$OUT/timing.log"
for f in ${FRACS:-0 0.05}; do
  ncu --kernel-name regex:gemm_sm90_int8 --launch-skip 2 --launch-count 1 \
      --section WarpStateStats --section SchedulerStats --section SourceCounters \
      --section SpeedOfLight -f -o "/tmp/prof_$f" python3 notes/plane_profile.py --target "$f" \
      > "/tmp/ncu_$f.log" 2>&1 || tail -20 "/tmp/ncu_$f.log"
  ncu -i "/tmp/prof_$f.ncu-rep" --page details > "/tmp/details_$f.txt" 2>&1
  ncu -i "/tmp/prof_$f.ncu-rep" --page source --csv --print-source sass 2> /tmp/src_err.txt \
      | gzip > "$OUT/sass_$f.csv.gz"
  head -5 /tmp/src_err.txt
  { echo "## flagged $f"; cat "/tmp/details_$f.txt"; python3 notes/plane_profile.py --summary "$OUT/sass_$f.csv.gz"; } \
      2>&1 | tee -a "$OUT/profile.log"
done
