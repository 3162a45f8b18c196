"""consort.intersect (both parties in one process) against a plaintext pandas merge."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import consort

PROTOCOLS = ["ecdh", "rr22"]


def check_against_merge(left, right, key, got_left, got_right):
    """The aligned outputs hold exactly the rows of the plaintext inner join, row i the same
    entity on both sides, every column with its values and type."""
    keys = [key] if isinstance(key, str) else key
    merged = left.merge(right, on=keys, how="inner", suffixes=("_l", "_r"))
    assert len(got_left) == len(got_right) == len(merged)
    pd.testing.assert_frame_equal(got_left[keys], got_right[keys])
    assert list(got_left.columns) == list(left.columns)
    assert list(got_right.columns) == list(right.columns)
    expected_left = left.set_index(keys).loc[pd.MultiIndex.from_frame(got_left[keys]) if len(keys) > 1 else got_left[keys[0]]]
    pd.testing.assert_frame_equal(
        got_left.set_index(keys), expected_left, check_names=False
    )
    assert sorted(map(tuple, got_left[keys].to_numpy())) == sorted(map(tuple, merged[keys].to_numpy()))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_matches_plaintext_merge_unequal_sizes(psi_frames, protocol):
    bank, partner = psi_frames
    got_bank, got_partner = consort.intersect(bank, partner, key="id", protocol=protocol)
    assert len(got_bank) == 200
    check_against_merge(bank, partner, "id", got_bank, got_partner)
    assert got_bank["balance"].dtype == bank["balance"].dtype
    assert got_bank["segment"].dtype == bank["segment"].dtype


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_disjoint_sets_give_empty_aligned_frames(protocol):
    left = pd.DataFrame({"id": ["a", "b", "c"], "x": [1, 2, 3]})
    right = pd.DataFrame({"id": ["d", "e"], "y": [0.5, 0.25]})
    got_l, got_r = consort.intersect(left, right, key="id", protocol=protocol)
    assert len(got_l) == len(got_r) == 0
    assert list(got_l.columns) == ["id", "x"] and list(got_r.columns) == ["id", "y"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_one_item_each(protocol):
    got_l, got_r = consort.intersect(
        pd.DataFrame({"id": ["only"], "x": [42]}), pd.DataFrame({"id": ["only"], "y": ["z"]}), key="id", protocol=protocol
    )
    assert got_l.to_dict("list") == {"id": ["only"], "x": [42]}
    assert got_r.to_dict("list") == {"id": ["only"], "y": ["z"]}


def test_all_equal_sets():
    frame = pd.DataFrame({"id": [f"k{i}" for i in range(50)], "v": range(50)})
    got_l, got_r = consort.intersect(frame, frame.sample(frac=1, random_state=3), key="id")
    assert len(got_l) == 50
    pd.testing.assert_series_equal(got_l["id"], got_r["id"])
    assert (got_l.set_index("id")["v"] == got_r.set_index("id")["v"]).all()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_empty_side(protocol):
    """An empty dataset (header only) intersects to nothing; the other side's rows stay private."""
    left = pd.DataFrame({"id": pd.Series([], dtype=str), "x": pd.Series([], dtype=int)})
    right = pd.DataFrame({"id": ["a", "b"], "y": [1, 2]})
    got_l, got_r = consort.intersect(left, right, key="id", protocol=protocol)
    assert len(got_l) == len(got_r) == 0


def test_duplicate_keys_are_refused_naming_the_row_not_the_value():
    left = pd.DataFrame({"id": ["u1", "SECRET-DUP", "u3", "SECRET-DUP"], "x": [1, 2, 3, 4]})
    right = pd.DataFrame({"id": ["u1", "u3"], "y": [1, 2]})
    with pytest.raises(consort.DatasetError) as err:
        consort.intersect(left, right, key="id")
    message = str(err.value)
    assert "SECRET-DUP" not in message
    assert "duplicate key" in message
    # The second SECRET-DUP is row 3 (CSV line 5, after the header); its first on line 3.
    assert "left, row 3 (CSV line 5)" in message, message
    assert "first seen on line 3" in message


def test_duplicates_kept_once_with_dedup():
    left = pd.DataFrame({"id": ["u1", "u2", "u1"], "x": [1, 2, 3]})
    right = pd.DataFrame({"id": ["u1"], "y": [9]})
    got_l, got_r = consort.intersect(left, right, key="id", dedup=True)
    assert got_l.to_dict("list") == {"id": ["u1"], "x": [1]}, "the first row of each key is kept"


def test_missing_key_is_an_error_naming_row_and_column():
    left = pd.DataFrame({"id": ["u1", None, "u3"], "x": [1, 2, 3]})
    right = pd.DataFrame({"id": ["u1"], "y": [1]})
    with pytest.raises(consort.DatasetError) as err:
        consort.intersect(left, right, key="id")
    assert "left, row 1 (CSV line 3)" in str(err.value)
    assert "'id'" in str(err.value)


def test_keys_are_trimmed_and_optionally_case_folded():
    left = pd.DataFrame({"email": [" Ann@X.org", "bob@y.org "], "x": [1, 2]})
    right = pd.DataFrame({"email": ["ann@x.org", "bob@y.org"], "y": [3, 4]})
    got_l, _ = consort.intersect(left, right, key="email")
    assert list(got_l["x"]) == [2]
    got_l, got_r = consort.intersect(left, right, key="email", case_fold=True)
    assert sorted(got_l["x"]) == [1, 2]
    assert got_l["email"].tolist() != got_r["email"].tolist(), "each side keeps its own spelling"


def test_composite_key_and_leading_zeros():
    left = pd.DataFrame({"bank": ["007", "007", "010"], "acct": ["1", "2", "1"], "v": [1.5, 2.5, 3.5]})
    right = pd.DataFrame({"bank": ["007", "7", "010"], "acct": ["2", "1", "1"], "w": [True, False, True]})
    got_l, got_r = consort.intersect(left, right, key=["bank", "acct"])
    check_against_merge(left, right, ["bank", "acct"], got_l, got_r)
    assert len(got_l) == 2, "'7' is not '007': keys compare as text"


def test_arrow_tables_in_and_out():
    left = pa.table({"id": ["a", "b", "c"], "x": [1, 2, 3]})
    right = pa.table({"id": ["c", "a"], "y": [3.0, 1.0]})
    got_l, got_r = consort.intersect(left, right, key="id")
    assert isinstance(got_l, pa.Table) and isinstance(got_r, pa.Table)
    assert got_l.column("id").to_pylist() == got_r.column("id").to_pylist()
    assert sorted(got_l.column("id").to_pylist()) == ["a", "c"]


def test_bad_arguments():
    frame = pd.DataFrame({"id": ["a"]})
    with pytest.raises(consort.InvalidArgument, match="unknown PSI protocol|unknown .*protocol"):
        consort.intersect(frame, frame, key="id", protocol="nope")
    with pytest.raises(consort.InvalidArgument, match="no key column 'email'"):
        consort.intersect(frame, frame, key="email")
    with pytest.raises(TypeError):
        consort.intersect([1, 2], frame, key="id")


def test_larger_random_sets_match_merge():
    rng = np.random.default_rng(5)
    left = pd.DataFrame({"id": rng.choice(200_000, 20_000, replace=False).astype(str)})
    right = pd.DataFrame({"id": rng.choice(200_000, 30_000, replace=False).astype(str), "p": rng.random(30_000)})
    got_l, got_r = consort.intersect(left, right, key="id", protocol="rr22")
    check_against_merge(left, right, "id", got_l, got_r)
