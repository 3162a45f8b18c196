"""consort.audit.verify on bundles exported from two real nodes."""

from __future__ import annotations

import json

import pytest

import consort


@pytest.fixture(scope="module")
def bundles(pair, psi_frames, tmp_path_factory):
    bank, partner = psi_frames
    pair.a.add_dataset("audited", bank, key="id", grant="partner", replace=True)
    pair.b.add_dataset("audited-b", partner, key="id", grant="bank", replace=True)
    pair.a.psi(peer="partner", dataset="audited", peer_dataset="audited-b", progress=False)
    job_id = pair.a.jobs()[-1]["job_id"]
    out = tmp_path_factory.mktemp("evidence")
    return (
        pair.audit_export(0, job_id, out / "bank.json"),
        pair.audit_export(1, job_id, out / "partner.json"),
        [pair.audit_key(0), pair.audit_key(1)],
    )


def test_both_bundles_verify_with_the_nodes_keys(bundles):
    a, b, keys = bundles
    report = consort.audit.verify([a, b], keys)
    assert report.ok and bool(report)
    assert len(report.checks) > 4 and not list(report.failures())
    assert "evidence verifies" in str(report)


def test_a_wrong_key_fails(bundles):
    a, b, keys = bundles
    report = consort.audit.verify([a, b], [keys[0], keys[0]])
    assert not report.ok
    assert list(report.failures())


def test_a_changed_bundle_fails(bundles, tmp_path):
    a, b, keys = bundles
    data = json.loads(a.read_text())
    entries = data["entries"]
    assert entries
    # Change one recorded entry: its inclusion proof no longer matches the signed tree head.
    text = json.dumps(entries[0])
    changed = text.replace('"psi"', '"train"', 1) if '"psi"' in text else text.replace("0", "1", 1)
    assert changed != text
    data["entries"][0] = json.loads(changed)
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data))
    report = consort.audit.verify([tampered, b], keys)
    assert not report.ok


def test_malformed_key_and_missing_file_raise(bundles, tmp_path):
    a, _, _ = bundles
    with pytest.raises(consort.InvalidArgument, match="keys\\[0\\]"):
        consort.audit.verify(a, "zz")
    with pytest.raises(consort.InvalidArgument, match="cannot read"):
        consort.audit.verify(tmp_path / "missing.json", [])
