#!/usr/bin/env bash
# End-to-end benchmark of the `bin` job with two real `consort node` processes (TLS gRPC on
# loopback):
#   scripts/bench-bin.sh DATA_DIR [extra `consort bin` flags...]
# DATA_DIR holds a.csv (id, y, features) and b.csv (id, features), e.g. from
# `consort gen lr --rows 100000 --features-a 30 --features-b 300 --out DATA_DIR`.
# Prints the bin job's JSON summary (wall seconds, wire bytes, stages), then one line per node
# with its peak RSS (VmHWM). CONSORT=path/to/consort overrides the binary (default
# target/release/consort).
set -euo pipefail
data=$1
shift
bin=${CONSORT:-${CARGO_TARGET_DIR:-target}/release/consort}
work=$(mktemp -d)
. "$(dirname "$0")/lib-nodes.sh"
cleanup() {
  stop_nodes
  rm -rf "$work"
}
trap cleanup EXIT
start_nodes "$work" bank partner
pin_pair "$work" bank partner
"$bin" dataset add "$work/bank" --name loans --file "$data/a.csv" --key id --grant partner:bin >/dev/null
"$bin" dataset add "$work/partner" --name features --file "$data/b.csv" --key id --grant bank:bin >/dev/null
"$bin" bin "$work/bank" --peer partner --dataset loans --peer-dataset features --label y \
  --out "$work/bins.json" --json "$@"
i=0
for n in bank partner; do
  echo "$n peak RSS: $(grep VmHWM /proc/"${pids[$i]}"/status | awk '{print $2, $3}')"
  i=$((i + 1))
done
