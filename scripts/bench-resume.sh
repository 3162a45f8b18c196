#!/usr/bin/env bash
# Resume benchmark (issue 12 item 3): an RR22 PSI of ROWS x ROWS ids-only rows (half shared) run
# once without a stop, then again with the partner's node killed (SIGKILL) once the bank has
# recorded KILL_AT ranges (default 1: 10^7 rows are 3 ranges of 4, 4 and 2 buckets; 10^8 rows are 24
# ranges of 4 buckets, so KILL_AT=12 is half), or, with KILL_AFTER=SECONDS (whole), that many seconds into the
# cut run (a kill in the middle of a range: the work of the unfinished range is lost), the node
# restarted and the job resumed with --resume. KILL_NODE=bank kills the requester's node instead
# (the job is submitted to it; the partner's side then fails and keeps its state).
# Prints the times (uninterrupted, until the kill, restart, resume, total) and the sha256 of
# both outputs' sorted plaintext (two runs draw different salts, hence different joint orders).
# Usage: scripts/bench-resume.sh BIN WORKDIR [ROWS]
set -euo pipefail
bin=$(realpath "$1"); work=$2; rows=${3:-10000000}; kill_at=${KILL_AT:-1}; kill_after=${KILL_AFTER:-}
kill_node=${KILL_NODE:-partner}
case $kill_node in bank) victim=0 other=partner ;; partner) victim=1 other=bank ;; *) echo "KILL_NODE: bank or partner" >&2; exit 2 ;; esac
source "$(dirname "$0")/lib-nodes.sh"
trap stop_nodes EXIT
rm -rf "$work"; mkdir -p "$work"
"$bin" gen psi --rows "$rows" --overlap $((rows / 2)) --ids-only --seed 5 --out "$work/data" >/dev/null
start_nodes "$work" bank partner
pin_pair "$work" bank partner
"$bin" dataset add "$work/bank" --name customers --file "$work/data/a.csv" --key id --grant partner >/dev/null
"$bin" dataset add "$work/partner" --name accounts --file "$work/data/b.csv" --key id --grant bank >/dev/null
psi() { "$bin" psi "$work/bank" --peer partner --dataset customers --peer-dataset accounts --protocol rr22 --json "$@"; }
now() { echo "$EPOCHREALTIME"; }
t0=$(now); psi --out "$work/ref.csv" >"$work/ref.json"; t1=$(now)
uninterrupted=$(echo "$t1 - $t0" | bc)
# The cut run: the partner's node is killed once half of the bank's ranges are recorded.
t0=$(now)
psi --out "$work/out.csv" >"$work/cut.json" 2>&1 &
submitter=$!
job=""
# Polled with bash builtins only, every 0.2 s: a fork per check (ls, grep, bc every 50 ms) took
# a visible share of this 2-core box from the cut run, which the uninterrupted run did not pay.
shopt -s nullglob
while :; do
  dirs=("$work"/bank/spill/*/)
  if [ ${#dirs[@]} -gt 0 ]; then
    d=${dirs[0]}
    # A range is recorded once its sealed positions are in place; its segment is written during
    # the next range and its positions then removed: the ranges with either file are recorded.
    declare -A recorded=()
    for f in "$d"segment-* "$d"positions-*; do recorded[${f##*-}]=1; done
    n=${#recorded[@]}
    if [ -n "$kill_after" ]; then
      elapsed_ms=$(( (${EPOCHREALTIME/./} - ${t0/./}) / 1000 ))
      if [ "$elapsed_ms" -ge "$(( ${kill_after%.*} * 1000 ))" ]; then job=$(basename "$d"); break; fi
    elif [ "$n" -ge "$kill_at" ]; then job=$(basename "$d"); break; fi
  fi
  sleep 0.2
done
shopt -u nullglob
kill -9 "${pids[$victim]}"; t_kill=$(now)
wait "$submitter" || true
t2=$(now)
rm -f "$work/$kill_node/listen.addr"
"$bin" node "$work/$kill_node" 2>>"$work/$kill_node.log" &
pids[$victim]=$!
for _ in $(seq 200); do [ -S "$work/$kill_node/control.sock" ] && [ -s "$work/$kill_node/listen.addr" ] && break; sleep 0.05; done
"$bin" peer add "$work/$other" --name "$kill_node" --addr "$(cat "$work/$kill_node/listen.addr")" --cert "$work/$kill_node/node.crt" --replace >/dev/null
t3=$(now)
psi --out "$work/out.csv" --resume "$job" >"$work/resumed.json"; t4=$(now)
sorted_sha() { "$bin" export "$work/bank" "$1" --out - | LC_ALL=C sort | sha256sum | cut -d' ' -f1; }
echo "rows $rows job $job killed $kill_node recorded_at_kill $n"
echo "uninterrupted_s $uninterrupted"
echo "until_kill_s $(echo "$t_kill - $t0" | bc)  restart_s $(echo "$t3 - $t2" | bc)  resume_s $(echo "$t4 - $t3" | bc)  total_s $(echo "$t4 - $t0" | bc)"
echo "ref_sorted_sha256 $(sorted_sha "$work/ref.csv")"
echo "out_sorted_sha256 $(sorted_sha "$work/out.csv")"
echo "ref_rows $(grep -o '"output_rows":[0-9]*' "$work/ref.json" || true) resumed $(grep -o '"output_rows":[0-9]*' "$work/resumed.json" || true)"
cat "$work/resumed.json"
