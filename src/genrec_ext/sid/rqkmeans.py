"""Residual K-means (RQ-KMeans, paper §2.1): level after level, K-means on what the previous levels left.

Assignments go through the fused ``genrec::rq_assign`` op; initialisation is k-means++ (D² sampling on a
seeded sample), Lloyd iterations update centroids with a scatter-mean, and empty clusters are re-seeded
with the points farthest from their centroids. Everything is seeded, so a config and data give one result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..ops import rq_assign


@dataclass
class RQKMeansConfig:
    """How to train the codebooks. ``codebook_size`` is one int for every level or one per level."""

    levels: int = 3
    codebook_size: int | Sequence[int] = 256
    iterations: int = 25
    tol: float = 1e-4  # stop a level when inertia improves by less than this fraction
    init_sample: int = 50_000  # points k-means++ samples from (it is sequential in K)
    normalize: bool = False  # L2-normalise inputs first (cosine geometry, e.g. for text embeddings)
    seed: int = 0

    def sizes(self) -> list[int]:
        sizes = [self.codebook_size] * self.levels if isinstance(self.codebook_size, int) else list(self.codebook_size)
        if len(sizes) != self.levels:
            raise ValueError(f"codebook_size has {len(sizes)} entries but levels = {self.levels}")
        if self.levels < 1 or any(k < 1 for k in sizes):
            raise ValueError(f"need levels >= 1 and codebook sizes >= 1, got levels={self.levels}, sizes={sizes}")
        return [int(k) for k in sizes]


@dataclass
class RQCodebooks:
    """Trained residual codebooks: ``codebooks[l, :level_sizes[l]]`` are level l's centroids."""

    codebooks: Tensor  # [L, K_max, D] float32, rows past level_sizes[l] are zero padding
    level_sizes: list[int]
    normalize: bool = False
    inertia: list[float] = field(default_factory=list)  # mean squared residual after each level

    @property
    def levels(self) -> int:
        return len(self.level_sizes)

    def prepare(self, x: Tensor | np.ndarray) -> Tensor:
        if isinstance(x, np.ndarray):
            x = np.asarray(x, dtype=np.float32)
            x = torch.from_numpy(x if x.flags.writeable else x.copy())  # torch wants writable memory
        x = torch.as_tensor(x, dtype=torch.float32)
        return torch.nn.functional.normalize(x, dim=1) if self.normalize else x

    def encode(self, x: Tensor | np.ndarray) -> Tensor:
        """int64 ``[N, L]`` codes of each row of ``x``."""
        return rq_assign(self.prepare(x), self.codebooks, self.level_sizes)[0]


def _kmeans_plus_plus(points: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to D² to the chosen ones."""
    n = points.shape[0]
    centres = torch.empty(k, points.shape[1], dtype=points.dtype)
    first = int(torch.randint(n, (1,), generator=gen))
    centres[0] = points[first]
    sq_norms = points.pow(2).sum(1)

    def sq_dist(centre: Tensor) -> Tensor:  # one GEMV pass instead of materialising points - centre
        return (sq_norms - 2 * (points @ centre) + centre.dot(centre)).clamp_(min=0)

    closest = sq_dist(centres[0])
    for i in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # every point already sits on a centre: duplicates are the best we can do
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial(closest / total, 1, generator=gen))
        centres[i] = points[idx]
        closest = torch.minimum(closest, sq_dist(centres[i]))
    return centres


def _lloyd(points: Tensor, centres: Tensor, config: RQKMeansConfig, bar) -> tuple[Tensor, float]:
    k = centres.shape[0]
    previous = float("inf")
    inertia = previous
    for _ in range(config.iterations):
        codes, _, sq_err = rq_assign(points, centres[None])
        codes = codes[:, 0]
        inertia = float(sq_err.mean())
        counts = torch.bincount(codes, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, codes, points)
        updated = sums / counts.clamp(min=1).unsqueeze(1).to(points.dtype)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            # Re-seed empty clusters with the points worst served now (largest error), deterministically.
            far = torch.argsort(sq_err, descending=True, stable=True)[: len(empty)]
            updated[empty] = points[far]
        else:
            updated[counts == 0] = centres[counts == 0]
        centres = updated
        bar.update(1)
        bar.set_postfix(inertia=f"{inertia:.4g}")
        if len(empty) == 0 and previous != float("inf") and previous - inertia <= config.tol * max(previous, 1e-12):
            break
        previous = inertia
    return centres, inertia


def train_rq_kmeans(x: Tensor | np.ndarray, config: RQKMeansConfig | None = None, *, progress: bool = True) -> RQCodebooks:
    """Train ``config.levels`` residual codebooks on ``x`` (``[N, D]``)."""
    config = config or RQKMeansConfig()
    sizes = config.sizes()
    data = RQCodebooks(torch.empty(0), sizes, config.normalize).prepare(x).contiguous()
    if data.dim() != 2 or data.shape[0] == 0:
        raise ValueError(f"train_rq_kmeans: x must be a non-empty [N, D] matrix, got shape {tuple(data.shape)}")
    if not torch.isfinite(data).all():
        bad = torch.nonzero(~torch.isfinite(data).all(1)).flatten()[:5].tolist()
        raise ValueError(f"train_rq_kmeans: x has NaN/inf values in rows {bad}")
    n, dim = data.shape
    if max(sizes) > n:
        raise ValueError(f"train_rq_kmeans: codebook size {max(sizes)} exceeds the number of points N = {n}")
    gen = torch.Generator().manual_seed(config.seed)
    codebooks = torch.zeros(config.levels, max(sizes), dim)
    residual = data.clone()
    inertia = []
    with tqdm(total=config.levels * config.iterations, desc="RQ-KMeans", unit="iter", disable=not progress) as bar:
        for level, k in enumerate(sizes):
            bar.set_description(f"RQ-KMeans level {level + 1}/{config.levels} (K={k})")
            sample = residual
            if n > config.init_sample:
                sample = residual[torch.randperm(n, generator=gen)[: config.init_sample]]
            centres, _ = _lloyd(residual, _kmeans_plus_plus(sample, k, gen), config, bar)
            codebooks[level, :k] = centres
            bar.n = (level + 1) * config.iterations
            bar.refresh()
            _, residual, sq_err = rq_assign(residual, centres[None])
            inertia.append(float(sq_err.mean()))
    return RQCodebooks(codebooks, sizes, config.normalize, inertia)
