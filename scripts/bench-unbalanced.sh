#!/usr/bin/env bash
# End-to-end unbalanced PSI benchmark with two real `consort node` processes (TLS gRPC on loopback):
#   scripts/bench-unbalanced.sh LIST_ROWS QUERY_ROWS [QUERY_ROWS...]
# The partner owns a list of LIST_ROWS ids and runs `consort psi-setup` once; the bank fetches it
# once, then runs one `consort psi-query` per QUERY_ROWS (half of each query set is in the list).
# Prints one JSON line per step (setup, fetch, each query: wall seconds, bytes on the wire, the
# job's stages) and the nodes' peak RSS. Data under ${WORK:-a temp dir}, removed at the end.
# CONSORT=path/to/consort overrides the binary (default target/release/consort).
set -euo pipefail
list=$1
shift
bin=${CONSORT:-${CARGO_TARGET_DIR:-target}/release/consort}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
. "$(dirname "$0")/lib-nodes.sh"
cleanup() {
  stop_nodes
  rm -rf "$work"
}
trap cleanup EXIT
# Ids: the list holds id-0..LIST-1; each query holds Q/2 of them and Q/2 others.
awk -v n="$list" 'BEGIN { print "id"; for (i = 0; i < n; i++) printf "id-%012d\n", i }' >"$work/list.csv"
start_nodes "$work" bank partner
pin_pair "$work" bank partner
"$bin" dataset add "$work/partner" --name blacklist --file "$work/list.csv" --key id --grant bank:psi-fetch,psi-query >/dev/null
/usr/bin/time -f '{"step":"setup-process","max_rss_kib":%M,"wall_s":%e}' \
  "$bin" psi-setup "$work/partner" --dataset blacklist --json
"$bin" psi-fetch "$work/bank" --peer partner --peer-dataset blacklist --json
for q in "$@"; do
  awk -v q="$q" -v n="$list" 'BEGIN { print "id"; for (i = 0; i < q; i++) { if (i % 2 == 0) printf "id-%012d\n", (i * 7919) % n; else printf "other-%012d\n", i } }' >"$work/q$q.csv"
  "$bin" dataset add "$work/bank" --name "q$q" --file "$work/q$q.csv" --key id --grant partner:psi-query >/dev/null
  # Twice: the first query reads the fetched list into the node's memory, the second does not.
  for round in 1 2; do
    "$bin" psi-query "$work/bank" --peer partner --dataset "q$q" --peer-dataset blacklist --out "$work/out$q-$round.csv" --json
  done
done
for n in bank partner; do
  pid=$(pgrep -f "consort node $work/$n\$" | head -1 || true)
  [ -n "$pid" ] && echo "{\"node\":\"$n\",\"peak_rss_kib\":$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")}"
done
