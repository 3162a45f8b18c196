#!/usr/bin/env bash
# End-to-end several-peer payload join benchmark: a bank and two data sources, three real
# `consort node` processes (TLS gRPC on loopback):
#   scripts/bench-multi.sh BANK_ROWS SOURCE_ROWS [left|inner]
# Data from `consort gen psi` (same seed, so the bank file is the same for both sources): the
# bank holds BANK_ROWS ids; source s1 holds SOURCE_ROWS rows sharing BANK_ROWS/2 ids with the
# bank, s2 SOURCE_ROWS rows sharing 3*BANK_ROWS/10. Each source shares its `score` column (an
# 8-byte value) with the bank. The bank runs one `consort psi --multi` job; prints its JSON line
# (wall, per-peer stages and wire bytes), the client's time and each node's peak RSS.
# Data under ${WORK:-a temp dir} (removed at the end). CONSORT=path overrides the binary
# (default target/release/consort).
set -euo pipefail
bank_rows=$1
source_rows=$2
join=${3:-left}
bin=${CONSORT:-${CARGO_TARGET_DIR:-target}/release/consort}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
. "$(dirname "$0")/lib-nodes.sh"
cleanup() {
  stop_nodes
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" gen psi --rows "$bank_rows" --rows-b "$source_rows" --overlap $((bank_rows / 2)) --seed 7 --out "$work/g1" --json
"$bin" gen psi --rows "$bank_rows" --rows-b "$source_rows" --overlap $((bank_rows * 3 / 10)) --seed 7 --out "$work/g2" --json
cmp -s "$work/g1/a.csv" "$work/g2/a.csv" || { echo "the two bank files differ" >&2; exit 1; }
rm "$work/g2/a.csv"
start_nodes "$work" bank s1 s2
for s in s1 s2; do
  pin_pair "$work" bank "$s"
done
# Header checks only: each job checks its file in full when it loads it.
"$bin" dataset add "$work/bank" --name customers --file "$work/g1/a.csv" --key id --grant s1 --grant s2 --no-check >/dev/null
"$bin" dataset add "$work/s1" --name risk --file "$work/g1/b.csv" --key id --grant bank --share bank:score --no-check >/dev/null
"$bin" dataset add "$work/s2" --name scores --file "$work/g2/b.csv" --key id --grant bank --share bank:score --no-check >/dev/null
/usr/bin/time -f '{"step":"client","max_rss_kib":%M,"wall_s":%e}' \
  "$bin" psi "$work/bank" --peer s1 --peer s2 --dataset customers \
  --peer-dataset s1:risk --peer-dataset s2:scores --peer-columns s1:score --peer-columns s2:score \
  --multi "$join" --out "$work/joined.csv" --json
for n in bank s1 s2; do
  pid=$(pgrep -f "consort node $work/$n\$" | head -1 || true)
  [ -n "$pid" ] && echo "{\"node\":\"$n\",\"peak_rss_kib\":$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")}"
done
