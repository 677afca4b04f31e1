"""Page-level interaction logs: read Parquet/CSV, validate, encode into numpy columns.

A log has one row per event: ``user_id, request_id, item_id, action, ts`` and optionally ``position``
(rank of the item on the page). ``action`` is ``expose``, ``click`` or ``order`` (or the int codes 0/1/2).
A page is one request of one user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

#: Action names by code; a stronger action has a larger code (order > click > expose).
ACTIONS: tuple[str, ...] = ("expose", "click", "order")
EXPOSE, CLICK, ORDER = 0, 1, 2
REQUIRED_COLUMNS: tuple[str, ...] = ("user_id", "request_id", "item_id", "action", "ts")

_PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")
_TS_UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def action_codes(names: Sequence[str] | str) -> np.ndarray:
    """int8 codes of action names, e.g. ``("order", "click") -> [2, 1]``; unknown names raise."""
    if isinstance(names, str):
        names = (names,)
    bad = [n for n in names if n not in ACTIONS]
    if bad:
        raise ValueError(f"unknown action name(s) {bad}; known actions: {list(ACTIONS)}")
    return np.array([ACTIONS.index(n) for n in names], dtype=np.int8)


def _single(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _check_no_nulls(table: pa.Table, name: str) -> None:
    col = table.column(name)
    if col.null_count:
        first = int(pc.index(pc.is_null(_single(col)), True).as_py())
        raise ValueError(f"log column {name!r} has {col.null_count} null value(s) (first at row {first})")


def _encode_ids(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Factorise raw ids (int or str) into int64 codes + the distinct raw values (hash-based, no sort)."""
    enc = _single(col).dictionary_encode()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    values = enc.dictionary.to_numpy(zero_copy_only=False)
    return codes, values


def _encode_actions(col: pa.ChunkedArray) -> np.ndarray:
    arr = _single(col)
    if isinstance(arr.type, pa.DictionaryType):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_integer(arr.type):
        codes = arr.to_numpy(zero_copy_only=False)
        bad = (codes < 0) | (codes > ORDER)
        if bad.any():
            raise ValueError(
                f"log column 'action' has unknown action code(s) {np.unique(codes[bad])[:5].tolist()}; "
                f"integer codes must be 0 (expose), 1 (click) or 2 (order)"
            )
        return codes.astype(np.int8)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise TypeError(f"log column 'action' must hold strings {list(ACTIONS)} or int codes, got {arr.type}")
    idx = pc.index_in(arr, value_set=pa.array(ACTIONS))
    if idx.null_count:
        unknown = pc.unique(arr.filter(pc.is_null(idx)))
        raise ValueError(
            f"log column 'action' has {len(unknown)} unknown action value(s) {unknown[:5].to_pylist()}; "
            f"known actions: {list(ACTIONS)}"
        )
    return idx.to_numpy(zero_copy_only=False).astype(np.int8)


def _encode_ts(col: pa.ChunkedArray) -> np.ndarray:
    """Timestamps as float64 seconds (exact for integer epoch seconds)."""
    arr = _single(col)
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return arr.to_numpy(zero_copy_only=False).astype(np.float64)
    if pa.types.is_timestamp(t):
        return arr.cast(pa.int64()).to_numpy().astype(np.float64) * _TS_UNIT_SECONDS[t.unit]
    if pa.types.is_date32(t):
        return arr.cast(pa.int32()).to_numpy().astype(np.float64) * 86400.0
    if pa.types.is_date64(t):
        return arr.cast(pa.int64()).to_numpy().astype(np.float64) * 1e-3
    raise TypeError(f"log column 'ts' must be numeric (seconds), a timestamp or a date, got {t}")


