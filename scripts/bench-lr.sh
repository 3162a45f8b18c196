#!/usr/bin/env bash
# End-to-end LR benchmark with two real `consort node` processes (TLS gRPC on loopback):
#   scripts/bench-lr.sh ROWS FEATURES_A FEATURES_B EPOCHS [extra `consort train` flags...]
# Prints the train job's JSON summary (wall seconds, wire bytes, AUC/KS, stages).
# CONSORT=path/to/consort overrides the binary (default target/release/consort).
# DEALER=1 adds a third node "dealer" and trains in dealer mode (pass no --dealer flag yourself).
set -euo pipefail
rows=$1 fa=$2 fb=$3 epochs=$4
shift 4
bin=${CONSORT:-${CARGO_TARGET_DIR:-target}/release/consort}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" gen lr --rows "$rows" --features-a "$fa" --features-b "$fb" --seed 1 --out "$work/data" >&2
nodes="bank partner"
[ "${DEALER:-0}" = 1 ] && nodes="bank partner dealer"
for n in $nodes; do
  "$bin" init "$work/$n" --name "$n" --listen 127.0.0.1:0 >/dev/null
  "$bin" node "$work/$n" 2>"$work/$n.log" &
  pids+=($!)
done
for n in $nodes; do
  for _ in $(seq 100); do [ -S "$work/$n/control.sock" ] && [ -s "$work/$n/listen.addr" ] && break; sleep 0.1; done
done
"$bin" peer add "$work/bank" --name partner --addr "$(cat "$work/partner/listen.addr")" --cert "$work/partner/node.crt" >/dev/null
"$bin" peer add "$work/partner" --name bank --addr "$(cat "$work/bank/listen.addr")" --cert "$work/bank/node.crt" >/dev/null
dealer_flag=()
if [ "${DEALER:-0}" = 1 ]; then
  for n in bank partner; do
    "$bin" peer add "$work/$n" --name dealer --addr "$(cat "$work/dealer/listen.addr")" --cert "$work/dealer/node.crt" >/dev/null
    "$bin" peer add "$work/dealer" --name "$n" --addr "$(cat "$work/$n/listen.addr")" --cert "$work/$n/node.crt" >/dev/null
  done
  dealer_flag=(--dealer dealer)
fi
"$bin" dataset add "$work/bank" --name loans --file "$work/data/a.csv" --key id --grant partner:train,score >/dev/null
"$bin" dataset add "$work/partner" --name features --file "$work/data/b.csv" --key id --grant bank:train,score >/dev/null
"$bin" train "$work/bank" --peer partner --dataset loans --peer-dataset features --label y \
  --epochs "$epochs" --seed 7 --out "$work/model.json" --json "${dealer_flag[@]}" "$@"
