"""LC-Rec JSON datasets (``X.inter.json`` + ``X.item.json``) with the leave-one-out split.

``X.inter.json`` = ``{user_id: [item_id, ...]}`` (oldest first); ``X.item.json`` = ``{item_id: {title,
description, brand, categories}}``. There are no pages, so a "page" is the next ``page_size`` items of the
sequence, all treated as clicks (positives). For a user with sequence ``s`` of length ``n``:

* test: history ``s[:n-1]``, target ``[s[n-1]]``;
* validation: history ``s[:n-2]``, target ``[s[n-2]]``;
* train: for every position ``1 <= i <= n-3``: history ``s[:i]``, target ``s[i:min(i+page_size, n-2)]``,
  so no training target reaches the validation or test item.

Histories keep the most recent ``max_history`` items. ``page_size=1`` gives LC-Rec's point-wise samples.
Samples with an empty history (sequences shorter than 2 or 3) are skipped and counted.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from .catalog import ItemCatalog, UnknownItemError, _examples
from .logs import CLICK
from .ragged import Ragged, readonly
from .samples import DEFAULT_MAX_HISTORY, NO_HISTORY, BuildReport, PageSamples, Skipped, _check_max_history
from .splits import Splits

TEXT_FIELDS: tuple[str, ...] = ("title", "description", "brand", "categories")


def _find_name(directory: Path) -> str:
    names = sorted(p.name[: -len(".inter.json")] for p in directory.glob("*.inter.json"))
    if len(names) != 1:
        raise FileNotFoundError(f"expected exactly one *.inter.json in {directory}, found {names}; pass name=")
    return names[0]


def load_lcrec_catalog(path: str | Path) -> ItemCatalog:
    """An :class:`ItemCatalog` from ``X.item.json``: ids are the JSON keys (strings) in file order, text
    fields ``title, description, brand, categories`` (missing ones become "")."""
    with open(path, encoding="utf-8") as f:
        items = json.load(f)
    ids = np.array(list(items.keys()), dtype=str)
    extra = sorted({k for v in items.values() for k in v} - set(TEXT_FIELDS))
    text = {name: np.array([_text(v.get(name, "")) for v in items.values()], dtype=object)
            for name in (*TEXT_FIELDS, *extra)}
    return ItemCatalog(ids, text)


def _text(v: object) -> str:
    return ", ".join(map(str, v)) if isinstance(v, list) else str(v)


def load_lcrec(
    directory: str | Path,
    name: str | None = None,
    *,
    page_size: int = 1,
    max_history: int | None = DEFAULT_MAX_HISTORY,
    unknown_items: Literal["raise", "skip"] = "raise",
    progress: bool = False,
) -> tuple[ItemCatalog, Splits]:
    """Load ``directory/name.{inter,item}.json`` as a catalogue and leave-one-out splits.

    Args:
        name: dataset prefix (e.g. ``"Scientific"``); found automatically when the directory has one.
        page_size: training target length (the next ``page_size`` items); validation/test targets are
            always the single held-out item.
        max_history: history cap (``DEFAULT_MAX_HISTORY``; LC-Rec used 20; ``None`` = all earlier items).
        unknown_items: ``"raise"`` on sequence items absent from ``X.item.json``, or ``"skip"`` (drop them
            from the sequences, counted in ``stats.build``).

    Returns:
        ``(catalog, Splits(train, valid, test))``; ``Sample.request`` is the target's position in the
        user's sequence, ``ts`` is NaN.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    _check_max_history(max_history)
    if unknown_items not in ("raise", "skip"):
        raise ValueError(f"unknown_items must be 'raise' or 'skip', got {unknown_items!r}")
    directory = Path(directory)
    name = name or _find_name(directory)
    inter_path, item_path = directory / f"{name}.inter.json", directory / f"{name}.item.json"
    for p in (inter_path, item_path):
        if not p.exists():
            raise FileNotFoundError(f"LC-Rec file {p} does not exist")

    with tqdm(total=3, desc=f"LC-Rec {name}", disable=not progress, leave=False) as bar:
        catalog = load_lcrec_catalog(item_path)
        with open(inter_path, encoding="utf-8") as f:
            inter: dict[str, list] = json.load(f)
        bar.update()

        user_ids = np.array(list(inter.keys()), dtype=str)
        lengths = np.fromiter((len(s) for s in inter.values()), dtype=np.int64, count=len(inter))
        raw = [x for s in inter.values() for x in s]
        items = catalog.index(raw, missing="ignore") if raw else np.zeros(0, dtype=np.int64)
        report = BuildReport(rows=len(raw), unknown_item_policy=unknown_items)
        absent = items < 0
        if absent.any():
            absent_raw = [raw[i] for i in np.flatnonzero(absent)]
            n_distinct = len(set(map(str, absent_raw)))
            examples = tuple(_examples(np.array(absent_raw, dtype=str)))
            if unknown_items == "raise":
                raise UnknownItemError(
                    f"{n_distinct} item id(s) in {inter_path.name} ({int(absent.sum())} entries) are not in "
                    f"{item_path.name} ({len(catalog)} items), e.g. {list(examples)}; pass unknown_items='skip' "
                    f"to drop them (counted in the stats)"
                )
            user_of = np.repeat(np.arange(len(lengths)), lengths)
            lengths = np.bincount(user_of[~absent], minlength=len(lengths)).astype(np.int64)
            items = items[~absent]
            report = replace(report, rows_skipped_unknown_item=int(absent.sum()), unknown_items=n_distinct,
                             unknown_item_examples=examples)
        splits = _leave_one_out(items, lengths, user_ids, len(catalog), page_size, max_history, report)
        bar.update()
    return catalog, splits


