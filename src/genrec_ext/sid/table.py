"""The SID table (item <-> semantic ID), collision resolution, and its on-disk format.

Collisions (several items on one RQ code tuple) are resolved so that every item gets a unique, decodable SID:

* ``"reassign"`` (default): within a collision group the item closest to its last-level centroid keeps the
  tuple; each other item moves to the nearest last-level code that no item with the same prefix uses. SIDs
  stay ``L`` codes (the paper's 3 x 256). If a prefix ever runs out of free codes, the leftovers fall back
  to ``"append"``.
* ``"append"`` (TIGER): one extra level whose code is the item's rank inside its group (0 for an item alone on
  its tuple), so SIDs have ``L + 1`` codes.
* ``"error"``: a collision raises, naming the items.

On-disk format (a directory, written atomically):
    sid_table.json   {"format": "genrec-sid/1", "levels", "level_sizes", "collision_level", "item_ids",
                      "stats": {...}, "normalize"}
    codes.npy        int64 [I, L'] — row i is item i's SID (L' = L, or L + 1 with a collision level)
    codebooks.npy    float32 [L, K_max, D] — the residual codebooks (rows past level_sizes[l] are padding)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_directory
from ..data import ItemCatalog
from .lookup import SIDLookup
from .rqkmeans import RQCodebooks

FORMAT = "genrec-sid/1"


@dataclass
class SIDStats:
    """Codebook utilisation and collisions, as `genrec sid build` reports them."""

    items: int
    used_codes: list[int]  # distinct codes per RQ level
    level_sizes: list[int]
    colliding_items_before: int  # items sharing their RQ tuple with at least one other item
    max_group: int  # largest number of items on one RQ tuple
    colliding_items_after: int = 0

    @property
    def utilisation(self) -> list[float]:
        return [u / k for u, k in zip(self.used_codes, self.level_sizes)]

    @property
    def collision_rate_before(self) -> float:
        return self.colliding_items_before / max(self.items, 1)

    def summary(self) -> str:
        util = ", ".join(f"L{i + 1} {u}/{k} ({u / k:.0%})" for i, (u, k) in enumerate(zip(self.used_codes, self.level_sizes)))
        return (f"{self.items} items; codebook utilisation: {util}; collisions: {self.colliding_items_before} items "
                f"({self.collision_rate_before:.2%}) shared an RQ tuple (largest group {self.max_group}) -> "
                f"{self.colliding_items_after} after resolution")

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "used_codes": self.used_codes, "level_sizes": self.level_sizes,
                "colliding_items_before": self.colliding_items_before, "max_group": self.max_group,
                "colliding_items_after": self.colliding_items_after}


@dataclass
class SIDTable:
    """Every item's semantic ID, plus the codebooks that produced it.

    ``codes[i]`` is item ``i``'s SID; ``item_ids[i]`` its raw id. ``level_sizes`` covers every SID level,
    the collision level included (its size is the largest collision group).
    """

    codes: np.ndarray  # int64 [I, L']
    item_ids: list
    level_sizes: list[int]
    codebooks: RQCodebooks | None = None
    collision_level: bool = False
    stats: SIDStats | None = None
    _lookup: SIDLookup = field(init=False, repr=False, compare=False)  # derived from codes in __post_init__

    def __post_init__(self) -> None:
        self.codes = np.ascontiguousarray(self.codes, dtype=np.int64)
        if self.codes.ndim != 2 or len(self.codes) != len(self.item_ids):
            raise ValueError(f"SIDTable: codes must be [items, levels] with one row per item id, got "
                             f"{self.codes.shape} for {len(self.item_ids)} ids")
        try:
            self._lookup = SIDLookup(self.codes, [int(k) for k in self.level_sizes])
        except ValueError:
            raise ValueError("SIDTable: SIDs are not unique; resolve collisions first (build_sid_table does)") from None

    @property
    def levels(self) -> int:
        return self.codes.shape[1]

    def __len__(self) -> int:
        return len(self.codes)

    def sid(self, item: int) -> tuple[int, ...]:
        """SID of the item at dense index ``item``."""
        return tuple(int(c) for c in self.codes[item])

    def item(self, sid) -> int | None:
        """Dense item index of a SID, or None when no item has it (a hallucinated SID)."""
        found = int(self._lookup(torch.as_tensor([int(c) for c in sid])))
        return None if found < 0 else found

    def items_of(self, codes: Tensor) -> Tensor:
        """Dense item index of every SID in ``codes [..., L]`` (on their device), -1 where no item has it or a
        code is -1 (a dead beam slot): vectorised, for decoded beams."""
        return self._lookup(codes)

    def save(self, directory: str | Path) -> Path:
        """Write the table (see the module docstring for the format); replaces ``directory`` atomically."""
        with atomic_directory(directory) as tmp:
            meta = {"format": FORMAT, "levels": self.levels, "level_sizes": self.level_sizes,
                    "collision_level": self.collision_level, "item_ids": list(self.item_ids),
                    "stats": self.stats.to_dict() if self.stats else None,
                    "normalize": bool(self.codebooks.normalize) if self.codebooks else False,
                    "rq_level_sizes": self.codebooks.level_sizes if self.codebooks else None}
            (tmp / "sid_table.json").write_text(json.dumps(meta, default=_json_default))
            np.save(tmp / "codes.npy", self.codes)
            if self.codebooks is not None:
                np.save(tmp / "codebooks.npy", self.codebooks.codebooks.numpy().astype(np.float32))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> SIDTable:
        directory = Path(directory)
        meta_path = directory / "sid_table.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"no SID table in {directory} (missing sid_table.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
        codebooks = None
        if (directory / "codebooks.npy").exists():
            codebooks = RQCodebooks(torch.from_numpy(np.load(directory / "codebooks.npy")),
                                    meta["rq_level_sizes"], meta.get("normalize", False))
        stats = SIDStats(**meta["stats"]) if meta.get("stats") else None
        return cls(np.load(directory / "codes.npy"), meta["item_ids"], meta["level_sizes"], codebooks,
                   meta["collision_level"], stats)


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    raise TypeError(f"cannot store {type(value).__name__} {value!r} in sid_table.json")


def resolve_collisions(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Rank of each item within its group of identical RQ tuples (stable: lower item index first),
    the group sizes per item, and the largest group."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    group_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - group_start[inverse[order]]
    return rank, counts[inverse], int(counts.max()) if len(counts) else 0


def _reassign_last_level(codes: np.ndarray, vectors, codebooks: RQCodebooks) -> np.ndarray:
    """Move all but one item of every collision group to the nearest free last-level code of its prefix."""
    codes = codes.copy()
    last = codebooks.levels - 1
    k_last = codebooks.level_sizes[last]
    _, group_sizes, _ = resolve_collisions(codes)
    colliding = np.flatnonzero(group_sizes > 1)
    # Residual before the last level, and its distance to every last-level centroid.
    x = codebooks.prepare(vectors)[torch.from_numpy(colliding)].double()
    for level in range(last):
        x -= codebooks.codebooks[level].double()[torch.from_numpy(codes[colliding, level])]
    dist = torch.cdist(x, codebooks.codebooks[last, :k_last].double()).numpy()  # [colliding, K_last]
    own = dist[np.arange(len(colliding)), codes[colliding, last]]
    used: dict[tuple[int, ...], set[int]] = {}
    for row in codes.tolist():
        used.setdefault(tuple(row[:last]), set()).add(row[last])
    # The item nearest its centroid keeps each tuple; the rest move, nearest first.
    order = np.lexsort((colliding, own))
    kept: set[tuple[int, ...]] = set()
    for j in order:
        item = colliding[j]
        key = tuple(codes[item].tolist())
        if key not in kept:
            kept.add(key)
            continue
        taken = used[key[:last]]
        for code in np.argsort(dist[j], kind="stable"):
            if int(code) not in taken:
                codes[item, last] = code
                taken.add(int(code))
                break
        # A prefix with every code taken keeps the item on its tuple; build_sid_table appends a level then.
    return codes


def build_sid_table(embeddings, item_ids: list, codebooks: RQCodebooks, *, collisions: str = "reassign") -> SIDTable:
    """Encode every item with ``codebooks`` and make its SID unique (see the module docstring).

    Args:
        embeddings: ``[I, D]`` item embeddings, row i for ``item_ids[i]``.
        collisions: ``"reassign"``, ``"append"`` or ``"error"``.
    """
    if collisions not in ("reassign", "append", "error"):
        raise ValueError(f"collisions must be 'reassign', 'append' or 'error', got {collisions!r}")
    if len(embeddings) != len(item_ids):
        raise ValueError(f"{len(embeddings)} embedding rows for {len(item_ids)} item ids")
    codes = codebooks.encode(embeddings).numpy()
    _, group_sizes, max_group = resolve_collisions(codes)
    stats = SIDStats(items=len(codes), used_codes=[int(len(np.unique(codes[:, level]))) for level in range(codes.shape[1])],
                     level_sizes=list(codebooks.level_sizes), colliding_items_before=int((group_sizes > 1).sum()),
                     max_group=max_group)
    if max_group > 1 and collisions == "error":
        first = int(np.flatnonzero(group_sizes > 1)[0])
        clash = [item_ids[i] for i in np.flatnonzero((codes == codes[first]).all(1))]
        raise ValueError(f"{stats.colliding_items_before} items collide, e.g. items {clash[:5]} share SID "
                         f"{tuple(codes[first].tolist())}; use collisions='reassign' or 'append', or larger codebooks")
    if max_group > 1 and collisions == "reassign":
        codes = _reassign_last_level(codes, embeddings, codebooks)
    rank, _, max_group = resolve_collisions(codes)
    level_sizes = list(codebooks.level_sizes)
    collision_level = max_group > 1
    if collision_level:  # "append", or "reassign" that ran out of free codes somewhere
        codes = np.concatenate([codes, rank[:, None]], axis=1)
        level_sizes.append(max_group)
    return SIDTable(codes, list(item_ids), level_sizes, codebooks, collision_level, stats)


def sid_codes_for(catalog: ItemCatalog, table: SIDTable) -> np.ndarray:
    """The SID of every catalogue item, ``[I, L]`` in catalogue order; an item without a SID is an error
    naming it (the table was built on another catalogue)."""
    rows = ItemCatalog(np.asarray(table.item_ids)).index(catalog.ids, missing="ignore")
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        named = ", ".join(repr(catalog.ids[i].item()) for i in missing[:5])
        raise ValueError(f"{len(missing)} catalogue items have no SID in the SID table ({len(table)} items), "
                         f"e.g. {named}: rebuild the SIDs for this catalogue (genrec sid build)")
    return table.codes[rows]


def sid_tokens_for(catalog: ItemCatalog, table: SIDTable) -> np.ndarray:
    """Every catalogue item's SID as the model's token ids ``[I, L]`` (the table's SID vocabulary), in catalogue
    order: what prompts are built from."""
    from .vocab import SIDVocab

    return SIDVocab(tuple(table.level_sizes)).tokens(sid_codes_for(catalog, table)).numpy()


def catalog_index_of_sids(catalog: ItemCatalog, table: SIDTable) -> np.ndarray:
    """The inverse direction, for decoding: the catalogue index of every SID-table row (-1 where the
    catalogue lacks that item), so decoded SIDs map to the catalogue whatever the table's row order."""
    return catalog.index(np.asarray(table.item_ids), missing="ignore")
