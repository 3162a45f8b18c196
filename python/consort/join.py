"""``consort.intersect``: both parties of a private join in this process."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa

from . import _frames, _native
from .errors import DatasetError

if TYPE_CHECKING:
    import pandas as pd

#: The column that carries each row's position through the join (never a key; never leaves the
#: process).
ROW = "__consort_row__"


def intersect(
    left: Union["pd.DataFrame", pa.Table],
    right: Union["pd.DataFrame", pa.Table],
    *,
    key: Union[str, Sequence[str]],
    protocol: str = "ecdh",
    trim: bool = True,
    case_fold: bool = False,
    dedup: bool = False,
) -> Tuple[Any, Any]:
    """Runs a private set intersection between ``left`` (the requester) and ``right`` (the
    responder) in this process, over an in-memory channel: the same protocol, key normalization
    and checks as between two nodes, without the network (and without audit evidence or ECDH
    proofs: there is no node log to record them). For notebooks and tests; between
    organisations, each runs a node (:class:`consort.Node`).

    ``key`` is a column or a list of columns (composite key), present in both. Keys are compared
    as text after normalization (``trim``, ``case_fold``). A duplicate key is an error
    (:class:`consort.DatasetError`, naming the row, never the value) unless ``dedup`` keeps the
    first row of each key; so is an empty (missing) key.

    Returns ``(left_rows, right_rows)``: each side's rows of the intersection, aligned (row ``i``
    of both is the same entity, in the order the protocol gives both parties), with a fresh
    index; pandas DataFrames for DataFrame inputs, Tables for Tables. Every column of the inputs
    is kept with its type: only the key columns (and row positions) go through the join.
    """
    keys = _frames.keys_list(key)
    tables = (_frames.to_table(left), _frames.to_table(right))
    with tempfile.TemporaryDirectory(prefix="consort-") as tmp:
        d = Path(tmp)
        files = (d / "left.csv", d / "right.csv")
        outs = (d / "left-out.csv", d / "right-out.csv")
        for table, file, side in zip(tables, files, ("left", "right")):
            _frames.write_csv(_keys_and_rows(table, keys, side), file)
        try:
            _native.intersect_files(
                str(files[0]), str(files[1]), keys, protocol, trim, case_fold, dedup, str(outs[0]), str(outs[1])
            )
        except DatasetError as e:
            message = str(e)
            for file, side in zip(files, ("left", "right")):
                message = _frames.rename_file(message, file, side)
            raise DatasetError(message) from None
        positions = [_positions(out) for out in outs]
    return tuple(_select(data, table, rows) for data, table, rows in zip((left, right), tables, positions))  # type: ignore[return-value]


def _keys_and_rows(table: pa.Table, keys: Sequence[str], side: str) -> pa.Table:
    """The key columns and each row's position: all the join needs to see."""
    missing = [k for k in keys if k not in table.column_names]
    if missing:
        from .errors import InvalidArgument

        raise InvalidArgument(f"{side}: no key column {', '.join(repr(k) for k in missing)}")
    if ROW in table.column_names:
        from .errors import InvalidArgument

        raise InvalidArgument(f"{side}: the column name {ROW!r} is reserved")
    columns = [table.column(k) for k in keys] + [pa.array(np.arange(table.num_rows, dtype=np.int64))]
    return pa.table(columns, names=[*keys, ROW])


def _positions(out: Path) -> "np.ndarray":
    if not out.exists() or out.stat().st_size == 0:
        return np.zeros(0, dtype=np.int64)
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(
        str(out),
        convert_options=pacsv.ConvertOptions(include_columns=[ROW], column_types={ROW: pa.int64()}),
    )
    return table.column(ROW).to_numpy()


def _select(data: Any, table: pa.Table, rows: "np.ndarray") -> Any:
    if isinstance(data, pa.Table):
        return table.take(pa.array(rows, type=pa.int64()))
    return data.iloc[rows].reset_index(drop=True)
