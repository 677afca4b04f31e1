"""ItemCatalog: raw item ids (int or str) <-> dense indices 0..I-1, plus optional text and embeddings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ITEMS_FILE = "items.parquet"
EMBEDDINGS_FILE = "item_embeddings.npy"


def _as_id_array(values: Any, what: str) -> pa.Array:
    """Raw ids as one Arrow array of int64 or string (the two id kinds we accept)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        arr = np.asarray(values)
        if arr.dtype == object:  # mixed Python objects: let Arrow infer (str or int)
            values = pa.array(arr.tolist())
        else:
            values = pa.array(arr)
    if isinstance(values.type, pa.DictionaryType):
        values = values.cast(values.type.value_type)
    t = values.type
    if pa.types.is_integer(t):
        return values.cast(pa.int64())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return values.cast(pa.string())
    raise TypeError(f"{what} must be integers or strings, got Arrow type {t}")


def _match_kind(query: pa.Array, ref: pa.Array) -> tuple[pa.Array, pa.Array]:
    # int vs str ids compare as decimal strings: LC-Rec stores ids as "12" in one file and 12 in another.
    if query.type == ref.type:
        return query, ref
    return query.cast(pa.string()), ref.cast(pa.string())


class UnknownItemError(KeyError, ValueError):
    """Item ids absent from the catalogue (a KeyError for lookups, a ValueError for bad input)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


def _examples(values: pa.Array, k: int = 5) -> list:
    return pc.unique(values).slice(0, k).to_pylist()


@dataclass(frozen=True, eq=False)
class ItemCatalog:
    """The item universe: ``ids[k]`` is the raw id of dense item index ``k``.

    Args:
        ids: unique raw ids (integers or strings), in dense-index order.
        text: optional per-item text fields (e.g. ``title``, ``brand``, ``categories``, ``description``),
            each a sequence of ``len(ids)`` strings.
        embeddings: optional float32 ``[I, D]`` item vectors (e.g. for RQ K-means semantic IDs).
    """

    ids: np.ndarray
    text: Mapping[str, np.ndarray] = field(default_factory=dict)
    embeddings: np.ndarray | None = None

    def __post_init__(self) -> None:
        arrow_ids = _as_id_array(self.ids, "ItemCatalog ids")
        if arrow_ids.null_count:
            raise ValueError(f"ItemCatalog ids contain {arrow_ids.null_count} null value(s)")
        n = len(arrow_ids)
        counts = pc.value_counts(arrow_ids)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))
        if len(dup):
            raise ValueError(
                f"ItemCatalog ids must be unique; {len(dup)} id(s) repeat, e.g. {dup.field('values')[:5].to_pylist()}"
            )
        ids = arrow_ids.to_numpy(zero_copy_only=False)
        if ids.dtype == object:
            ids = ids.astype(str)
        ids.setflags(write=False)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "_arrow_ids", arrow_ids)

        text = {}
        for name, col in dict(self.text).items():
            arr = np.asarray(col, dtype=object)
            if arr.shape != (n,):
                raise ValueError(f"ItemCatalog text field {name!r} has shape {arr.shape}, expected ({n},)")
            arr.setflags(write=False)
            text[name] = arr
        object.__setattr__(self, "text", text)

        if self.embeddings is not None:
            emb = np.ascontiguousarray(self.embeddings, dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != n:
                raise ValueError(f"ItemCatalog embeddings have shape {emb.shape}, expected ({n}, D)")
            emb.setflags(write=False)
            object.__setattr__(self, "embeddings", emb)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        emb = None if self.embeddings is None else tuple(self.embeddings.shape)
        return f"ItemCatalog({len(self)} items, ids {self.ids.dtype}, text={sorted(self.text)}, embeddings={emb})"

    def index(self, raw_ids: Any, *, missing: Literal["raise", "ignore"] = "raise") -> np.ndarray:
        """Dense int64 indices of ``raw_ids`` (hash lookup, vectorised).

        Absent ids raise :class:`UnknownItemError` (a ``KeyError``) naming a few of them, or map to -1
        with ``missing="ignore"``.
        Integer ids match string ids by their decimal form (``12`` finds ``"12"``).
        """
        query = _as_id_array(raw_ids, "item ids")
        q, ref = _match_kind(query, self._arrow_ids)
        idx = pc.index_in(q, value_set=ref)
        if idx.null_count and missing == "raise":
            absent = query.filter(pc.is_null(idx))
            raise UnknownItemError(
                f"{len(pc.unique(absent))} item id(s) are not in the catalogue ({len(self)} items), "
                f"e.g. {_examples(absent)}"
            )
        return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)

    def id_of(self, index: Any) -> np.ndarray:
        """Raw ids of dense indices (array in, array out)."""
        index = np.asarray(index, dtype=np.int64)
        bad = (index < 0) | (index >= len(self))
        if bad.any():
            raise IndexError(f"item index {int(index[bad][0])} is outside [0, {len(self)})")
        return self.ids[index]

    def text_of(self, index: int) -> dict[str, str]:
        """All text fields of one item, e.g. ``{"title": ..., "brand": ...}``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"item index {index} is outside [0, {len(self)})")
        return {name: col[index] for name, col in self.text.items()}

    def with_embeddings(self, embeddings: np.ndarray | None) -> ItemCatalog:
        """The same catalogue with new item vectors (float32 ``[I, D]``)."""
        return ItemCatalog(self.ids, self.text, embeddings)

    @classmethod
    def from_table(cls, table: pa.Table, id_column: str = "item_id",
                   text_columns: Iterable[str] | None = None) -> ItemCatalog:
        """A catalogue from an Arrow table: ``id_column`` plus string columns as text fields."""
        if id_column not in table.column_names:
            raise ValueError(f"item table has no column {id_column!r}; present columns: {table.column_names}")
        if text_columns is None:
            text_columns = [c for c in table.column_names if c != id_column
                            and pa.types.is_string(table.schema.field(c).type)]
        text = {c: np.asarray(table.column(c).to_pylist(), dtype=object) for c in text_columns}
        return cls(table.column(id_column), text)

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``items.parquet`` (ids + text) and, with embeddings, ``item_embeddings.npy``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cols = {"item_id": self._arrow_ids}  # type: ignore[attr-defined]
        cols.update({name: pa.array(col.tolist(), type=pa.string()) for name, col in self.text.items()})
        paths = [directory / ITEMS_FILE]
        pq.write_table(pa.table(cols), paths[0])
        if self.embeddings is not None:
            paths.append(directory / EMBEDDINGS_FILE)
            np.save(paths[1], self.embeddings)
        return paths

    @classmethod
    def load(cls, directory: str | Path) -> ItemCatalog:
        """Read a catalogue written by :meth:`save`."""
        directory = Path(directory)
        if not (directory / ITEMS_FILE).exists():
            raise FileNotFoundError(f"no {ITEMS_FILE} in {directory}")
        cat = cls.from_table(pq.read_table(directory / ITEMS_FILE))
        emb_path = directory / EMBEDDINGS_FILE
        return cat.with_embeddings(np.load(emb_path)) if emb_path.exists() else cat
