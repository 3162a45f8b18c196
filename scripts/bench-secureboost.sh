#!/usr/bin/env bash
# End-to-end SecureBoost training benchmark with two real `consort node` processes (TLS gRPC on
# loopback).
#   scripts/bench-secureboost.sh DATA_DIR TREES [extra `consort train` flags...]
# DATA_DIR holds a.csv (id, y, features) and b.csv (id, features), e.g. from
# `consort gen lr --rows 100000 --features-a 30 --features-b 300 --out DATA_DIR`. Trains
# `--model secureboost --trees TREES --max-depth 5 --max-bins 33` (32 value bins and the
# missing-value bin); add e.g. `--histograms he` to compare backends. Prints the train job's JSON summary (wall seconds,
# wire bytes, stages, the `ot` backend's setup and per-node timings), each node's CPU seconds
# during the job (user + system: the figure to compare on a shared box) and peak RSS (VmHWM).
# CONSORT=path/to/consort overrides the binary (default target/release/consort); BINS=32 sets
# `--max-bins` (default 33; BINS=11 is SecretFlow SGB's default of 10 buckets plus the missing-value bin). The summary adds the setup's and each tree's wall seconds and bytes
# (A's view: sent, received; `tree_*_mean` over the trees run).
set -euo pipefail
data=$1
trees=$2
shift 2
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
"$bin" dataset add "$work/bank" --name loans --file "$data/a.csv" --key id --grant partner:secureboost >/dev/null
"$bin" dataset add "$work/partner" --name features --file "$data/b.csv" --key id --grant bank:secureboost >/dev/null
summary='import json,sys; j=json.load(sys.stdin); r=j.get("report",{}); t=r.get("tree_seconds") or [0]; b=r.get("tree_bytes") or [[0,0]]
print(json.dumps({k: j.get(k) for k in ("job_id","kind","seconds","bytes_sent","bytes_received")} | {k: r.get(k) for k in ("stages","histograms","ot_seconds","holdout_auc","auc","setup_seconds","setup_bytes","trees_run")} | {"tree_seconds_mean": sum(t)/len(t), "tree_seconds_max": max(t), "tree_bytes_mean": [sum(x[i] for x in b)/len(b) for i in (0,1)]}))'
cpu_before=($(node_cpu))
"$bin" train "$work/bank" --peer partner --dataset loans --peer-dataset features --label y --model secureboost \
  --trees "$trees" --max-depth 5 --max-bins "${BINS:-33}" "$@" --out "$work/sb.json" --json | python3 -c "$summary"
cpu_after=($(node_cpu))
i=0
for n in bank partner; do
  echo "$n CPU seconds during the train job: $(python3 -c "print(round(${cpu_after[$i]} - ${cpu_before[$i]}, 1))")"
  echo "$n peak RSS: $(grep VmHWM /proc/"${pids[$i]}"/status | awk '{print $2, $3}')"
  i=$((i + 1))
done
