"""Variable-length rows as slices of one flat pool (:class:`Ragged`), and the CSR helpers behind them: page
samples store history / target / positives this way, so a split or a batch shares pools instead of copying them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def readonly(a: np.ndarray) -> np.ndarray:
    """``a``, made read-only in place (pools shared by splits must never be written through a view)."""
    a.setflags(write=False)
    return a


def csr_offsets(lengths: np.ndarray) -> np.ndarray:
    """``[0, cumsum(lengths)...]`` as int64: the CSR offsets of rows of these lengths."""
    off = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    return off


def gather_ranges(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR offsets and the flat pool indices of the concatenated ranges ``[start[i], end[i])``."""
    lengths = end - start
    off = csr_offsets(lengths)
    idx = np.repeat(start - off[:-1], lengths) + np.arange(off[-1], dtype=np.int64)
    return off, idx


@dataclass(frozen=True, eq=False)
class Ragged:
    """Variable-length rows as slices of one flat pool: row ``i`` is ``values[start[i]:end[i]]``."""

    values: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @classmethod
    def from_lengths(cls, values: np.ndarray, lengths: np.ndarray) -> Ragged:
        off = csr_offsets(lengths)
        return cls(values, off[:-1], off[1:])

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.start[i]:self.end[i]]

    @property
    def lengths(self) -> np.ndarray:
        return self.end - self.start

    def take(self, index: Any) -> Ragged:
        """Rows ``index`` (ints or a bool mask), sharing the pool."""
        return Ragged(self.values, self.start[index], self.end[index])

    def to_csr(self, index: Any = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets int64 [n+1], flat values)`` for rows ``index``: a compact copy, e.g. for a batch."""
        off, idx = gather_ranges(self.start[index], self.end[index])
        return off, self.values[idx]
