"""The trie of valid SIDs, as flat arrays that a decoding kernel can walk without Python per beam.

Nodes are numbered per depth: the root is node 0 at depth 0, and the nodes at depth ``l + 1`` are the
distinct SID prefixes of length ``l + 1`` in lexicographic order. Per depth ``l`` (CSR):

    offsets[l]  int64 [n_l + 1]  children of depth-l node j are depth-(l+1) nodes offsets[l][j] .. offsets[l][j+1]-1
    codes[l]    int64 [n_{l+1}]  the level-l code of each depth-(l+1) node (ascending within a parent)
    leaf_items  int64 [n_L]      the item index of each complete SID

Because children of one parent are contiguous and sorted, the child for code ``c`` is found by a binary
search in ``codes[l][offsets[l][j]:offsets[l][j+1]]``; ``dense_mask(l)`` gives a ``[n_l, K_l]`` boolean
mask where that is cheaper (small levels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .table import SIDTable


@dataclass
class SIDTrie:
    level_sizes: list[int]
    offsets: list[Tensor]
    codes: list[Tensor]
    leaf_items: Tensor
    _padded_leaf_items: Tensor | None = field(default=None, repr=False, compare=False)  # [-1; leaf_items]

    @classmethod
    def from_codes(cls, sids: np.ndarray, level_sizes: list[int]) -> SIDTrie:
        """Build from unique SIDs ``[I, L]`` (row i = item i)."""
        sids = np.asarray(sids, dtype=np.int64)
        n_items, levels = sids.shape
        if levels != len(level_sizes):
            raise ValueError(f"SIDs have {levels} levels but level_sizes has {len(level_sizes)}")
        order = np.lexsort(sids.T[::-1]) if n_items else np.zeros(0, dtype=np.int64)
        ordered = sids[order]
        offsets, codes = [], []
        parent_of_item = np.zeros(n_items, dtype=np.int64)  # depth-0 node (the root) of every item
        n_parents = 1
        for level in range(levels):
            # A new depth-(level+1) node starts wherever the prefix up to this level changes.
            starts = np.ones(n_items, dtype=bool)
            if n_items > 1:
                starts[1:] = (ordered[1:, : level + 1] != ordered[:-1, : level + 1]).any(1)
            node_of_item = np.cumsum(starts) - 1
            node_parent = parent_of_item[starts]
            counts = np.bincount(node_parent, minlength=n_parents)
            offsets.append(torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)))
            codes.append(torch.from_numpy(ordered[starts, level].copy()))
            parent_of_item, n_parents = node_of_item, int(starts.sum())
        if n_parents != n_items:
            raise ValueError(f"{n_items - n_parents} SIDs are duplicates; a trie needs unique SIDs")
        leaf_items = torch.from_numpy(order.astype(np.int64))  # leaves are in sorted order, like `ordered`
        return cls(list(level_sizes), offsets, codes, leaf_items)

    @classmethod
    def from_table(cls, table: SIDTable) -> SIDTrie:
        return cls.from_codes(table.codes, table.level_sizes)

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    def num_nodes(self, depth: int) -> int:
        return len(self.offsets[depth]) - 1

    def child(self, depth: int, node: int, code: int) -> int | None:
        """The depth-(depth+1) node reached from ``node`` by ``code``, or None if that SID prefix is invalid."""
        lo, hi = int(self.offsets[depth][node]), int(self.offsets[depth][node + 1])
        siblings = self.codes[depth][lo:hi]
        pos = int(torch.searchsorted(siblings, torch.tensor(code)))
        return lo + pos if pos < len(siblings) and int(siblings[pos]) == code else None

    def lookup(self, sid) -> int | None:
        """Item index of a complete SID, or None if no item has it."""
        node = 0
        for depth, code in enumerate(sid):
            node = self.child(depth, node, int(code))
            if node is None:
                return None
        return int(self.leaf_items[node])

    def dense_mask(self, depth: int) -> Tensor:
        """bool ``[n_depth, K_depth]``: which codes continue a valid SID from each depth-``depth`` node."""
        counts = self.offsets[depth][1:] - self.offsets[depth][:-1]
        parents = torch.repeat_interleave(torch.arange(self.num_nodes(depth)), counts)
        mask = torch.zeros(self.num_nodes(depth), self.level_sizes[depth], dtype=torch.bool)
        mask[parents, self.codes[depth]] = True
        return mask

    def items_of(self, leaves: Tensor) -> Tensor:
        """Item index of each leaf node in ``leaves`` (``-1`` stays ``-1``: a dead beam slot)."""
        if self._padded_leaf_items is None:
            self._padded_leaf_items = torch.cat([self.leaf_items.new_full((1,), -1), self.leaf_items])
        return self._padded_leaf_items.take(leaves + 1)  # take: no advanced-indexing machinery per search

    def to(self, device) -> SIDTrie:
        if self.leaf_items.device == torch.device(device):
            return self  # serving moves the trie on every search; most of the time it is there already
        return SIDTrie(self.level_sizes, [o.to(device) for o in self.offsets], [c.to(device) for c in self.codes],
                       self.leaf_items.to(device))
