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
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for n in bank partner; do
  "$bin" init "$work/$n" --name "$n" --listen 127.0.0.1:0 >/dev/null
  "$bin" node "$work/$n" 2>"$work/$n.log" &
  pids+=($!)
done
for n in bank partner; do
  for _ in $(seq 100); do [ -S "$work/$n/control.sock" ] && [ -s "$work/$n/listen.addr" ] && break; sleep 0.1; done
done
"$bin" peer add "$work/bank" --name partner --addr "$(cat "$work/partner/listen.addr")" --cert "$work/partner/node.crt" >/dev/null
"$bin" peer add "$work/partner" --name bank --addr "$(cat "$work/bank/listen.addr")" --cert "$work/bank/node.crt" >/dev/null
"$bin" dataset add "$work/bank" --name loans --file "$data/a.csv" --key id --grant partner:bin >/dev/null
"$bin" dataset add "$work/partner" --name features --file "$data/b.csv" --key id --grant bank:bin >/dev/null
"$bin" bin "$work/bank" --peer partner --dataset loans --peer-dataset features --label y \
  --out "$work/bins.json" --json "$@"
i=0
for n in bank partner; do
  echo "$n peak RSS: $(grep VmHWM /proc/"${pids[$i]}"/status | awk '{print $2, $3}')"
  i=$((i + 1))
done
