#!/usr/bin/env bash
# ncu warp-stall profile of the default wgmma GEMM (forward, int8 out) at QB 128 and 64; into $OUT.
OUT=${OUT:-/tmp/sm90_ncu}
mkdir -p "$OUT"
for qb in ${QBS:-128 64}; do
  ncu --kernel-name regex:gemm_sm90_int8 --launch-skip 2 --launch-count 1 \
      --section WarpStateStats --section SchedulerStats --section SourceCounters --section SpeedOfLight \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
      -f -o "/tmp/sm90_$qb" python3 notes/sm90_ncu.py "$qb" 16384 8192 2048 > "/tmp/ncu_$qb.log" 2>&1 \
      || tail -20 "/tmp/ncu_$qb.log"
  ncu -i "/tmp/sm90_$qb.ncu-rep" --page details > "/tmp/details_$qb.txt" 2>&1
  ncu -i "/tmp/sm90_$qb.ncu-rep" --page source --csv --print-source sass 2>/dev/null | gzip > "$OUT/sass_sm90_$qb.csv.gz"
  { echo "## QB $qb, 16384x8192x2048, int8 out"; cat "/tmp/details_$qb.txt";
    python3 notes/plane_profile.py --summary "$OUT/sass_sm90_$qb.csv.gz"; } 2>&1 | tee -a "$OUT/sm90_profile.log" | head -120
done
