"""Data layer: interaction logs, item catalogues, page samples, splits, LC-Rec JSON and synthetic logs.

Typical use::

    from genrec_ext import data

    syn = data.generate_synthetic(data.SyntheticConfig(seed=0))          # or read_logs("logs.parquet")
    samples = data.build_page_samples(syn.log(), syn.catalog, max_history=50)
    splits = data.time_split(samples, test_days=1)                     # last day = test
    print(splits.summary()); s = splits.test[0]                        # Sample(user, request, history, ...)

    catalog, splits = data.load_lcrec("../shared/data/amazon18-scientific", page_size=1)
"""

from __future__ import annotations

from .catalog import ItemCatalog, UnknownItemError
from .lcrec import load_lcrec, load_lcrec_catalog
from .logs import (
    ACTIONS,
    CLICK,
    EXPOSE,
    ORDER,
    REQUIRED_COLUMNS,
    InteractionLog,
    action_codes,
    read_log_table,
    read_logs,
)
from .ragged import Ragged
from .samples import (
    DEFAULT_MAX_HISTORY,
    SKIP_REASONS,
    BuildReport,
    PageSamples,
    Sample,
    SampleStats,
    Skipped,
    build_page_samples,
    user_sequences,
)
from .sources import load_splits
from .splits import Splits, time_split
from .synthetic import SyntheticConfig, SyntheticData, generate_synthetic

__all__ = [
    "DEFAULT_MAX_HISTORY",
    "ACTIONS", "CLICK", "EXPOSE", "ORDER", "REQUIRED_COLUMNS", "SKIP_REASONS",
    "BuildReport", "InteractionLog", "ItemCatalog", "PageSamples", "Ragged", "Sample", "SampleStats", "Skipped",
    "Splits", "SyntheticConfig", "SyntheticData", "UnknownItemError",
    "action_codes", "build_page_samples", "generate_synthetic", "load_lcrec", "load_lcrec_catalog", "load_splits",
    "read_log_table", "read_logs", "time_split", "user_sequences",
]
