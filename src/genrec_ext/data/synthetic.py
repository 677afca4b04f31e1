"""Synthetic page logs with a known latent preference (the default data for tests and ``genrec demo``).

Why the world looks like this
-----------------------------
A real feed has *item-level* and *sequential* structure: people come back to things close to what they just
clicked (the next phone case after a phone, another track by a similar artist), and the recommender that
built the page knows it and shows such neighbours. The first version of this generator lacked both: a page's
relevant slots picked an item uniformly within a topic, so which relevant item a user would see next was
nearly unpredictable, while its popular slots followed a Zipf law and recurred, so "recommend the most popular
items" was as strong as any trained model (and nearly as strong as the generator's own Oracle). This version
keeps topics, drifting interests, popularity and quality, and adds a neighbourhood structure in the latent
item space that a sequence model can learn from the click history alone:

* every item has a main topic and a latent topic mixture ``m_i`` (the "topic vector"), a quality offset
  and a Zipf popularity; its embedding is ``m_i`` projected to ``embedding_dim`` plus noise, and its title
  reads "<adjective> <topic word> <noun>" so that text embeddings can be tried too; its
  ``num_neighbours`` nearest items in the mixture space (Euclidean, itself excluded) are its neighbours
  (``SyntheticData.item_neighbours``);
* every user's interest is a mixture over topics that drifts from a start mixture towards an end mixture
  across the user's requests (``drift``), and the user remembers its last ``recent_clicks`` clicked items;
  users are many and mostly light (``requests_per_user`` ~ Poisson(4), at least ``min_requests``), as in a
  real feed, which also gives a sequence model many independent click sequences for the log's size;
* requests are generated in per-user order (request ``k`` of every user at once, chunked), so the clicks of
  a request shape the exposures of the next one. Each request exposes ``page_size`` distinct items:

  - *relevant* slots (``relevant_frac`` of the page): with probability ``revisit_prob`` (when the user has a
    recent click) a uniformly drawn neighbour of one of the user's recent clicks, the anchor click picked
    with weight ``anchor_decay ** age`` (age 0 = the latest click): the "more like what you just clicked"
    row of a real feed; otherwise a topic drawn from the current interest and an item uniform within it;
  - *popular* slots (``popular_frac``): an item drawn by its Zipf popularity (``popularity_exponent``), so
    popularity still exists and MostPop is a meaningful floor;
  - *random* slots (the rest): uniform exploration;
  - repeated items within a page are redrawn uniformly; the page is ranked by a noisy view of the
    preference ``<interest, m_i> + N(0, rank_noise)``, and the rank is the ``position``;
* a click is drawn from ``sigmoid(click_bias + click_weight * <interest, m_i> + quality_i
  + neighbour_click_bonus * [i is a neighbour of a recent click] - position_bias * position)``: users keep
  clicking by their drifting taste and item quality, and are more likely to click what continues their
  recent session; an order (only of a clicked item) from ``sigmoid(order_bias + order_weight *
  <interest, m_i> + quality_i)``, so order ⊂ click ⊂ expose;
* a user's requests fall at distinct, increasing, uniformly spread times over ``days`` calendar days (UTC),
  so the last-day split works; request ids are renumbered by time across users.

Pages hold several positives (about 2.7 per page with the defaults) that change from page to page: the
one-to-many setting page-wise generation is for. The defaults give ~196k log rows (14.5k requests of 3,500
users over 1,000 items) in a fraction of a second; ``SyntheticConfig().scaled(1_000_000)`` takes about a
second.

What it buys (seed 0, default config, last-day test split, HR@10 / NDCG@10): the first version gave MostPop
0.189 / 0.063, SASRec 0.182 / 0.063 and an Oracle (same approximations) 0.222 / 0.077 (little personal to
learn); this one gives
MostPop ~0.20 / 0.068, SASRec ~0.42 / 0.14 and the Oracle ~0.76 / 0.32.

The Oracle's truth
------------------
:meth:`SyntheticData.positive_probability` gives, for any request, the generator's probability that each item
is a positive (exposed and clicked), from the same distributions the generator sampled: the user's interest at
that request, the per-slot candidate distributions (neighbours of the recent clicks the request saw, topics,
popularity, uniform), quality and the click model. Two documented approximations make it tractable: the page
is treated as independent slot draws (``P(exposed) = 1 - prod_slots (1 - q_slot(i))``, ignoring the uniform
redraw of in-page duplicates), and the position in the click model is the item's expected rank, ``(P - 1)``
times the page-candidate mass with a higher preference (the ranking noise ignored). Per request it keeps the
user, its interest weight and the anchor items (the recent clicks the request saw).

Knobs
-----
Added for the sequential structure (see :class:`SyntheticConfig`): ``num_neighbours`` (K, the size of an
item's neighbourhood: small = a more predictable next item), ``recent_clicks`` (L, the user's memory),
``revisit_prob`` (how much of the relevant part of a page continues the session), ``anchor_decay`` (how much
the latest click dominates older ones), ``neighbour_click_bonus`` (clicks depend on closeness to the recent
clicks, not only on the topic taste), ``rank_noise`` (was a constant 0.15). ``revisit_prob=0`` with
``neighbour_click_bonus=0`` gives back the first version's exposure and click model (in per-user order).
Defaults changed with them: ``num_items`` 2000 -> 1000 and ``num_users`` 1000 -> 3500 with
``requests_per_user`` 10 -> 4 (about the same log size, but more and lighter users: enough clicks per item and
enough independent sequences that an item-ID sequence model learns the neighbourhoods within the harness's
training budget), ``click_bias`` -2.0 -> -2.2 (neighbourhood exposures are clicked more; this keeps ~2.7
positives per page).
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
_CHUNK_REQUESTS = 32_768  # bounds the [requests, page, ...] temporaries; part of the seeded stream
_CHUNK_ITEMS = 4_096  # rows per block of the item-item distance matrix (neighbours)

_TOPIC_WORDS = ("solar", "garden", "kitchen", "audio", "camping", "vintage", "coffee", "fitness", "baby", "pet",
                "office", "gaming", "travel", "winter", "ocean", "craft", "auto", "bath", "tea", "yoga", "lab",
                "bike", "desk", "party")
_ADJECTIVES = ("compact", "deluxe", "classic", "smart", "portable", "organic", "rustic", "modern", "premium",
               "mini", "heavy-duty", "eco", "wireless", "bold", "soft", "bright", "folding", "magnetic")
_NOUNS = ("kit", "lamp", "bottle", "set", "bag", "mat", "stand", "case", "brush", "light", "mug", "speaker",
          "tool", "pack", "box", "holder", "cable", "cover")


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic world (see the module docstring); the defaults make a small log (~196k rows)
    for tests and the demo.

    Use :meth:`scaled` for a log of a given size (e.g. ``SyntheticConfig().scaled(1_000_000)``).
    """

    num_items: int = 1000
    num_users: int = 3500
    requests_per_user: float = 4.0  # Poisson mean; every user gets at least `min_requests`
    min_requests: int = 2
    page_size: int = 10  # P, items exposed per request
    num_topics: int = 20
    embedding_dim: int = 32
    days: int = 7
    start_ts: int = 1_704_067_200  # 2024-01-01 00:00:00 UTC, a day boundary
    relevant_frac: float = 0.5  # of the page drawn from the user's recent clicks and current topics
    popular_frac: float = 0.3  # drawn by popularity; the rest uniformly at random
    interest_concentration: float = 0.3  # Dirichlet alpha of user mixtures: small = few topics per user
    drift: float = 0.6  # how far a user's mixture moves towards its end mixture by the last request
    popularity_exponent: float = 1.0  # Zipf exponent of item popularity
    # Sequential structure: a relevant slot revisits the neighbourhood of a recent click.
    num_neighbours: int = 5  # K: an item's nearest items in the latent mixture space
    recent_clicks: int = 5  # L: how many of the user's last clicked items can anchor a relevant slot
    revisit_prob: float = 0.7  # P(a relevant slot picks a neighbour of a recent click | the user has one)
    anchor_decay: float = 0.6  # anchor weight = anchor_decay ** age (age 0 = latest click); 1 = uniform
    neighbour_click_bonus: float = 1.0  # click logit added to neighbours of a recent click
    rank_noise: float = 0.15  # std of the noise on the preference that orders the page (position = rank)
    click_bias: float = -2.2
    click_weight: float = 12.0
    position_bias: float = 0.08
    order_bias: float = -1.5
    order_weight: float = 3.0
    quality_std: float = 0.5
    embedding_noise: float = 0.1
    seed: int = 0

    #: Approximate log rows per expose with the default rates (P exposes + ~2.75 clicks + ~0.8 orders).
    ROWS_PER_EXPOSE = 1.35

    def __post_init__(self) -> None:
        for name in ("num_items", "num_users", "page_size", "num_topics", "embedding_dim", "days", "min_requests",
                     "num_neighbours", "recent_clicks"):
            if getattr(self, name) < 1:
                raise ValueError(f"SyntheticConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_items < 2 * self.page_size:
            raise ValueError(f"SyntheticConfig.num_items={self.num_items} must be >= 2 * page_size="
                             f"{2 * self.page_size} (a page exposes distinct items)")
        if self.num_neighbours >= self.num_items:
            raise ValueError(f"SyntheticConfig.num_neighbours={self.num_neighbours} must be < num_items="
                             f"{self.num_items}")
        if not (0 <= self.relevant_frac and 0 <= self.popular_frac and self.relevant_frac + self.popular_frac <= 1):
            raise ValueError(f"SyntheticConfig: relevant_frac={self.relevant_frac} and popular_frac="
                             f"{self.popular_frac} must be >= 0 with a sum <= 1")
        if self.requests_per_user <= 0 or self.interest_concentration <= 0:
            raise ValueError("SyntheticConfig: requests_per_user and interest_concentration must be > 0")
        for name in ("drift", "revisit_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"SyntheticConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.anchor_decay <= 1:
            raise ValueError(f"SyntheticConfig.anchor_decay must be in (0, 1], got {self.anchor_decay}")
        if self.rank_noise < 0:
            raise ValueError(f"SyntheticConfig.rank_noise must be >= 0, got {self.rank_noise}")

    @property
    def slots(self) -> tuple[int, int, int]:
        """Relevant, popular and random slots of a page."""
        n_rel = round(self.page_size * self.relevant_frac)
        n_pop = min(self.page_size - n_rel, round(self.page_size * self.popular_frac))
        return n_rel, n_pop, self.page_size - n_rel - n_pop

    @property
    def mean_requests(self) -> float:
        """Expected requests per user, ``E[max(Poisson(requests_per_user), min_requests)]``."""
        lam, m = self.requests_per_user, self.min_requests
        pmf = [math.exp(-lam + n * math.log(lam) - math.lgamma(n + 1)) for n in range(m)]
        return lam + sum((m - n) * p for n, p in enumerate(pmf))

    def scaled(self, rows: int) -> SyntheticConfig:
        """The same world with as many users as give about ``rows`` log rows."""
        per_user = self.mean_requests * self.page_size * self.ROWS_PER_EXPOSE
        return replace(self, num_users=max(1, math.ceil(rows / per_user)))


@dataclass(frozen=True, eq=False)
class SyntheticData:
    """A generated log and its item catalogue, with the latent truth kept for analysis and the Oracle.

    Arrays indexed by request are indexed by the raw ``request_id`` (the generator numbers requests
    ``0..R-1`` by time).
    """

    logs: pa.Table  # user_id, request_id, item_id, action, ts, position
    catalog: ItemCatalog  # ids, text {title, brand, categories}, embeddings float32 [I, D]
    config: SyntheticConfig
    item_topic: np.ndarray  # int64 [I] main topic
    item_mixture: np.ndarray  # float32 [I, T] latent topic vectors m_i
    user_interest: np.ndarray  # float32 [U, 2, T] each user's first and last interest mixture (user_id = row)
    item_quality: np.ndarray | None = None  # float32 [I] click/order logit offset
    item_popularity: np.ndarray | None = None  # float64 [I] popular-slot probabilities (sum 1)
    item_neighbours: np.ndarray | None = None  # int32 [I, K] nearest items in mixture space, nearest first
    request_user: np.ndarray | None = None  # int32 [R] the user (= user_id) of each request
    request_weight: np.ndarray | None = None  # float32 [R] interest = (1 - w) * start + w * end
    request_anchors: np.ndarray | None = None  # int32 [R, L] the user's recent clicks at the request, oldest
    # first, -1 = none (right-aligned: the latest click is the last column)

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

    def interest(self, request_ids: np.ndarray) -> np.ndarray:
        """The users' interest mixtures at the given requests: float32 ``[R, T]``."""
        r = self._requests(request_ids)
        u, w = self.request_user[r], self.request_weight[r][:, None]
        return ((1 - w) * self.user_interest[u, 0] + w * self.user_interest[u, 1]).astype(np.float32)

    def positive_probability(self, request_ids: np.ndarray) -> np.ndarray:
        """The generator's probability that each item is a positive (exposed and clicked) of each request.

        ``request_ids``: raw ``request_id`` values ``[R]``. Returns float32 ``[R, I]``. Computed from the
        request's own sampling distributions (interest, recent-click neighbourhoods, topics, popularity,
        quality, click model), with two approximations (see the module docstring): independent slot draws
        (duplicates' uniform redraw ignored) and the item's expected position. Memory is a few ``[R, I]``
        float64 arrays: call it on chunks of ~1000 requests.
        """
        cfg = self.config
        r = self._requests(request_ids)
        I, P, K = cfg.num_items, cfg.page_size, cfg.num_neighbours
        n_rel, n_pop, n_rnd = cfg.slots
        R = len(r)
        theta = self.interest(r).astype(np.float64)
        aff = theta @ self.item_mixture.T.astype(np.float64)  # [R, I]
        # Relevant slot, topic branch: theta_t / |topic t| per item; topics without items fall back to uniform.
        count = np.bincount(self.item_topic, minlength=cfg.num_topics)
        q_topic = theta[:, self.item_topic] / np.maximum(count[self.item_topic], 1)
        q_topic += theta[:, count == 0].sum(1, keepdims=True) / I
        # Relevant slot, revisit branch: anchor weights x uniform over the anchor's K neighbours.
        anchors = self.request_anchors[r].astype(np.int64)
        aw = _anchor_weights(anchors, cfg.anchor_decay)  # [R, L], rows sum to 1 or 0
        has = aw.sum(1) > 0
        nb = self.item_neighbours[np.maximum(anchors, 0)]  # [R, L, K]
        rows = np.broadcast_to(np.arange(R)[:, None, None], nb.shape)
        flat = (rows * I + nb).ravel()
        q_nb = np.bincount(flat, weights=np.broadcast_to(aw[:, :, None] / K, nb.shape).ravel(),
                           minlength=R * I).reshape(R, I)
        near = np.bincount(flat, weights=np.broadcast_to((anchors >= 0)[:, :, None], nb.shape).ravel(),
                           minlength=R * I).reshape(R, I) > 0
        rev = cfg.revisit_prob * has[:, None]
        q_rel = rev * q_nb + (1 - rev) * q_topic
        q_pop = self.item_popularity[None, :]
        log_miss = (n_rel * np.log1p(-np.minimum(q_rel, 1 - 1e-12)) + n_pop * np.log1p(-np.minimum(q_pop, 1 - 1e-12))
                    + n_rnd * math.log1p(-1.0 / I))
        p_expose = -np.expm1(log_miss)
        # Expected position: (P - 1) x the page-candidate mass ranked above the item (ranking noise ignored).
        q_page = (n_rel * q_rel + n_pop * q_pop + n_rnd / I) / P
        order = np.argsort(-aff, axis=1, kind="stable")
        mass = np.cumsum(np.take_along_axis(q_page, order, 1), axis=1) - np.take_along_axis(q_page, order, 1)
        above = np.empty_like(mass)
        np.put_along_axis(above, order, mass, 1)
        position = (P - 1) * np.clip(above, 0.0, 1.0)
        logit = (cfg.click_bias + cfg.click_weight * aff + self.item_quality[None, :].astype(np.float64)
                 + cfg.neighbour_click_bonus * near - cfg.position_bias * position)
        return (p_expose * _sigmoid(logit)).astype(np.float32)

    def _requests(self, request_ids: np.ndarray) -> np.ndarray:
        if self.request_user is None:
            raise ValueError("this SyntheticData has no per-request truth (build it with generate_synthetic)")
        r = np.asarray(request_ids, dtype=np.int64).reshape(-1)
        if len(r) and (r.min() < 0 or r.max() >= len(self.request_user)):
            raise ValueError(f"request_ids must be in [0, {len(self.request_user)}), got range "
                             f"[{r.min()}, {r.max()}]")
        return r


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


def _neighbours(mixture: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest items of every item in mixture space (Euclidean, itself excluded), nearest first
    (ties: lower index): int32 ``[I, k]``, computed in blocks of rows."""
    m = mixture.astype(np.float64)
    sq = (m * m).sum(1)
    I = len(m)
    out = np.empty((I, k), dtype=np.int32)
    for a in range(0, I, _CHUNK_ITEMS):
        b = min(a + _CHUNK_ITEMS, I)
        d = sq[a:b, None] + sq[None, :] - 2.0 * (m[a:b] @ m.T)
        d[np.arange(b - a), np.arange(a, b)] = np.inf
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        o = np.lexsort((part, np.take_along_axis(d, part, 1)), axis=1)
        out[a:b] = np.take_along_axis(part, o, 1)
    return out


def _anchor_weights(anchors: np.ndarray, decay: float) -> np.ndarray:
    """Normalised anchor weights ``decay ** age`` of right-aligned recent clicks ``[N, L]`` (-1 = none; the
    last column is the latest click): float64 ``[N, L]``, all-zero rows for users without clicks."""
    L = anchors.shape[1]
    w = np.where(anchors >= 0, decay ** np.arange(L - 1, -1, -1, dtype=np.float64), 0.0)
    total = w.sum(1, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


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


def _pick(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    """``n`` draws per row from unnormalised ``weights [C, W]`` (rows with positive sum): int64 ``[C, n]``."""
    cdf = np.cumsum(weights, axis=1)
    u = rng.random((len(weights), n, 1)) * cdf[:, -1:, None]
    return np.minimum((u > cdf[:, None, :]).sum(-1), weights.shape[1] - 1)


def generate_synthetic(config: SyntheticConfig | None = None, *, progress: bool = False) -> SyntheticData:
    """Generate a seeded synthetic page log (see the module docstring); deterministic for a config."""
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    I, T, P, U = cfg.num_items, cfg.num_topics, cfg.page_size, cfg.num_users
    K, L = cfg.num_neighbours, cfg.recent_clicks
    n_rel, n_pop, n_rnd = cfg.slots

    # Items: main topic, latent mixture, quality, popularity, neighbours, embedding, text.
    item_topic = rng.integers(T, size=I)
    main_w = rng.uniform(0.6, 0.9, size=(I, 1))
    mixture = (main_w * np.eye(T)[item_topic] + (1 - main_w) * _dirichlet(rng, 1.0, I, T)).astype(np.float32)
    quality = rng.normal(0.0, cfg.quality_std, size=I).astype(np.float32)
    popularity = (rng.permutation(I).astype(np.float64) + 1.0) ** -cfg.popularity_exponent
    pop_cdf = np.cumsum(popularity)
    popularity /= pop_cdf[-1]
    neighbours = _neighbours(mixture, K)
    proj = rng.normal(0.0, 1.0, size=(T, cfg.embedding_dim))
    embeddings = mixture @ proj
    embeddings += cfg.embedding_noise * embeddings.std() * rng.normal(size=embeddings.shape)
    titles, categories = _titles(rng, item_topic, T)
    brands = np.array([f"Brand{b:02d}" for b in range(50)], dtype=object)[rng.integers(50, size=I)]
    by_topic = np.argsort(item_topic, kind="stable")
    topic_count = np.bincount(item_topic, minlength=T)
    topic_start = np.concatenate([[0], np.cumsum(topic_count)[:-1]])

    # Users and their requests. Pair f = first[u] + k is user u's k-th request; its times are distinct and
    # increasing within the user, spread uniformly over the days; request ids number all pairs by time.
    theta_start = _dirichlet(rng, cfg.interest_concentration, U, T)
    theta_end = _dirichlet(rng, cfg.interest_concentration, U, T)
    n_req = np.maximum(rng.poisson(cfg.requests_per_user, size=U), cfg.min_requests)
    R = int(n_req.sum())
    span = cfg.days * 86_400
    pair_user = np.repeat(np.arange(U), n_req)
    first = np.concatenate([[0], np.cumsum(n_req)[:-1]])
    pair_k = np.arange(R) - first[pair_user]
    room = np.maximum(span - n_req[pair_user], 1)
    pair_t = np.sort(rng.integers(0, room) + pair_user.astype(np.int64) * span)  # sorted within each user
    pair_t = pair_t - pair_user.astype(np.int64) * span + pair_k  # distinct and increasing, < span
    pair_w = (cfg.drift * pair_k / np.maximum(n_req[pair_user] - 1, 1)).astype(np.float32)
    by_time = np.lexsort((pair_user, pair_t))
    request_id = np.empty(R, dtype=np.int64)
    request_id[by_time] = np.arange(R)

    recent = np.full((U, L), -1, dtype=np.int64)  # each user's last L clicks, right-aligned (latest last)
    req_anchor = np.empty((R, L), dtype=np.int32)
    cols = ("user", "request", "item", "action", "ts", "position")
    parts: dict[str, list[np.ndarray]] = {c: [] for c in cols}
    max_k = int(n_req.max())
    bar = tqdm(total=R, desc="synthetic requests", unit="req", disable=not progress, leave=False)
    for k in range(max_k):
        active = np.flatnonzero(n_req > k)
        for c0 in range(0, len(active), _CHUNK_REQUESTS):
            users = active[c0:c0 + _CHUNK_REQUESTS]
            C, f = len(users), first[users] + k
            ww = pair_w[f, None].astype(np.float64)
            theta = (1 - ww) * theta_start[users] + ww * theta_end[users]
            anchors = recent[users]
            req_anchor[f] = anchors
            # Relevant slots: a neighbour of a recent click (revisit) or an item uniform within a topic drawn
            # from the current interest (random if the topic has no item).
            topic = _pick(rng, theta, n_rel)
            cnt = topic_count[topic]
            rel = by_topic[np.minimum(topic_start[topic] + (rng.random((C, n_rel)) * cnt).astype(np.int64), I - 1)]
            rel = np.where(cnt > 0, rel, rng.integers(I, size=(C, n_rel)))
            aw = _anchor_weights(anchors, cfg.anchor_decay)
            has = aw.sum(1) > 0
            revisit = (rng.random((C, n_rel)) < cfg.revisit_prob) & has[:, None]
            slot = _pick(rng, np.where(has[:, None], aw, 1.0), n_rel)
            anchor = np.maximum(np.take_along_axis(anchors, slot, 1), 0)
            nb = neighbours[anchor, rng.integers(K, size=(C, n_rel))]
            rel = np.where(revisit, nb, rel)
            pop = np.searchsorted(pop_cdf, rng.random((C, n_pop)) * pop_cdf[-1], side="right")
            rnd = rng.integers(I, size=(C, n_rnd))
            page = _distinct_rows(rng, np.concatenate([rel, pop, rnd], axis=1).astype(np.int64), I)
            affinity = np.einsum("cpt,ct->cp", mixture[page], theta.astype(np.float32))
            # The recommender ranks by a noisy view of the preference; position = rank.
            rank = np.argsort(-(affinity + rng.normal(0.0, cfg.rank_noise, size=(C, P))), axis=1)
            page = np.take_along_axis(page, rank, axis=1)
            affinity = np.take_along_axis(affinity, rank, axis=1)
            position = np.broadcast_to(np.arange(P), (C, P))
            # Closeness to the session: is the item a neighbour of one of the recent clicks?
            nb_set = np.where((anchors >= 0)[:, :, None], neighbours[np.maximum(anchors, 0)], -1).reshape(C, L * K)
            near = (page[:, :, None] == nb_set[:, None, :]).any(-1)
            click = rng.random((C, P)) < _sigmoid(cfg.click_bias + cfg.click_weight * affinity + quality[page]
                                                  + cfg.neighbour_click_bonus * near - cfg.position_bias * position)
            order = click & (rng.random((C, P)) < _sigmoid(cfg.order_bias + cfg.order_weight * affinity
                                                           + quality[page]))
            t_expose = cfg.start_ts + pair_t[f, None]
            t_click = t_expose + rng.integers(2, 120, size=(C, P))
            t_order = t_click + rng.integers(30, 900, size=(C, P))
            # The user's memory: append this page's clicks in click-time order, keep the last L.
            key = np.concatenate([np.where(anchors >= 0, np.arange(L), -1),
                                  np.where(click, L + np.argsort(np.argsort(t_click * P + position, axis=1), axis=1),
                                           -1)], axis=1)
            merged = np.concatenate([anchors, np.where(click, page, -1)], axis=1)
            recent[users] = np.take_along_axis(merged, np.argsort(key, axis=1, kind="stable")[:, -L:], axis=1)
            request = np.broadcast_to(request_id[f, None], (C, P))
            for mask, code, t in ((np.ones((C, P), dtype=bool), EXPOSE, np.broadcast_to(t_expose, (C, P))),
                                  (click, CLICK, t_click), (order, ORDER, t_order)):
                parts["user"].append(np.broadcast_to(users[:, None], (C, P))[mask])
                parts["request"].append(request[mask])
                parts["item"].append(page[mask])
                parts["action"].append(np.full(int(mask.sum()), code, dtype=np.int8))
                parts["ts"].append(t[mask])
                parts["position"].append(position[mask])
            bar.update(C)
    bar.close()

    data = {c: np.concatenate(v) for c, v in parts.items()}
    # Time-ordered log, as a real one would be.
    o = np.lexsort((data["position"], data["action"], data["request"], data["ts"]))
    actions = pa.DictionaryArray.from_arrays(pa.array(data["action"][o]), pa.array(ACTIONS)).cast(pa.string())
    logs = pa.table({
        "user_id": pa.array(data["user"][o].astype(np.int64)),
        "request_id": pa.array(data["request"][o].astype(np.int64)),
        "item_id": pa.array(data["item"][o] + ITEM_ID_BASE),
        "action": actions,
        "ts": pa.array(data["ts"][o].astype(np.int64)),
        "position": pa.array(data["position"][o].astype(np.int32)),
    })
    catalog = ItemCatalog(
        ITEM_ID_BASE + np.arange(I, dtype=np.int64),
        {"title": titles, "brand": brands, "categories": categories},
        embeddings.astype(np.float32),
    )
    interest = np.stack([theta_start, theta_end], axis=1).astype(np.float32)
    return SyntheticData(
        logs, catalog, cfg, item_topic.astype(np.int64), mixture, interest,
        item_quality=quality, item_popularity=popularity, item_neighbours=neighbours,
        request_user=pair_user[by_time].astype(np.int32), request_weight=pair_w[by_time],
        request_anchors=req_anchor[by_time],
    )
