#!/usr/bin/env bash
# End-to-end benchmark of the scorecard workflow with two real `consort node` processes (TLS gRPC
# on loopback): bin → train --scorecard → score → report.
#   scripts/bench-scorecard.sh DATA_DIR EPOCHS [extra `consort train` flags...]
# DATA_DIR holds a.csv (id, y, features) and b.csv (id, features), e.g. from
# `consort gen lr --rows 100000 --features-a 30 --features-b 300 --out DATA_DIR`. The bin job
# uses 10 quantile bins and a 2048-bit key; training is dealer-free. Prints one JSON line per job
# (its wall seconds, wire bytes and stages: `consort ... --json`), the report's AUC/KS, the
# wall time of the whole workflow, each node's CPU seconds during the train job (user + system:
# the figure to compare on a shared box) and each node's peak RSS (VmHWM). CONSORT=path/to/consort
# overrides the binary (default target/release/consort). PROTOCOL=rr22 aligns the rows of all
# three jobs with RR22 instead of the default ECDH PSI. Scores the training rows themselves
# (the workflow's cost, not a held-out evaluation).
set -euo pipefail
data=$1
epochs=$2
shift 2
bin=${CONSORT:-${CARGO_TARGET_DIR:-target}/release/consort}
psi=(--protocol "${PROTOCOL:-ecdh}")
work=$(mktemp -d)
. "$(dirname "$0")/lib-nodes.sh"
cleanup() {
  stop_nodes
  rm -rf "$work"
}
trap cleanup EXIT
start_nodes "$work" bank partner
pin_pair "$work" bank partner
"$bin" dataset add "$work/bank" --name loans --file "$data/a.csv" --key id --grant partner:bin,train,score >/dev/null
"$bin" dataset add "$work/partner" --name features --file "$data/b.csv" --key id --grant bank:bin,train,score >/dev/null
summary='import json,sys; j=json.load(sys.stdin); r=j.get("report",{}); print(json.dumps({k: j.get(k) for k in ("job_id","kind","seconds","bytes_sent","bytes_received")} | {"stages": r.get("stages"), "auc": r.get("auc"), "learning_rate": None}))'
start=$(date +%s.%N)
"$bin" bin "$work/bank" --peer partner --dataset loans --peer-dataset features --label y --bins 10 --key-bits 2048 \
  "${psi[@]}" --out "$work/bins.json" --json | python3 -c "$summary"
cpu_before=($(node_cpu))
"$bin" train "$work/bank" --peer partner --dataset loans --peer-dataset features --label y --scorecard \
  --bins "$work/bins.json" --base-score 600 --base-odds 50 --pdo 20 --epochs "$epochs" "${psi[@]}" "$@" \
  --out "$work/card.json" --json | python3 -c "$summary"
cpu_after=($(node_cpu))
"$bin" score "$work/bank" --peer partner --dataset loans --peer-dataset features --model "$work/card.json" \
  "${psi[@]}" --out "$work/scored.csv" --json | python3 -c "$summary"
"$bin" export "$work/bank" "$work/scored.csv" --out "$work/scored.plain.csv" >/dev/null
awk -F, 'NR==FNR { if (FNR > 1) y[$1] = $2; next } FNR == 1 { print $0 ",y"; next } { print $0 "," y[$1] }' \
  "$data/a.csv" "$work/scored.plain.csv" >"$work/scored-labeled.csv"
"$bin" report --scores "$work/scored-labeled.csv" --label y --points-column points --out "$work/report.html" \
  --json-out "$work/report.json" >/dev/null
end=$(date +%s.%N)
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({k: r.get(k) for k in ("auc","ks","gini")}))' "$work/report.json"
echo "workflow wall seconds (bin → train → score → report): $(python3 -c "print(round($end - $start, 1))")"
i=0
for n in bank partner; do
  echo "$n CPU seconds during the train job: $(python3 -c "print(round(${cpu_after[$i]} - ${cpu_before[$i]}, 1))")"
  i=$((i + 1))
done
i=0
for n in bank partner; do
  echo "$n peak RSS: $(grep VmHWM /proc/"${pids[$i]}"/status | awk '{print $2, $3}')"
  i=$((i + 1))
done
