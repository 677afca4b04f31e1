"""Page-wise training samples, stored columnar (splits: :mod:`.splits`; the ragged storage: :mod:`.ragged`).

One sample per page (request) of a user:

* ``history``: the user's click/order items from strictly earlier requests (by request time), oldest
  first, capped to the most recent ``max_history``;
* ``target``: the page's items by intensity (ordered, then clicked, then exposed; ties by position);
* ``target_actions``: their action codes (2 = order, 1 = click, 0 = expose);
* ``positives`` (D+): the page's ordered and clicked items, in the same order.

Storage is ragged-columnar: each of history / target / positives is a flat int64 pool plus per-sample
``start``/``end`` int64 arrays. Targets are consecutive slices (plain CSR), while histories are slices of
each user's time-ordered click stream, so a history costs two integers instead of ``max_history`` items
and a split shares the pools of its parent instead of copying them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pyarrow.compute as pc
from tqdm.auto import tqdm

from .._config import DEFAULT_MAX_HISTORY
from .catalog import ItemCatalog, UnknownItemError, _examples
from .logs import ACTIONS, CLICK, InteractionLog, action_codes
from .ragged import Ragged, csr_offsets, gather_ranges, readonly

#: Why a page produced no sample (the order is the precedence when several apply).
SKIP_REASONS: tuple[str, ...] = ("no_history", "empty_target", "no_positive")
NO_HISTORY, EMPTY_TARGET, NO_POSITIVE = 0, 1, 2


@dataclass(frozen=True, eq=False)
class Sample:
    """One page sample. ``user``/``request`` are raw ids (LC-Rec: ``request`` = the target's position in
    the user's sequence); item arrays hold dense catalogue indices."""

    user: Any
    request: Any
    history: np.ndarray
    target: np.ndarray
    target_actions: np.ndarray
    positives: np.ndarray
    ts: float = float("nan")


@dataclass(frozen=True)
class BuildReport:
    """What happened to the input rows while samples were built (shared by every split of a build)."""

    rows: int = 0
    rows_skipped_unknown_item: int = 0
    unknown_items: int = 0
    unknown_item_examples: tuple = ()
    unknown_item_policy: str = "raise"
    duplicate_rows_merged: int = 0


@dataclass(frozen=True)
class SampleStats:
    """Counts for one sample set; ``pages = samples + skipped_*``. Row counters describe the whole build."""

    pages: int
    samples: int
    skipped_no_history: int
    skipped_empty_target: int
    skipped_no_positive: int
    users: int
    mean_history: float
    mean_target: float
    mean_positives: float
    build: BuildReport = field(default_factory=BuildReport)

    def summary(self) -> str:
        b = self.build
        lines = [
            f"{self.samples} samples from {self.pages} pages of {self.users} users; mean history "
            f"{self.mean_history:.2f}, target {self.mean_target:.2f}, positives {self.mean_positives:.2f}",
            f"skipped pages: {self.skipped_no_history} with no history yet, {self.skipped_empty_target} with an "
            f"empty target, {self.skipped_no_positive} with no positives",
        ]
        if b.rows:
            unknown = (f"{b.rows_skipped_unknown_item} rows of {b.unknown_items} unknown items skipped "
                       f"(e.g. {list(b.unknown_item_examples)})" if b.unknown_items else "no unknown items")
            lines.append(f"log: {b.rows} rows, {b.duplicate_rows_merged} repeated (request, item) rows merged "
                         f"into the strongest action, {unknown} [unknown_items={b.unknown_item_policy!r}]")
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class Skipped:
    """Pages that gave no sample, kept so that every split can report its own skips."""

    user: np.ndarray
    request: np.ndarray
    ts: np.ndarray
    reason: np.ndarray  # int8 index into SKIP_REASONS

    @classmethod
    def empty(cls) -> Skipped:
        e = np.zeros(0, dtype=np.int64)
        return cls(e, e, np.zeros(0), np.zeros(0, dtype=np.int8))

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: Any) -> Skipped:
        return Skipped(self.user[index], self.request[index], self.ts[index], self.reason[index])