@dataclass(frozen=True, eq=False)
class InteractionLog:
    """A validated log as numpy columns (one entry per row).

    Attributes:
        user: int64 codes into ``user_ids``.
        request: int64 codes into ``request_ids``. A page is the pair (user, request).
        item: the raw item ids (Arrow array); mapped to dense indices by an :class:`ItemCatalog`.
        action: int8, 0 = expose, 1 = click, 2 = order.
        ts: float64 seconds.
        position: int64 rank on the page. Without a ``position`` column it is the row order within the
            request; null positions sort after every known one.
        user_ids, request_ids: the distinct raw ids.
        has_position: whether the source had a ``position`` column.
    """

    user: np.ndarray
    request: np.ndarray
    item: pa.Array
    action: np.ndarray
    ts: np.ndarray
    position: np.ndarray
    user_ids: np.ndarray
    request_ids: np.ndarray
    has_position: bool

    def __len__(self) -> int:
        return len(self.user)

    def __repr__(self) -> str:
        counts = np.bincount(self.action, minlength=3)
        return (f"InteractionLog({len(self)} rows, {len(self.user_ids)} users, {len(self.request_ids)} requests; "
                + ", ".join(f"{a}={c}" for a, c in zip(ACTIONS, counts)) + ")")

    @classmethod
    def from_table(cls, table: pa.Table) -> InteractionLog:
        """Validate and encode an Arrow table with the log columns (see the module docstring)."""
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"log is missing column(s) {missing}; present columns: {table.column_names}")
        for name in REQUIRED_COLUMNS:
            _check_no_nulls(table, name)
        user, user_ids = _encode_ids(table.column("user_id"))
        request, request_ids = _encode_ids(table.column("request_id"))
        item = _single(table.column("item_id"))
        if isinstance(item.type, pa.DictionaryType):
            item = item.cast(item.type.value_type)
        if not (pa.types.is_integer(item.type) or pa.types.is_string(item.type)
                or pa.types.is_large_string(item.type)):
            raise TypeError(f"log column 'item_id' must hold integers or strings, got {item.type}")
        action = _encode_actions(table.column("action"))
        ts = _encode_ts(table.column("ts"))
        has_position = "position" in table.column_names
        if has_position:
            pos_col = _single(table.column("position"))
            if not pa.types.is_integer(pos_col.type):
                raise TypeError(f"log column 'position' must hold integers, got {pos_col.type}")
            position = pos_col.cast(pa.int64()).fill_null(np.iinfo(np.int64).max).to_numpy()
        else:
            # Row order is the position: the row index is monotone within every request.
            position = np.arange(len(table), dtype=np.int64)
        return cls(user, request, item, action, ts, np.ascontiguousarray(position, dtype=np.int64),
                   user_ids, request_ids, has_position)


def _read_one(path: Path, fmt: str | None) -> pa.Table:
    name = path.name.lower()
    if fmt is None:
        if name.endswith(_PARQUET_SUFFIXES):
            fmt = "parquet"
        elif name.endswith(_CSV_SUFFIXES):
            fmt = "csv"
        else:
            raise ValueError(f"cannot tell the format of {path} from its suffix; pass format='parquet' or 'csv'")
    if fmt == "parquet":
        return pq.read_table(path)
    if fmt == "csv":
        return pacsv.read_csv(path)
    raise ValueError(f"unknown log format {fmt!r}; use 'parquet' or 'csv'")


def read_log_table(path: str | Path | Sequence[str | Path], *, format: str | None = None) -> pa.Table:
    """The raw Arrow table of one log file, a directory of them, or a list of files (concatenated)."""
    if isinstance(path, (str, Path)):
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir()
                           if p.name.lower().endswith(_PARQUET_SUFFIXES + _CSV_SUFFIXES))
            if not files:
                raise FileNotFoundError(f"no .parquet or .csv log files in {path}")
        elif path.exists():
            files = [path]
        else:
            raise FileNotFoundError(f"log file {path} does not exist")
    else:
        files = [Path(p) for p in path]
        if not files:
            raise ValueError("read_logs: empty list of files")
    tables = [_read_one(f, format) for f in files]
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def read_logs(path: str | Path | Sequence[str | Path], *, format: str | None = None) -> InteractionLog:
    """Read and validate a page log from Parquet or CSV.

    Args:
        path: a file, a directory (every ``*.parquet``/``*.csv`` file in it, sorted by name) or a list of files.
        format: ``"parquet"`` or ``"csv"``; inferred from the suffix when omitted.

    Raises:
        ValueError: missing columns (named, with the columns present), nulls, unknown action values.
    """
    return InteractionLog.from_table(read_log_table(path, format=format))
