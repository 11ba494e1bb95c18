export PYTHONUNBUFFERED=1
for v in v3 v3_magic; do
  ncu --kernel-name regex:gemm_int8 --launch-skip 2 --launch-count 1 \
      --section WarpStateStats --section SchedulerStats --section SourceCounters --section SpeedOfLight \
      --section ComputeWorkloadAnalysis --section Occupancy \
      -f -o /tmp/prof_$v python3 notes/mma_ab.py --target $v > /tmp/ncu_$v.log 2>&1 || tail -20 /tmp/ncu_$v.log
  ncu -i /tmp/prof_$v.ncu-rep --page details > /tmp/details_$v.txt 2>&1
  ncu -i /tmp/prof_$v.ncu-rep --page source --csv --print-source sass 2>/dev/null | gzip > $OUT/sass_$v.csv.gz
  { echo "## $v"; cat /tmp/details_$v.txt; python3 notes/plane_profile.py --summary $OUT/sass_$v.csv.gz; } 2>&1 | tee -a $OUT/profile.log | head -150
done
