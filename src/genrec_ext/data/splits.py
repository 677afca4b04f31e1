"""Train / validation / test sets of page samples: :class:`Splits` and the time-based :func:`time_split` (the
paper's: last day = test). LC-Rec data uses its own leave-one-out split (:mod:`.lcrec`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .samples import PageSamples


@dataclass(frozen=True, eq=False)
class Splits:
    """Train / validation / test sample sets (sharing pools) and, for time splits, their boundaries."""

    train: PageSamples
    valid: PageSamples
    test: PageSamples
    valid_start: float | None = None
    test_start: float | None = None

    def __iter__(self) -> Iterator[PageSamples]:
        return iter((self.train, self.valid, self.test))

    def summary(self) -> str:
        lines = []
        for name, s in zip(("train", "valid", "test"), self):
            st = s.stats
            lines.append(f"{name:5s}: {st.samples} samples ({st.pages} pages; skipped {st.skipped_no_history} "
                         f"no-history, {st.skipped_empty_target} empty-target, {st.skipped_no_positive} "
                         f"no-positive)")
        return "\n".join(lines)


def time_split(samples: PageSamples, *, test_days: int = 1, valid_days: int = 0,
               day_seconds: float = 86400.0) -> Splits:
    """Split page samples by request time into calendar days (UTC days of ``ts``).

    Test = requests on the last ``test_days`` days of the log, validation = the ``valid_days`` days
    before them (default 0: the paper trains on everything before the last day), train = the rest. The
    log's last day is that of its latest page, sample or skipped. Histories are untouched: a test sample's
    history still holds train-period clicks (it always comes from every earlier request).

    Args:
        day_seconds: length of a day in units of ``ts`` (e.g. 86_400_000 for millisecond timestamps).
    """
    if test_days < 1:
        raise ValueError(f"test_days must be >= 1, got {test_days}")
    if valid_days < 0:
        raise ValueError(f"valid_days must be >= 0, got {valid_days}")
    all_ts = np.concatenate([samples.ts, samples.skipped.ts])
    if len(all_ts) == 0:
        raise ValueError("time_split: no pages to split")
    if np.isnan(all_ts).any():
        raise ValueError("time_split: samples have no timestamps (LC-Rec data uses the leave-one-out split)")
    day = np.floor(samples.ts / day_seconds)
    sk_day = np.floor(samples.skipped.ts / day_seconds)
    first, last = float(np.floor(all_ts.min() / day_seconds)), float(np.floor(all_ts.max() / day_seconds))
    span = int(last - first) + 1
    if span <= test_days + valid_days:
        raise ValueError(f"time_split: the log spans {span} day(s); test_days={test_days} + valid_days="
                         f"{valid_days} would leave no training days")
    test_from = last - test_days + 1
    valid_from = test_from - valid_days

    def part(lo: float, hi: float) -> PageSamples:
        return samples.subset((day >= lo) & (day < hi), (sk_day >= lo) & (sk_day < hi))

    return Splits(part(-np.inf, valid_from), part(valid_from, test_from), part(test_from, np.inf),
                  valid_start=valid_from * day_seconds, test_start=test_from * day_seconds)
