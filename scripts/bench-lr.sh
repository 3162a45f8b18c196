#!/usr/bin/env bash
# End-to-end LR benchmark with two real `consort node` processes (TLS gRPC on loopback):
#   scripts/bench-lr.sh ROWS FEATURES_A FEATURES_B EPOCHS [extra `consort train` flags...]
# Prints the train job's JSON summary (wall seconds, wire bytes, AUC/KS, stages) and each node's
# CPU seconds during the job (user + system: the figure to compare on a shared box).
# CONSORT=path/to/consort overrides the binary (default target/release/consort).
# DEALER=1 adds a third node "dealer" and trains in dealer mode (pass no --dealer flag yourself).
set -euo pipefail
rows=$1 fa=$2 fb=$3 epochs=$4
shift 4
bin=${CONSORT:-${CARGO_TARGET_DIR:-target}/release/consort}
work=$(mktemp -d)
. "$(dirname "$0")/lib-nodes.sh"
cleanup() {
  stop_nodes
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" gen lr --rows "$rows" --features-a "$fa" --features-b "$fb" --seed 1 --out "$work/data" >&2
nodes="bank partner"
[ "${DEALER:-0}" = 1 ] && nodes="bank partner dealer"
start_nodes "$work" $nodes
pin_pair "$work" bank partner
dealer_flag=()
if [ "${DEALER:-0}" = 1 ]; then
  for n in bank partner; do pin_pair "$work" "$n" dealer; done
  dealer_flag=(--dealer dealer)
fi
"$bin" dataset add "$work/bank" --name loans --file "$work/data/a.csv" --key id --grant partner:train,score >/dev/null
"$bin" dataset add "$work/partner" --name features --file "$work/data/b.csv" --key id --grant bank:train,score >/dev/null
cpu_before=($(node_cpu))
"$bin" train "$work/bank" --peer partner --dataset loans --peer-dataset features --label y \
  --epochs "$epochs" --seed 7 --out "$work/model.json" --json "${dealer_flag[@]}" "$@"
cpu_after=($(node_cpu))
i=0
for n in $nodes; do
  echo "$n CPU seconds during the train job: $(python3 -c "print(round(${cpu_after[$i]} - ${cpu_before[$i]}, 1))")" >&2
  i=$((i + 1))
done