@dataclass(frozen=True, eq=False)
class PageSamples:
    """Columnar page samples (see the module docstring); ``samples[i]`` is a :class:`Sample`.

    Attributes:
        user: int64 ``[S]`` indices into ``user_ids``.
        request: int64 ``[S]`` indices into ``request_ids`` (LC-Rec: the target's position in the sequence).
        ts: float64 ``[S]`` request time in seconds (NaN where the source has none, as LC-Rec).
        history, target, positives: :class:`Ragged` dense item indices (int64).
        target_actions: :class:`Ragged` int8 action codes aligned with ``target``.
        num_items: size of the item catalogue the indices refer to.
        max_history: the history cap used (``None`` = uncapped).
        skipped: the pages that gave no sample and why.
        report: row-level counters of the build.
    """

    user: np.ndarray
    request: np.ndarray
    ts: np.ndarray
    history: Ragged
    target: Ragged
    target_actions: Ragged
    positives: Ragged
    user_ids: np.ndarray
    request_ids: np.ndarray | None
    num_items: int
    max_history: int | None
    skipped: Skipped = field(default_factory=Skipped.empty)
    report: BuildReport = field(default_factory=BuildReport)

    def __len__(self) -> int:
        return len(self.user)

    def item_popularity(self) -> np.ndarray:
        """Positives (clicks / orders) per item in these rows only (a split's ``Ragged`` shares its pool of
        values with the other splits): MostPop's score, the long-tail reference, the popularity scorer's."""
        return np.bincount(self.positives.to_csr()[1], minlength=self.num_items)

    def __getitem__(self, i: int) -> Sample:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample index {i} is outside [0, {n})")
        i = int(i) % n
        req = self.request[i]
        return Sample(
            user=_py(self.user_ids[self.user[i]]),
            request=int(req) if self.request_ids is None else _py(self.request_ids[req]),
            history=self.history[i],
            target=self.target[i],
            target_actions=self.target_actions[i],
            positives=self.positives[i],
            ts=float(self.ts[i]),
        )

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"PageSamples({len(self)} samples, {self.num_items} items, max_history={self.max_history})"

    def subset(self, index: Any, skipped_index: Any | None = None) -> PageSamples:
        """Samples ``index`` (ints or a bool mask), sharing the pools; ``skipped_index`` selects which skip
        records travel along (none by default)."""
        tgt = self.target.take(index)
        sk = self.skipped.take(np.zeros(0, dtype=np.int64) if skipped_index is None else skipped_index)
        return replace(
            self, user=self.user[index], request=self.request[index], ts=self.ts[index],
            history=self.history.take(index), target=tgt,
            target_actions=Ragged(self.target_actions.values, tgt.start, tgt.end),
            positives=self.positives.take(index), skipped=sk,
        )

    @property
    def stats(self) -> SampleStats:
        reasons = np.bincount(self.skipped.reason, minlength=len(SKIP_REASONS))
        users = np.unique(np.concatenate([self.user, self.skipped.user])).size

        def mean(r: Ragged) -> float:
            return float(r.lengths.mean()) if len(r) else 0.0

        return SampleStats(
            pages=len(self) + len(self.skipped), samples=len(self),
            skipped_no_history=int(reasons[NO_HISTORY]), skipped_empty_target=int(reasons[EMPTY_TARGET]),
            skipped_no_positive=int(reasons[NO_POSITIVE]), users=users,
            mean_history=mean(self.history), mean_target=mean(self.target), mean_positives=mean(self.positives),
            build=self.report,
        )


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _check_max_history(max_history: int | None) -> None:
    if max_history is not None and max_history < 1:
        raise ValueError(f"max_history must be >= 1 (or None for no cap), got {max_history}")


def _map_items(log: InteractionLog, catalog: ItemCatalog, unknown_items: str) -> tuple[np.ndarray, BuildReport]:
    if unknown_items not in ("raise", "skip"):
        raise ValueError(f"unknown_items must be 'raise' or 'skip', got {unknown_items!r}")
    item = catalog.index(log.item, missing="ignore")
    absent = item < 0
    n_absent = int(absent.sum())
    report = BuildReport(rows=len(log), unknown_item_policy=unknown_items)
    if n_absent:
        absent_ids = log.item.filter(absent)
        n_distinct = len(pc.unique(absent_ids))
        examples = tuple(_examples(absent_ids))
        if unknown_items == "raise":
            raise UnknownItemError(
                f"{n_distinct} item id(s) in the log ({n_absent} rows) are not in the catalogue "
                f"({len(catalog)} items), e.g. {list(examples)}; pass unknown_items='skip' to drop their rows "
                f"(counted in the stats)"
            )
        report = replace(report, rows_skipped_unknown_item=n_absent, unknown_items=n_distinct,
                         unknown_item_examples=examples)
    return item, report


