#!/usr/bin/env bash
# Times `consort report` (release) on generated scores:
#   scripts/bench-report.sh ROWS
# Writes ROWS scored rows (points, probability, label; 10% bads) and ROWS baseline rows, then runs
# the report with points bands and PSI three times; prints wall time, rows/s and peak RSS of each.
# CONSORT=path/to/consort overrides the binary (default target/release/consort).
set -euo pipefail
rows=$1
bin=${CONSORT:-${CARGO_TARGET_DIR:-target}/release/consort}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
awk -v n="$rows" 'BEGIN { srand(11); print "id,points,probability,label";
  for (i = 0; i < n; i++) { y = rand() < 0.1; p = (rand() + 0.7 * y) / 1.7;
    printf "k%d,%d,%.6f,%d\n", i, 600 - int(100 * p), p, y } }' >"$work/scored.csv"
awk -v n="$rows" 'BEGIN { srand(12); print "id,probability";
  for (i = 0; i < n; i++) { y = rand() < 0.1; printf "k%d,%.6f\n", i, (rand() + 0.6 * y) / 1.6 } }' >"$work/train.csv"
for _ in 1 2 3; do
  /usr/bin/time -f "%e %M" -o "$work/time" "$bin" report --scores "$work/scored.csv" --label label \
    --points-column points --baseline "$work/train.csv" --out "$work/r.html" --json-out "$work/r.json" >/dev/null
  read -r wall rss <"$work/time"
  awk -v w="$wall" -v r="$rss" -v n="$rows" \
    'BEGIN { printf "rows %d: wall %.2f s, %.0f scored rows/s (plus as many baseline rows), peak RSS %.0f MiB\n", n, w, n / w, r / 1024 }'
done
