"""Synthetic page logs with a known latent preference (the default data for tests and ``genrec demo``).

The world:

* every item has a main topic and a latent topic mixture ``m_i`` (the "topic vector"), a quality offset
  and a Zipf popularity; its embedding is ``m_i`` projected to ``embedding_dim`` plus noise, and its title
  reads "<adjective> <topic word> <noun>" so that text embeddings can be tried too;
* every user's interest is a mixture over topics that drifts from a start mixture towards an end mixture
  across the user's requests;
* each request exposes ``page_size`` distinct items: relevant ones (topic drawn from the current interest),
  popular ones and random ones, ranked by a noisy relevance score;
* a click is drawn from ``sigmoid(click_bias + click_weight * <interest, m_i> + quality_i - position_bias *
  position)``, an order (only of a clicked item) from ``sigmoid(order_bias + order_weight * <interest, m_i>
  + quality_i)``, so order ⊂ click ⊂ expose;
* requests are spread uniformly over ``days`` calendar days (UTC), so the last-day split works.

Pages hold several positives (about 2.3 per page with the defaults) that change from page to page: the
one-to-many setting page-wise generation is for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .catalog import ItemCatalog
from .logs import ACTIONS, CLICK, EXPOSE, ORDER, InteractionLog

ITEM_ID_BASE = 1_000_000  # raw item ids differ from dense indices, so a missed mapping shows up
LOGS_FILE = "logs.parquet"
_CHUNK_REQUESTS = 32_768  # bounds the [requests, page, topics] temporaries; part of the seeded stream

_TOPIC_WORDS = ("solar", "garden", "kitchen", "audio", "camping", "vintage", "coffee", "fitness", "baby", "pet",
                "office", "gaming", "travel", "winter", "ocean", "craft", "auto", "bath", "tea", "yoga", "lab",
                "bike", "desk", "party")
_ADJECTIVES = ("compact", "deluxe", "classic", "smart", "portable", "organic", "rustic", "modern", "premium",
               "mini", "heavy-duty", "eco", "wireless", "bold", "soft", "bright", "folding", "magnetic")
_NOUNS = ("kit", "lamp", "bottle", "set", "bag", "mat", "stand", "case", "brush", "light", "mug", "speaker",
          "tool", "pack", "box", "holder", "cable", "cover")


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic world; the defaults make a small log (~130k rows) for tests and the demo.

    Use :meth:`scaled` for a log of a given size (e.g. ``SyntheticConfig().scaled(1_000_000)``).
    """

    num_items: int = 2000
    num_users: int = 1000
    requests_per_user: float = 10.0  # Poisson mean; every user gets at least `min_requests`
    min_requests: int = 2
    page_size: int = 10  # P, items exposed per request
    num_topics: int = 20
    embedding_dim: int = 32
    days: int = 7
    start_ts: int = 1_704_067_200  # 2024-01-01 00:00:00 UTC, a day boundary
    relevant_frac: float = 0.5  # of the page drawn from the user's current topics
    popular_frac: float = 0.3  # drawn by popularity; the rest uniformly at random
    interest_concentration: float = 0.3  # Dirichlet alpha of user mixtures: small = few topics per user
    drift: float = 0.6  # how far a user's mixture moves towards its end mixture by the last request
    popularity_exponent: float = 1.0  # Zipf exponent of item popularity
    click_bias: float = -2.0
    click_weight: float = 12.0
    position_bias: float = 0.08
    order_bias: float = -1.5
    order_weight: float = 3.0
    quality_std: float = 0.5
    embedding_noise: float = 0.1
    seed: int = 0

    #: Approximate log rows per request with the default rates (P exposes + ~2.3 clicks + ~0.7 orders).
    ROWS_PER_EXPOSE = 1.3

    def __post_init__(self) -> None:
        for name in ("num_items", "num_users", "page_size", "num_topics", "embedding_dim", "days", "min_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"SyntheticConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_items < 2 * self.page_size:
            raise ValueError(f"SyntheticConfig.num_items={self.num_items} must be >= 2 * page_size="
                             f"{2 * self.page_size} (a page exposes distinct items)")
        if not (0 <= self.relevant_frac and 0 <= self.popular_frac and self.relevant_frac + self.popular_frac <= 1):
            raise ValueError(f"SyntheticConfig: relevant_frac={self.relevant_frac} and popular_frac="
                             f"{self.popular_frac} must be >= 0 with a sum <= 1")
        if self.requests_per_user <= 0 or self.interest_concentration <= 0:
            raise ValueError("SyntheticConfig: requests_per_user and interest_concentration must be > 0")
        if not 0 <= self.drift <= 1:
            raise ValueError(f"SyntheticConfig.drift must be in [0, 1], got {self.drift}")

    def scaled(self, rows: int) -> SyntheticConfig:
        """The same world with as many users as give about ``rows`` log rows."""
        per_user = max(self.requests_per_user, self.min_requests) * self.page_size * self.ROWS_PER_EXPOSE
        return replace(self, num_users=max(1, math.ceil(rows / per_user)))


@dataclass(frozen=True, eq=False)
class SyntheticData:
    """A generated log and its item catalogue, with the latent truth kept for analysis."""

    logs: pa.Table  # user_id, request_id, item_id, action, ts, position
    catalog: ItemCatalog  # ids, text {title, brand, categories}, embeddings float32 [I, D]
    config: SyntheticConfig
    item_topic: np.ndarray  # int64 [I] main topic
    item_mixture: np.ndarray  # float32 [I, T] latent topic vectors m_i
    user_interest: np.ndarray  # float32 [U, 2, T] each user's first and last interest mixture (user_id = row)

    def log(self) -> InteractionLog:
        """The logs as a validated :class:`InteractionLog`."""
        return InteractionLog.from_table(self.logs)

    def write_parquet(self, directory: str | Path) -> dict[str, Path]:
        """Write ``logs.parquet``, ``items.parquet`` and ``item_embeddings.npy`` into ``directory``.

        Read back with ``read_logs(directory / "logs.parquet")`` and ``ItemCatalog.load(directory)``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.logs, directory / LOGS_FILE)
        items, *emb = self.catalog.save(directory)
        return {"logs": directory / LOGS_FILE, "items": items, **({"embeddings": emb[0]} if emb else {})}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _dirichlet(rng: np.random.Generator, alpha: float, n: int, k: int) -> np.ndarray:
    # Normalised gammas: numpy's dirichlet can return NaN rows for small alpha; this cannot.
    g = rng.gamma(alpha, size=(n, k)) + 1e-12
    return g / g.sum(axis=1, keepdims=True)


def _titles(rng: np.random.Generator, topic: np.ndarray, num_topics: int) -> tuple[np.ndarray, np.ndarray]:
    words = np.array([_TOPIC_WORDS[t % len(_TOPIC_WORDS)] + (str(t // len(_TOPIC_WORDS)) if t >= len(_TOPIC_WORDS)
                                                             else "") for t in range(num_topics)], dtype=object)
    adj = np.array(_ADJECTIVES, dtype=object)[rng.integers(len(_ADJECTIVES), size=len(topic))]
    noun = np.array(_NOUNS, dtype=object)[rng.integers(len(_NOUNS), size=len(topic))]
    titles = adj + " " + words[topic] + " " + noun
    categories = np.array([w.capitalize() for w in words], dtype=object)[topic]
    return titles, categories


def _distinct_rows(rng: np.random.Generator, items: np.ndarray, num_items: int) -> np.ndarray:
    """Redraw repeated items within each row (uniformly) until every row is distinct."""
    while True:
        order = np.argsort(items, axis=1, kind="stable")
        s = np.take_along_axis(items, order, axis=1)
        dup_sorted = np.zeros(items.shape, dtype=bool)
        dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
        if not dup_sorted.any():
            return items
        dup = np.zeros_like(dup_sorted)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        items[dup] = rng.integers(num_items, size=int(dup.sum()))


def generate_synthetic(config: SyntheticConfig | None = None, *, progress: bool = False) -> SyntheticData:
    """Generate a seeded synthetic page log (see the module docstring); deterministic for a config."""
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    I, T, P, U = cfg.num_items, cfg.num_topics, cfg.page_size, cfg.num_users

    # Items: main topic, latent mixture, quality, popularity, embedding, text.
    item_topic = rng.integers(T, size=I)
    main_w = rng.uniform(0.6, 0.9, size=(I, 1))
    mixture = (main_w * np.eye(T)[item_topic] + (1 - main_w) * _dirichlet(rng, 1.0, I, T)).astype(np.float32)
    quality = rng.normal(0.0, cfg.quality_std, size=I)
    popularity = rng.permutation(I).astype(np.float64) + 1.0
    pop_cdf = np.cumsum(popularity ** -cfg.popularity_exponent)
    proj = rng.normal(0.0, 1.0, size=(T, cfg.embedding_dim))
    embeddings = mixture @ proj
    embeddings += cfg.embedding_noise * embeddings.std() * rng.normal(size=embeddings.shape)
    titles, categories = _titles(rng, item_topic, T)
    brands = np.array([f"Brand{b:02d}" for b in range(50)], dtype=object)[rng.integers(50, size=I)]
    by_topic = np.argsort(item_topic, kind="stable")
    topic_count = np.bincount(item_topic, minlength=T)
    topic_start = np.concatenate([[0], np.cumsum(topic_count)[:-1]])

    # Users and their requests (times sorted within each user, then all requests renumbered by time).
    theta_start = _dirichlet(rng, cfg.interest_concentration, U, T)
    theta_end = _dirichlet(rng, cfg.interest_concentration, U, T)
    n_req = np.maximum(rng.poisson(cfg.requests_per_user, size=U), cfg.min_requests)
    R = int(n_req.sum())
    req_user = np.repeat(np.arange(U), n_req)
    req_t = rng.integers(0, cfg.days * 86_400, size=R)
    o = np.lexsort((req_t, req_user))
    req_t = req_t[o]
    first = np.concatenate([[0], np.cumsum(n_req)[:-1]])
    k = np.arange(R) - first[req_user]
    w = cfg.drift * k / np.maximum(n_req[req_user] - 1, 1)
    o = np.lexsort((req_user, req_t))
    req_user, req_t, w = req_user[o], req_t[o], w[o]

    n_rel = int(round(P * cfg.relevant_frac))
    n_pop = min(P - n_rel, int(round(P * cfg.popular_frac)))
    parts: dict[str, list[np.ndarray]] = {c: [] for c in ("user", "request", "item", "action", "ts", "position")}
    for c0 in tqdm(range(0, R, _CHUNK_REQUESTS), desc="synthetic requests", unit="chunk", disable=not progress,
                   leave=False):
        c1 = min(c0 + _CHUNK_REQUESTS, R)
        C, users, ww = c1 - c0, req_user[c0:c1], w[c0:c1, None]
        theta = (1 - ww) * theta_start[users] + ww * theta_end[users]
        # Relevant slots: topic ~ current interest, item uniform within the topic (random if it has none).
        cdf = np.cumsum(theta, axis=1)
        topic = np.minimum((rng.random((C, n_rel, 1)) * cdf[:, -1:, None] > cdf[:, None, :]).sum(-1), T - 1)
        cnt = topic_count[topic]
        rel = by_topic[np.minimum(topic_start[topic] + (rng.random((C, n_rel)) * cnt).astype(np.int64), I - 1)]
        rel = np.where(cnt > 0, rel, rng.integers(I, size=(C, n_rel)))
        pop = np.searchsorted(pop_cdf, rng.random((C, n_pop)) * pop_cdf[-1], side="right")
        rnd = rng.integers(I, size=(C, P - n_rel - n_pop))
        page = _distinct_rows(rng, np.concatenate([rel, pop, rnd], axis=1).astype(np.int64), I)
        affinity = np.einsum("cpt,ct->cp", mixture[page], theta.astype(np.float32))
        # The recommender ranks by a noisy view of the preference; position = rank.
        rank = np.argsort(-(affinity + rng.normal(0.0, 0.15, size=(C, P))), axis=1)
        page = np.take_along_axis(page, rank, axis=1)
        affinity = np.take_along_axis(affinity, rank, axis=1)
        position = np.broadcast_to(np.arange(P), (C, P))
        click = rng.random((C, P)) < _sigmoid(cfg.click_bias + cfg.click_weight * affinity + quality[page]
                                              - cfg.position_bias * position)
        order = click & (rng.random((C, P)) < _sigmoid(cfg.order_bias + cfg.order_weight * affinity
                                                       + quality[page]))
        t_expose = cfg.start_ts + req_t[c0:c1, None]
        t_click = t_expose + rng.integers(2, 120, size=(C, P))
        t_order = t_click + rng.integers(30, 900, size=(C, P))
        request = np.broadcast_to(np.arange(c0, c1)[:, None], (C, P))
        for mask, code, t in ((np.ones((C, P), dtype=bool), EXPOSE, np.broadcast_to(t_expose, (C, P))),
                              (click, CLICK, t_click), (order, ORDER, t_order)):
            parts["user"].append(np.broadcast_to(users[:, None], (C, P))[mask])
            parts["request"].append(request[mask])
            parts["item"].append(page[mask])
            parts["action"].append(np.full(int(mask.sum()), code, dtype=np.int8))
            parts["ts"].append(t[mask])
            parts["position"].append(position[mask])

    cols = {c: np.concatenate(v) for c, v in parts.items()}
    # Time-ordered log, as a real one would be.
    o = np.lexsort((cols["position"], cols["action"], cols["request"], cols["ts"]))
    actions = pa.DictionaryArray.from_arrays(pa.array(cols["action"][o]), pa.array(ACTIONS)).cast(pa.string())
    logs = pa.table({
        "user_id": pa.array(cols["user"][o].astype(np.int64)),
        "request_id": pa.array(cols["request"][o].astype(np.int64)),
        "item_id": pa.array(cols["item"][o] + ITEM_ID_BASE),
        "action": actions,
        "ts": pa.array(cols["ts"][o].astype(np.int64)),
        "position": pa.array(cols["position"][o].astype(np.int32)),
    })
    catalog = ItemCatalog(
        ITEM_ID_BASE + np.arange(I, dtype=np.int64),
        {"title": titles, "brand": brands, "categories": categories},
        embeddings.astype(np.float32),
    )
    interest = np.stack([theta_start, theta_end], axis=1).astype(np.float32)
    return SyntheticData(logs, catalog, cfg, item_topic.astype(np.int64), mixture, interest)
