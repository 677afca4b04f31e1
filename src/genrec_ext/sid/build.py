"""`genrec sid build`: item catalogue -> embeddings -> RQ K-means -> unique SIDs, saved with a report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data import ItemCatalog, load_lcrec_catalog
from .embed import DEFAULT_TEXT_FIELDS, embed_texts, item_texts, load_npy_embeddings, check_finite
from .rqkmeans import RQKMeansConfig, train_rq_kmeans
from .table import SIDTable, build_sid_table


def load_catalog(path: str | Path) -> ItemCatalog:
    """An item catalogue from an LC-Rec ``X.item.json``, a dataset directory (``items.parquet`` as
    `ItemCatalog.save` and the synthetic generator write, or LC-Rec JSON: the directory `genrec eval --data`
    takes), or a Parquet/CSV file with an ``item_id`` column."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"item catalogue {path} does not exist")
    if path.is_dir():
        lcrec = sorted(path.glob("*.item.json"))
        if not (path / "items.parquet").exists() and lcrec:
            return load_lcrec_catalog(lcrec[0])
        return ItemCatalog.load(path)
    if path.suffix == ".json":
        return load_lcrec_catalog(path)
    if path.suffix in (".parquet", ".csv"):
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        table = pq.read_table(path) if path.suffix == ".parquet" else pcsv.read_csv(path)
        return ItemCatalog.from_table(table)
    raise ValueError(f"cannot read an item catalogue from {path}: expected X.item.json, a directory with "
                     "items.parquet, or a .parquet/.csv file with an item_id column")


def item_embeddings(catalog: ItemCatalog, *, embeddings: str | Path | None = None,
                    text_fields: Sequence[str] | None = None, progress: bool = True) -> np.ndarray:
    """The vectors to quantise: a ``.npy`` file if given, else MiniLM on ``text_fields`` if given, else the
    catalogue's own embeddings, else MiniLM on the default text fields."""
    ids = list(catalog.ids)
    if embeddings is not None:
        return load_npy_embeddings(embeddings, ids)
    if text_fields is None and catalog.embeddings is not None:
        return check_finite(catalog.embeddings, ids)
    return embed_texts(item_texts(catalog, text_fields or DEFAULT_TEXT_FIELDS), ids, progress=progress)


def build_sids(catalog: ItemCatalog, vectors: np.ndarray, config: RQKMeansConfig, out: str | Path | None = None,
               *, collisions: str = "reassign", progress: bool = True) -> SIDTable:
    """Train codebooks on ``vectors``, give every catalogue item a unique SID, and save to ``out``."""
    codebooks = train_rq_kmeans(vectors, config, progress=progress)
    table = build_sid_table(vectors, list(catalog.ids), codebooks, collisions=collisions)
    if out is not None:
        table.save(out)
    return table
