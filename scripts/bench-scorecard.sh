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
# Every 0.5 s during the train job, both nodes' CPU seconds (to see whether they work at the same
# time or take turns: the summary below).
(while :; do echo "$(date +%s.%N) $(node_cpu)"; sleep 0.5; done) >"$work/train.cpu" &
sampler=$!
"$bin" train "$work/bank" --peer partner --dataset loans --peer-dataset features --label y --scorecard \
  --bins "$work/bins.json" --base-score 600 --base-odds 50 --pdo 20 --epochs "$epochs" "${psi[@]}" "$@" \
  --out "$work/card.json" --json | python3 -c "$summary"
cpu_after=($(node_cpu))
kill "$sampler" 2>/dev/null || true
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
# Per 0.5 s sample of the train job, each node's cores in use: mean per node, and the share of the
# samples where both worked at once (≥ 0.5 core each) or one worked (≥ 0.5) while the other idled
# (< 0.2): taking turns shows as the latter.
awk 'NR > 1 { dt = $1 - t; if (dt > 0) { a = ($2 - pa) / dt; b = ($3 - pb) / dt; n++; sa += a; sb += b;
  both += (a >= 0.5 && b >= 0.5); turn += ((a >= 0.5 && b < 0.2) || (b >= 0.5 && a < 0.2)) } }
  { t = $1; pa = $2; pb = $3 }
  END { if (n) printf "train job, per 0.5 s sample: bank %.2f cores, partner %.2f cores on average; both busy %.0f%%, one busy while the other idles %.0f%% of %d samples\n", sa / n, sb / n, 100 * both / n, 100 * turn / n, n }' "$work/train.cpu"
i=0
for n in bank partner; do
  echo "$n peak RSS: $(grep VmHWM /proc/"${pids[$i]}"/status | awk '{print $2, $3}')"
  i=$((i + 1))
done
