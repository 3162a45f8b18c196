"""DataFrames in and out: CSV files written and read by pyarrow, so no Python object is made per
row. pandas DataFrames and pyarrow Tables are both accepted."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Sequence, Union

import pyarrow as pa
import pyarrow.csv as pacsv

if TYPE_CHECKING:
    import pandas as pd

Frame = Union["pd.DataFrame", pa.Table]


def to_table(data: Frame) -> pa.Table:
    """A pyarrow Table of ``data`` (the pandas index is dropped: datasets are keyed by columns)."""
    if isinstance(data, pa.Table):
        return data
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - pandas is a dependency
        raise TypeError("expected a pyarrow Table (pandas is not installed)") from e
    if isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise TypeError(f"expected a pandas DataFrame or a pyarrow Table, got {type(data).__name__}")


def write_csv(table: pa.Table, path: Path) -> None:
    """Writes ``table`` as CSV with a header to ``path`` (mode 0600), atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            pacsv.write_csv(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_csv(data: Union[bytes, Path], strings: Iterable[str] = ()) -> pa.Table:
    """Parses CSV (bytes or a file); the ``strings`` columns (keys) stay text, so ids such as
    ``007`` keep their leading zeros; other columns get pyarrow's inferred types."""
    source = pa.BufferReader(data) if isinstance(data, (bytes, bytearray)) else str(data)
    if isinstance(data, (bytes, bytearray)) and not data.strip():
        return pa.table({})
    options = pacsv.ConvertOptions(column_types={c: pa.string() for c in strings}, strings_can_be_null=False)
    return pacsv.read_csv(source, convert_options=options)


def to_pandas(table: pa.Table) -> "pd.DataFrame":
    return table.to_pandas()


def keys_list(key: Union[str, Sequence[str]]) -> List[str]:
    """``key=`` as a list of column names (one name, or several for a composite key)."""
    keys = [key] if isinstance(key, str) else list(key)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        from .errors import InvalidArgument

        raise InvalidArgument("key: give a column name, or a list of column names for a composite key")
    return keys


def rename_file(message: str, path: Path, label: str) -> str:
    """A data error about the CSV written for a DataFrame, told about the DataFrame instead (the
    engine's ``FILE:LINE:``, FILE as a path or a bare name, becomes ``LABEL, row N (CSV line
    LINE):``)."""
    name = "(?:" + re.escape(str(path)) + "|" + re.escape(path.name) + ")"

    def row(m: "re.Match[str]") -> str:
        line = int(m.group(1))
        return f"{label}, row {line - 2} (CSV line {line}):" if line >= 2 else f"{label}, header:"

    replaced = re.sub(name + r":(\d+):", row, message)
    return re.sub(name, label, replaced)