def _leave_one_out(items: np.ndarray, lengths: np.ndarray, user_ids: np.ndarray, num_items: int, page_size: int,
                   max_history: int | None, report: BuildReport) -> Splits:
    """Every sample is a pair of slices of the concatenated sequences ``items`` (no copies)."""
    pool = readonly(np.ascontiguousarray(items, dtype=np.int64))
    actions = readonly(np.full(len(pool), CLICK, dtype=np.int8))
    seq_start = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=seq_start[1:])
    users = np.arange(len(lengths), dtype=np.int64)

    def make(u: np.ndarray, t0: np.ndarray, t1: np.ndarray, no_history: np.ndarray) -> PageSamples:
        h0 = seq_start[u] if max_history is None else np.maximum(seq_start[u], t0 - max_history)
        target = Ragged(pool, t0, t1)
        n = len(no_history)
        return PageSamples(
            user=u, request=t0 - seq_start[u], ts=np.full(len(u), np.nan), history=Ragged(pool, h0, t0),
            target=target, target_actions=Ragged(actions, t0, t1), positives=target, user_ids=user_ids,
            request_ids=None, num_items=num_items, max_history=max_history,
            skipped=Skipped(no_history, np.zeros(n, dtype=np.int64), np.full(n, np.nan),
                            np.full(n, NO_HISTORY, dtype=np.int8)),
            report=report,
        )

    def held_out(back: int) -> PageSamples:
        # Target = the item `back` places from the end; a user with exactly `back` items has no history for it.
        u = users[lengths > back]
        t = seq_start[u] + lengths[u] - back
        return make(u, t, t + 1, users[lengths == back])

    # Training positions i = 1 .. n-3 of every user; targets stop before the validation item.
    n_train = np.maximum(lengths - 3, 0)
    u = np.repeat(users, n_train)
    first = np.zeros(len(n_train), dtype=np.int64)
    np.cumsum(n_train[:-1], out=first[1:])
    t0 = seq_start[u] + np.arange(int(n_train.sum()), dtype=np.int64) - first[u] + 1
    t1 = np.minimum(t0 + page_size, seq_start[u] + lengths[u] - 2)
    return Splits(make(u, t0, t1, np.zeros(0, dtype=np.int64)), held_out(2), held_out(1))