def build_page_samples(
    log: InteractionLog,
    catalog: ItemCatalog,
    *,
    max_history: int | None = DEFAULT_MAX_HISTORY,
    target_actions: Iterable[str] = ACTIONS,
    drop_no_positive: bool = False,
    unknown_items: Literal["raise", "skip"] = "raise",
    progress: bool = False,
) -> PageSamples:
    """One sample per page of ``log``, item ids mapped through ``catalog`` (fully vectorised).

    Args:
        max_history: keep the most recent ``max_history`` history items (``None``: all).
        target_actions: page actions that enter the target (default all three, as the paper); an item's page
            action is its strongest row (order > click > expose). Positives are always ordered + clicked.
        drop_no_positive: skip (and count) pages without a click or order; they are kept by default because
            page-wise training can use them.
        unknown_items: ``"raise"`` (default) on log items absent from the catalogue, or ``"skip"`` their rows
            and count them in ``stats.build``.
        progress: show a tqdm bar over the build stages.

    Pages whose user has no click/order in any strictly earlier request are skipped and counted
    (``stats.skipped_no_history``), as are pages left with an empty target.
    """
    _check_max_history(max_history)
    target_actions = tuple(target_actions)
    if not target_actions:
        raise ValueError(f"target_actions must name at least one of {list(ACTIONS)}")
    target_codes = action_codes(target_actions)
    with tqdm(total=5, desc="page samples", disable=not progress, leave=False) as bar:
        return _build(log, catalog, max_history, target_codes, drop_no_positive, unknown_items, bar)


