"""One entry point for the CLI: a data path -> (item catalogue, train/valid/test page samples)."""

from __future__ import annotations

from pathlib import Path

from .catalog import ITEMS_FILE, ItemCatalog
from .lcrec import load_lcrec
from .logs import read_logs
from .samples import DEFAULT_MAX_HISTORY, build_page_samples
from .splits import Splits, time_split
from .synthetic import LOGS_FILE


def load_splits(path: str | Path, *, max_history: int = DEFAULT_MAX_HISTORY, page_size: int = 1, test_days: int = 1,
                valid_days: int = 0, progress: bool = False) -> tuple[ItemCatalog, Splits]:
    """Read a dataset directory.

    * Page logs: ``logs.parquet`` (or CSV files) next to ``items.parquet`` — as ``genrec demo`` and the synthetic
      generator write them — split by time (the last ``test_days`` days are the test set).
    * LC-Rec JSON: ``X.inter.json`` + ``X.item.json`` — leave-one-out, pages of ``page_size`` items.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset directory {path} does not exist")
    if any(path.glob("*.inter.json")):
        return load_lcrec(path, page_size=page_size, max_history=max_history, progress=progress)
    if not (path / ITEMS_FILE).exists():
        raise FileNotFoundError(f"{path} holds neither LC-Rec JSON (X.inter.json) nor a page log with {ITEMS_FILE}")
    catalog = ItemCatalog.load(path)
    logs = path / LOGS_FILE if (path / LOGS_FILE).exists() else sorted(path.glob("*.csv"))
    samples = build_page_samples(read_logs(logs), catalog, max_history=max_history, progress=progress)
    return catalog, time_split(samples, test_days=test_days, valid_days=valid_days)
