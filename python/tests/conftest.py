"""Shared fixtures: data with a known intersection, and two real node processes.

The node tests need the ``consort`` binary (``consort.local.find_binary``: ``$CONSORT_BIN``,
``PATH``, or ``target/release/consort`` of the checkout): build it first with
``cargo build --release -p consort-node``. Without it they fail, saying so; they are never skipped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from consort.local import LocalPair


def ids(values) -> list:
    return [f"c{v:07d}" for v in values]


@pytest.fixture(scope="session")
def pair(tmp_path_factory):
    with LocalPair(tmp_path_factory.mktemp("nodes")) as p:
        yield p


@pytest.fixture(scope="session")
def psi_frames():
    """Bank: 600 customers, partner: 450, 200 shared; payload columns of several types."""
    rng = np.random.default_rng(7)
    bank_ids = ids(range(0, 600))
    partner_ids = ids(range(400, 850))
    bank = pd.DataFrame(
        {"id": bank_ids, "balance": rng.normal(1000, 200, 600).round(2), "segment": rng.integers(0, 5, 600)}
    )
    partner = pd.DataFrame({"id": partner_ids, "score": rng.random(450), "region": [f"r{i % 7}" for i in range(450)]})
    return bank.sample(frac=1, random_state=1).reset_index(drop=True), partner


@pytest.fixture(scope="session")
def lr_frames():
    """Vertical LR data with a logistic ground truth: the bank holds y and a0..a2, the partner
    b0..b2 for 90% of the bank's customers. Returns (bank, partner, true_logit)."""
    rng = np.random.default_rng(11)
    n = 3000
    a = rng.normal(size=(n, 3))
    b = rng.normal(size=(n, 3))
    logit = a @ np.array([1.2, -0.8, 0.5]) + b @ np.array([0.9, 0.6, -1.1]) - 0.2
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    bank = pd.DataFrame({"id": ids(range(n)), "y": y, **{f"a{i}": a[:, i].round(5) for i in range(3)}})
    keep = rng.random(n) < 0.9
    partner = pd.DataFrame({"id": ids(np.arange(n)[keep]), **{f"b{i}": b[keep, i].round(5) for i in range(3)}})
    return bank, partner, pd.Series(logit, index=bank["id"])


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Rank-based AUC (Mann–Whitney), ties averaged."""
    ranks = pd.Series(scores).rank().to_numpy()
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
