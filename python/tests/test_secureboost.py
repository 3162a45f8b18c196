"""SecureBoost through consort.Node (``model="secureboost"``) against two real node processes."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import consort
from conftest import auc, ids

TREES = 3


@pytest.fixture(scope="module")
def sb_frames():
    """600 customers; the bank holds y and a0..a2, the partner b0..b2 for 90% of them. The label
    depends on a step and a product (trees' kind of signal) on both sides. Returns (bank, partner,
    true_logit)."""
    rng = np.random.default_rng(23)
    n = 600
    a = rng.normal(size=(n, 3))
    b = rng.normal(size=(n, 3))
    logit = 2.5 * (a[:, 0] > 0) - 1.5 * a[:, 1] + 2.0 * (b[:, 0] > 0.3) - 1.2 * b[:, 1] * (a[:, 2] > 0) - 1.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    bank = pd.DataFrame({"id": ids(range(n)), "y": y, **{f"a{i}": a[:, i].round(5) for i in range(3)}})
    keep = rng.random(n) < 0.9
    partner = pd.DataFrame({"id": ids(np.arange(n)[keep]), **{f"b{i}": b[keep, i].round(5) for i in range(3)}})
    return bank, partner, pd.Series(logit, index=bank["id"])


@pytest.fixture(scope="module")
def sb_datasets(pair, sb_frames):
    bank, partner, _ = sb_frames
    pair.a.add_dataset("sb_loans", bank, key="id", grant="partner:secureboost,secureboost-score")
    pair.b.add_dataset("sb_features", partner, key="id", grant="bank:secureboost,secureboost-score")
    return sb_frames


@pytest.fixture(scope="module")
def trained(pair, sb_datasets):
    """One SecureBoost train job, and the progress updates it reported."""
    updates = []
    result = pair.a.train(
        peer="partner", dataset="sb_loans", peer_dataset="sb_features", label="y", model="secureboost",
        trees=TREES, max_depth=3, learning_rate=0.5, reg_lambda=1.0, holdout=0.25, tolerance=0.0, seed=5,
        progress=lambda stage, done, total: updates.append((stage, done, total)),
    )
    return result, updates


def aligned(bank, partner):
    return bank[bank["id"].isin(partner["id"])]


def test_train_writes_a_model_and_reports_trees(pair, sb_datasets, trained):
    bank, partner, _ = sb_datasets
    result, _ = trained
    assert result.model_kind == "secureboost"
    assert result.model.is_file()
    assert b"\"format\"" not in result.model.read_bytes(), "the model is sealed at rest"
    record = pair.a.job(result.job_id)
    assert record["kind"] == "secureboost" and record["state"] == "done"
    assert record["report"] == result.report

    r = result.report
    assert r["model_kind"] == "secureboost" and r["party"] == "A"
    assert (r["features"], r["peer_features"]) == (3, 3)
    assert r["aligned_rows"] == len(aligned(bank, partner))
    # tolerance=0: no early stopping, every tree kept, one holdout loss per tree.
    assert (r["trees_run"], r["trees_kept"], r["stopped_early"]) == (TREES, TREES, False)
    assert len(r["holdout_loss"]) == TREES and all(np.isfinite(r["holdout_loss"]))
    assert r["holdout_loss"][-1] < np.log(2), "the trees beat the constant prediction on the holdout"
    assert r["holdout_rows"] > 0
    # 3 trees of depth 3 on this signal: a holdout AUC near 0.8 (0.75 to 0.81 over seeds 5 to 7).
    assert result.auc is not None and 0.65 < result.auc <= 1.0, result.auc
    assert result.ks is not None and 0.0 < result.ks <= 1.0, result.ks
    used = {i["feature"] for i in r["importance"] if i["splits"] > 0}
    assert "a0" in used, used
    assert any(f.startswith("peer:") for f in used), f"the partner's features split too: {used}"

    # The partner's half, under its own node directory.
    on_b = pair.b.job(result.job_id)
    assert on_b["role"] == "responder" and on_b["report"]["party"] == "B"
    assert (pair.b.dir / on_b["output"]).is_file()


TREE_STAGE = re.compile(r"tree (\d+)/(\d+) holdout loss \d+\.\d{4}")


def secureboost_stages(updates):
    """The SecureBoost stages among progress updates, each checked against its position (a stage
    is reported again at a wake-up when the job's status changed within it: counted once)."""
    seen = []
    for stage, done, total in updates:
        if stage == "secureboost setup":
            assert (done, total) == (0, TREES)
            name = stage
        elif stage.startswith("tree "):
            m = TREE_STAGE.fullmatch(stage)
            assert m, stage
            assert (int(m.group(1)), int(m.group(2))) == (done, total) == (done, TREES), stage
            name = f"tree {done}"
        else:
            continue
        if not seen or seen[-1] != name:
            seen.append(name)
    return seen


def test_progress_reports_setup_and_every_tree(pair, sb_datasets):
    # Trees with `he` histograms take long enough (encryption) that no stage is coalesced away
    # by the node's status stream; the wait reports every stage it streams.
    _, partner, _ = sb_datasets
    pair.b.add_dataset("sb_features_he", partner, key="id", grant="bank:secureboost")
    updates = []
    result = pair.a.train(
        peer="partner", dataset="sb_loans", peer_dataset="sb_features_he", label="y", model="secureboost",
        trees=TREES, max_depth=2, histograms="he", tolerance=0.0, seed=9,
        progress=lambda stage, done, total: updates.append((stage, done, total)),
    )
    assert result.report["histograms"] == "he"
    assert secureboost_stages(updates) == ["secureboost setup"] + [f"tree {i}" for i in range(1, TREES + 1)], [
        u[0] for u in updates
    ]
    assert updates[-1][0] == "done"


def test_progress_of_a_fast_job_is_well_formed(trained):
    # With `ot` histograms 600 rows take milliseconds a tree: some stages may be coalesced, but
    # whatever is reported is in order.
    _, updates = trained
    seen = secureboost_stages(updates)
    assert seen == sorted(seen, key=lambda s: (s != "secureboost setup", s)), updates


def test_score_with_the_model(pair, sb_datasets, trained):
    bank, partner, logit = sb_datasets
    result, _ = trained
    rows = aligned(bank, partner)
    predictions = pair.a.score(
        peer="partner", dataset="sb_loans", peer_dataset="sb_features", model=result, progress=False
    )
    assert pair.a.jobs()[-1]["kind"] == "secureboost-score", "the model file chose the job kind"
    assert list(predictions.columns) == ["id", "score"]
    assert len(predictions) == len(rows) and set(predictions["id"]) == set(rows["id"])
    assert ((predictions["score"] > 0) & (predictions["score"] < 1)).all()

    joined = predictions.merge(bank, on="id")
    fitted = auc(joined["y"].to_numpy(), joined["score"].to_numpy())
    truth = auc(joined["y"].to_numpy(), logit.loc[joined["id"]].to_numpy())
    assert fitted > 0.6 and fitted > truth - 0.15, (fitted, truth)
    # Independent of the labels' noise: the scores rank the rows as the true logit does.
    spearman = joined["score"].rank().corr(pd.Series(logit.loc[joined["id"]].to_numpy()).rank())
    assert spearman > 0.6, spearman

    # The same model on the same rows (here by its path): the same scores.
    again = pair.a.score(
        peer="partner", dataset="sb_loans", peer_dataset="sb_features", model=result.model, progress=False
    )
    merged = predictions.merge(again, on="id", suffixes=("", "_again"))
    assert len(merged) == len(predictions)
    assert (merged["score"] == merged["score_again"]).all()


def test_unknown_parameter_is_invalid(pair, sb_datasets):
    with pytest.raises(consort.InvalidArgument, match="treez"):
        pair.a.train(
            peer="partner", dataset="sb_loans", peer_dataset="sb_features", label="y", model="secureboost", treez=3
        )


def test_other_models_parameters_are_invalid(pair, sb_datasets):
    train = dict(peer="partner", dataset="sb_loans", peer_dataset="sb_features", label="y", progress=False)
    epochs = r'`epochs` is a parameter of model="lr", not of model="secureboost"'
    with pytest.raises(consort.InvalidArgument, match=epochs):
        pair.a.train(**train, model="secureboost", epochs=3)
    with pytest.raises(consort.InvalidArgument, match="SecureBoost takes `reg_lambda`, the engine's `lambda`"):
        pair.a.train(**train, model="secureboost", l2=0.1)
    with pytest.raises(consort.InvalidArgument, match="logistic regression takes `split_seed`"):
        pair.a.train(**train, seed=1)
    trees = r'`trees` is a parameter of model="secureboost", not of model="lr"'
    with pytest.raises(consort.InvalidArgument, match=trees):
        pair.a.train(**train, trees=3)
    with pytest.raises(consort.InvalidArgument, match="reg_lambda"):
        pair.a.train(**train, reg_lambda=1.0)
    with pytest.raises(consort.InvalidArgument, match="pass one"):
        pair.a.train(**train, model="secureboost", reg_lambda=1.0, **{"lambda": 2.0})
    with pytest.raises(consort.InvalidArgument, match="unknown model"):
        pair.a.train(**train, model="xgboost")


def test_out_of_bounds_value_is_invalid(pair, sb_datasets):
    before = len(pair.a.jobs())
    with pytest.raises(consort.InvalidArgument, match="train parameters"):
        pair.a.train(
            peer="partner", dataset="sb_loans", peer_dataset="sb_features", label="y", model="secureboost",
            max_bins=1, progress=False,
        )
    assert len(pair.a.jobs()) == before, "refused before a job was submitted"


def test_grant_without_secureboost_is_refused(pair, sb_datasets):
    _, partner, _ = sb_datasets
    pair.b.add_dataset("sb_lr_only", partner, key="id", grant="bank:train,score")
    with pytest.raises(consort.JobRefused) as err:
        pair.a.train(
            peer="partner", dataset="sb_loans", peer_dataset="sb_lr_only", label="y", model="secureboost",
            trees=1, progress=False,
        )
    assert pair.b.job(err.value.job_id)["state"] == "refused"
    assert str(err.value) == (
        "peer 'partner' refused the job: dataset 'sb_lr_only' grants peer 'bank' only train, score jobs, "
        "not secureboost"
    )


def test_hidden_partitions_train_the_same_trees(pair, sb_datasets, trained):
    # The privacy-enhanced mode (the partner never learns the bank's partitions) with the same
    # data, seed and hyper-parameters gives the same trees: the same holdout losses and AUC.
    _, partner, _ = sb_datasets
    pair.b.add_dataset("sb_features_hidden", partner, key="id", grant="bank:secureboost")
    result = pair.a.train(
        peer="partner", dataset="sb_loans", peer_dataset="sb_features_hidden", label="y", model="secureboost",
        trees=TREES, max_depth=3, learning_rate=0.5, reg_lambda=1.0, holdout=0.25, tolerance=0.0, seed=5,
        hide_partitions=True, progress=False,
    )
    standard, _ = trained
    assert result.report["hide_partitions"] is True and standard.report["hide_partitions"] is False
    assert result.report["holdout_loss"] == standard.report["holdout_loss"]
    assert result.auc == standard.auc
    with pytest.raises(consort.InvalidArgument, match="ot histograms"):
        pair.a.train(
            peer="partner", dataset="sb_loans", peer_dataset="sb_features_hidden", label="y", model="secureboost",
            histograms="he", hide_partitions=True, progress=False,
        )