def _build(log: InteractionLog, catalog: ItemCatalog, max_history: int | None, target_codes: np.ndarray,
           drop_no_positive: bool, unknown_items: str, bar: tqdm) -> PageSamples:
    bar.set_postfix_str("map items")
    item, report = _map_items(log, catalog, unknown_items)
    keep = item >= 0
    row = np.flatnonzero(keep)
    it, act, ts, pos = item[row], log.action[row], log.ts[row], log.position[row]
    user, req = log.user[row], log.request[row]
    bar.update()

    bar.set_postfix_str("pages")
    # A page is a (user, request) pair; pages come out sorted by (user, request code).
    page_key = user * np.int64(max(len(log.request_ids), 1)) + req
    _, page = np.unique(page_key, return_inverse=True)
    page = page.astype(np.int64, copy=False)
    # Fold repeated (page, item) rows: strongest action, first position, first row; the history orders
    # a page's positives by their first click/order time.
    order = np.lexsort((-act, it, page))
    p_s, it_s, act_s = page[order], it[order], act[order]
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = (p_s[1:] != p_s[:-1]) | (it_s[1:] != it_s[:-1])
    g0 = np.flatnonzero(new_group)
    g_page, g_item, g_act = p_s[g0], it_s[g0], act_s[g0]
    if len(order):
        g_pos = np.minimum.reduceat(pos[order], g0)
        g_row = np.minimum.reduceat(row[order], g0)
        g_evt = np.minimum.reduceat(np.where(act_s >= CLICK, ts[order], np.inf), g0)
    else:
        g_pos = g_row = np.zeros(0, dtype=np.int64)
        g_evt = np.zeros(0)
    report = replace(report, duplicate_rows_merged=int(len(order) - len(g0)))

    p0 = np.flatnonzero(np.r_[True, p_s[1:] != p_s[:-1]]) if len(order) else np.zeros(0, dtype=np.int64)
    n_pages = len(p0)
    page_user = user[order][p0]
    page_req = req[order][p0]
    page_ts = np.minimum.reduceat(ts[order], p0) if n_pages else np.zeros(0)  # a page is shown at its first row
    bar.update()

    bar.set_postfix_str("targets")

    def by_intensity(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sel = np.flatnonzero(mask)
        o = sel[np.lexsort((g_row[sel], g_pos[sel], -g_act[sel], g_page[sel]))]
        return g_item[o], g_act[o], np.bincount(g_page[o], minlength=n_pages)

    t_items, t_acts, t_len = by_intensity(np.isin(g_act, target_codes))
    pos_items, _, pos_len = by_intensity(g_act >= CLICK)
    bar.update()

    bar.set_postfix_str("histories")
    # The user's click stream, ordered by (user, request time, page, first click time, position).
    ev = np.flatnonzero(g_act >= CLICK)
    ev_page = g_page[ev]
    ev_order = ev[np.lexsort((g_row[ev], g_pos[ev], g_evt[ev], ev_page, page_ts[ev_page], page_user[ev_page]))]
    hist_pool = g_item[ev_order]
    # History of a page = the user's events from pages with a strictly smaller time: one searchsorted on a
    # (user, time rank) key, so equal-time requests never see each other.
    ts_rank = np.unique(page_ts, return_inverse=True)[1].astype(np.int64, copy=False)
    n_rank = np.int64(ts_rank.max() + 1 if n_pages else 1)
    ev_key = page_user[g_page[ev_order]] * n_rank + ts_rank[g_page[ev_order]]
    h_end = np.searchsorted(ev_key, page_user * n_rank + ts_rank, side="left")
    h_user_start = np.searchsorted(ev_key, page_user * n_rank, side="left")
    h_start = h_user_start if max_history is None else np.maximum(h_user_start, h_end - max_history)
    bar.update()

    bar.set_postfix_str("samples")
    reason = np.full(n_pages, -1, dtype=np.int8)
    if drop_no_positive:
        reason[pos_len == 0] = NO_POSITIVE
    reason[t_len == 0] = EMPTY_TARGET
    reason[h_end == h_user_start] = NO_HISTORY
    ok = reason < 0
    # Samples in (user, time) order.
    sample_pages = np.flatnonzero(ok)
    sample_pages = sample_pages[np.lexsort((sample_pages, page_ts[sample_pages], page_user[sample_pages]))]
    t_off, p_off = csr_offsets(t_len), csr_offsets(pos_len)
    sp = sample_pages
    skipped_pages = np.flatnonzero(~ok)
    out = PageSamples(
        user=page_user[sp], request=page_req[sp], ts=page_ts[sp],
        history=Ragged(readonly(hist_pool), h_start[sp], h_end[sp]),
        target=Ragged(readonly(t_items), t_off[:-1][sp], t_off[1:][sp]),
        target_actions=Ragged(readonly(t_acts), t_off[:-1][sp], t_off[1:][sp]),
        positives=Ragged(readonly(pos_items), p_off[:-1][sp], p_off[1:][sp]),
        user_ids=log.user_ids, request_ids=log.request_ids, num_items=len(catalog), max_history=max_history,
        skipped=Skipped(page_user[skipped_pages], page_req[skipped_pages], page_ts[skipped_pages],
                        reason[skipped_pages]),
        report=report,
    )
    bar.update()
    return out


def user_sequences(samples: PageSamples) -> tuple[np.ndarray, Ragged]:
    """Each user's positive items in time order as ``samples`` know them: ``(user int64 [U], Ragged)``.

    A user's sequence is the click/order stream their latest sample's history was cut from (from the start of
    their earliest sample's history, so ``max_history`` caps no sequence unless a user's first sample already
    had a capped history), followed by that latest sample's positives. For LC-Rec training samples this is
    the sequence up to (not including) the validation item; for page logs, every click and order up to the
    split's last page. This is what item-ID models such as SASRec train on, all positions in one pass.
    """
    if len(samples) == 0:
        return np.zeros(0, dtype=np.int64), Ragged.from_lengths(np.zeros(0, dtype=np.int64), np.zeros(0, np.int64))
    order = np.lexsort((samples.history.end, samples.user))
    user_sorted = samples.user[order]
    first = np.flatnonzero(np.r_[True, user_sorted[1:] != user_sorted[:-1]])
    last = np.r_[first[1:], len(order)] - 1
    users = user_sorted[first]
    h_start = np.minimum.reduceat(samples.history.start[order], first)
    latest = order[last]
    h_end = samples.history.end[latest]
    p_start, p_end = samples.positives.start[latest], samples.positives.end[latest]
    h_off, h_idx = gather_ranges(h_start, h_end)
    p_off, p_idx = gather_ranges(p_start, p_end)
    lh, lp = np.diff(h_off), np.diff(p_off)
    out_off = csr_offsets(lh + lp)
    values = np.empty(int(out_off[-1]), dtype=np.int64)
    row_h = np.repeat(np.arange(len(users)), lh)
    row_p = np.repeat(np.arange(len(users)), lp)
    values[out_off[:-1][row_h] + np.arange(len(h_idx)) - h_off[:-1][row_h]] = samples.history.values[h_idx]
    values[out_off[:-1][row_p] + lh[row_p] + np.arange(len(p_idx)) - p_off[:-1][row_p]] = samples.positives.values[p_idx]
    return users, Ragged(readonly(values), out_off[:-1], out_off[1:])
