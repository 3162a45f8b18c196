"""consort.Node against two real node processes (mutual TLS gRPC on loopback)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

import consort
from conftest import auc


@pytest.fixture(scope="module")
def psi_datasets(pair, psi_frames):
    bank, partner = psi_frames
    added_a = pair.a.add_dataset("customers", bank, key="id", grant="partner")
    added_b = pair.b.add_dataset("accounts", partner, key="id", grant="bank")
    assert (added_a["rows"], added_b["rows"]) == (600, 450)
    assert added_a["columns"] == ["id", "balance", "segment"]
    return bank, partner


def test_datasets_lists_what_was_registered(pair, psi_datasets):
    names = {d["name"]: d for d in pair.a.datasets()}
    assert names["customers"]["keys"] == ["id"]
    assert any("partner" in g for g in names["customers"]["grants"])
    file = names["customers"]["file"]
    assert file.startswith(str(pair.a.dir / "datasets"))
    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600
    assert "customers" in pair.a.info()["datasets"], "the running node reloaded its config"


@pytest.mark.parametrize("protocol", ["ecdh", "rr22"])
def test_psi_to_dataframe_matches_merge_and_the_peer(pair, psi_datasets, protocol):
    bank, partner = psi_datasets
    updates = []
    rows = pair.a.psi(
        peer="partner", dataset="customers", peer_dataset="accounts", protocol=protocol,
        progress=lambda stage, done, total: updates.append(stage),
    )
    merged = bank.merge(partner, on="id")
    assert len(rows) == len(merged) == 200
    assert sorted(rows["id"]) == sorted(merged["id"])
    expected = bank.set_index("id").loc[rows["id"]]
    np.testing.assert_allclose(rows["balance"].to_numpy(), expected["balance"].to_numpy())
    assert (rows["segment"].to_numpy() == expected["segment"].to_numpy()).all()
    # The partner's rows (sealed in its node directory) are in the same order.
    job = pair.a.jobs()[-1]
    assert job["kind"] == "psi" and job["state"] == "done" and job["protocol"] == protocol
    theirs = pair.b.read_output(pair.b.dir / job["peer_output"], key="id")
    assert theirs["id"].tolist() == rows["id"].tolist()
    assert updates, "the progress callback saw the job"


def test_psi_to_a_path_is_sealed_and_readable(pair, psi_datasets, tmp_path):
    out = tmp_path / "shared.csv"
    path = pair.a.psi(peer="partner", dataset="customers", peer_dataset="accounts", out=out, progress=False)
    assert path == out and out.exists()
    assert b"c0000400" not in out.read_bytes(), "outputs are sealed at rest"
    rows = pair.a.read_output(out, key="id")
    assert len(rows) == 200 and rows["id"].str.startswith("c").all()


def test_jobs_and_job(pair, psi_datasets):
    jobs = pair.a.jobs()
    assert jobs, "jobs lists the PSI jobs run above"
    one = pair.a.job(jobs[0]["job_id"])
    assert one["job_id"] == jobs[0]["job_id"]
    assert one["role"] == "requester" and one["peer"] == "partner"
    on_b = pair.b.job(jobs[0]["job_id"])
    assert on_b["role"] == "responder"
    with pytest.raises(consort.InvalidArgument, match="no job"):
        pair.a.job("no-such-job")


def test_refused_job_raises_with_the_nodes_message(pair, psi_datasets):
    # The partner registers a dataset without granting the bank anything.
    pair.b.add_dataset("private", pd.DataFrame({"id": ["c0000401"], "v": [1]}), key="id")
    with pytest.raises(consort.JobRefused) as err:
        pair.a.psi(peer="partner", dataset="customers", peer_dataset="private", progress=False)
    record = pair.a.job(err.value.job_id)
    # The requester records the refusal as a failure with the peer's reason; the peer as refused.
    assert record["state"] == "failed" and pair.b.job(err.value.job_id)["state"] == "refused"
    assert str(err.value) == record["error"] == err.value.status["error"]
    assert str(err.value) == "peer 'partner' refused the job: dataset 'private' has no grant for peer 'bank'"


def test_unknown_protocol_and_peer_are_invalid_arguments(pair, psi_datasets):
    with pytest.raises(consort.InvalidArgument, match="protocol"):
        pair.a.psi(peer="partner", dataset="customers", peer_dataset="accounts", protocol="rsa")
    with pytest.raises(consort.InvalidArgument, match="nobody"):
        pair.a.psi(peer="nobody", dataset="customers", peer_dataset="accounts")


def test_bad_dataframe_names_row_and_column_not_the_value(pair):
    # Registration checks every row in constant memory (duplicate keys are found by jobs).
    frame = pd.DataFrame({"id": ["k1", "VALUE-XYZ", "k3", "VALUE-\x01XYZ"], "v": [1, 2, 3, 4]})
    with pytest.raises(consort.DatasetError) as err:
        pair.a.add_dataset("dups", frame, key="id", grant="partner")
    message = str(err.value)
    assert "VALUE-" not in message
    assert "row 3 (CSV line 5)" in message and "control character" in message
    assert "dups" not in [d["name"] for d in pair.a.datasets()]
    assert not any(p.name.startswith("dups-") for p in (pair.a.dir / "datasets").iterdir()), "no file left"


def test_bad_csv_file_names_file_line_and_column(pair, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,amount\nk1,5\nk2,5,EXTRA-SECRET\n")
    with pytest.raises(consort.DatasetError) as err:
        pair.a.add_dataset("bad", path, key="id")
    message = str(err.value)
    assert message.startswith("bad.csv:3: "), message
    assert "EXTRA-SECRET" not in message


def test_no_node_raises_node_unavailable(tmp_path):
    with pytest.raises(consort.NodeUnavailable):
        consort.Node(tmp_path)


def test_train_and_score(pair, lr_frames):
    bank, partner, logit = lr_frames
    pair.a.add_dataset("loans", bank, key="id", grant="partner:train,score")
    pair.b.add_dataset("features", partner, key="id", grant="bank:train,score")
    result = pair.a.train(
        peer="partner", dataset="loans", peer_dataset="features", label="y",
        epochs=5, batch_size=256, learning_rate=0.5, l2=0.0, holdout=0.25, split_seed=3, progress=False,
    )
    assert result.model_kind == "lr" and pair.a.job(result.job_id)["kind"] == "train"
    assert result.report["features"] == 3 and result.report["peer_features"] == 3
    aligned = bank[bank["id"].isin(partner["id"])]
    truth = auc(aligned["y"].to_numpy(), logit.loc[aligned["id"]].to_numpy())
    assert result.auc is not None and result.auc > truth - 0.06, (result.auc, truth)
    assert pair.a.job(result.job_id)["report"]["auc"] == result.auc

    predictions = pair.a.score(peer="partner", dataset="loans", peer_dataset="features", model=result, progress=False)
    assert len(predictions) == len(aligned)
    assert set(predictions["id"]) == set(aligned["id"])
    assert predictions["score"].between(0, 1).all()
    joined = predictions.merge(bank, on="id")
    assert auc(joined["y"].to_numpy(), joined["score"].to_numpy()) > truth - 0.06


def test_unknown_train_parameter_is_invalid(pair, lr_frames):
    with pytest.raises(consort.InvalidArgument, match="epochz"):
        pair.a.train(peer="partner", dataset="loans", peer_dataset="features", label="y", epochz=3)


def test_registration_errors_that_are_not_about_data(pair, psi_datasets):
    frame = pd.DataFrame({"id": ["x"]})
    with pytest.raises(consort.InvalidArgument, match="already registered"):
        pair.a.add_dataset("customers", frame, key="id")
    with pytest.raises(consort.InvalidArgument, match="unknown peer 'mallory'"):
        pair.a.add_dataset("other", frame, key="id", grant="mallory")
    with pytest.raises(consort.InvalidArgument):
        pair.a.add_dataset("../escape", frame, key="id")
    assert not list(pair.a.dir.glob("escape*")) and not list(pair.a.dir.parent.glob("escape*"))
    assert not list((pair.a.dir / "datasets").glob("*escape*")), "the refused DataFrame's file is removed"


def test_replacing_a_dataframe_dataset_removes_its_old_file(pair):
    pair.a.add_dataset("replaced", pd.DataFrame({"id": ["a", "b"]}), key="id")
    first = next(d["file"] for d in pair.a.datasets() if d["name"] == "replaced")
    added = pair.a.add_dataset("replaced", pd.DataFrame({"id": ["a", "b", "c"]}), key="id", replace=True)
    second = next(d["file"] for d in pair.a.datasets() if d["name"] == "replaced")
    assert added["rows"] == 3 and first != second
    assert not os.path.exists(first) and os.path.exists(second)


def test_reveal_requester_only_gives_the_peer_nothing(pair, psi_datasets):
    rows = pair.a.psi(
        peer="partner", dataset="customers", peer_dataset="accounts", reveal="requester-only", progress=False
    )
    assert len(rows) == 200
    job = pair.a.jobs()[-1]
    assert job["reveal"] == "requester-only" and job["peer_output"] is None
    assert pair.b.job(job["job_id"])["intersection"] is None, "the partner does not learn the intersection"
