"""Synthetic page-log generator: determinism, structure (order ⊂ click ⊂ expose), one-to-many pages, the
sequential structure (exposures near recent clicks) and the Oracle's ``positive_probability``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from genrec_ext.data import (
    ItemCatalog,
    SyntheticConfig,
    build_page_samples,
    generate_synthetic,
    read_logs,
    time_split,
)

SMALL = SyntheticConfig(num_items=500, num_users=600, seed=3)


@pytest.fixture(scope="module")
def syn():
    return generate_synthetic(SMALL)


def test_deterministic_for_a_seed(syn):
    again = generate_synthetic(SMALL)
    assert again.logs.equals(syn.logs)
    assert np.array_equal(again.catalog.embeddings, syn.catalog.embeddings)
    assert again.catalog.text["title"].tolist() == syn.catalog.text["title"].tolist()
    for name in ("item_neighbours", "item_quality", "item_popularity", "request_user", "request_weight",
                 "request_anchors"):
        assert np.array_equal(getattr(again, name), getattr(syn, name)), name
    other = generate_synthetic(replace(SMALL, seed=4))
    assert not other.logs.equals(syn.logs)


def test_schema_and_catalog(syn):
    cfg = syn.config
    assert syn.logs.column_names == ["user_id", "request_id", "item_id", "action", "ts", "position"]
    log = syn.log()
    assert set(np.unique(log.action).tolist()) == {0, 1, 2}
    cat = syn.catalog
    assert len(cat) == cfg.num_items and cat.embeddings.shape == (cfg.num_items, cfg.embedding_dim)
    assert cat.embeddings.dtype == np.float32 and np.isfinite(cat.embeddings).all()
    titles = cat.text["title"]
    assert all(len(t.split(" ")) == 3 for t in titles)
    # The title's middle word and the category name the item's main topic.
    assert all(t.split(" ")[1] == c.lower() for t, c in zip(titles, cat.text["categories"]))
    assert len(set(cat.text["categories"][syn.item_topic == 0])) == 1
    assert syn.item_mixture.shape == (cfg.num_items, cfg.num_topics)
    np.testing.assert_allclose(syn.item_mixture.sum(1), 1.0, rtol=1e-5)
    # Every item of the log is in the catalogue (raw ids are not the dense indices).
    idx = cat.index(log.item)
    assert idx.min() >= 0 and not np.array_equal(idx, log.item.to_numpy())


def test_order_in_click_in_expose_and_distinct_pages(syn):
    log = syn.log()
    item = syn.catalog.index(log.item)
    key = log.request * syn.config.num_items + item
    exposed, clicked, ordered = (np.unique(key[log.action == a]) for a in (0, 1, 2))
    assert np.isin(ordered, clicked).all() and np.isin(clicked, exposed).all()
    # Each request exposes page_size distinct items, once each, and belongs to one user.
    assert len(exposed) == int((log.action == 0).sum())
    assert (np.bincount(log.request[log.action == 0]) == syn.config.page_size).all()
    pairs = np.unique(log.request * len(log.user_ids) + log.user)
    assert len(pairs) == len(log.request_ids)
    # Clicks come after the exposure, orders after the click.
    ts = log.ts
    first = np.full(len(log.request_ids), np.inf)
    np.minimum.at(first, log.request, ts)
    assert (ts[log.action > 0] > first[log.request[log.action > 0]]).all()


def test_several_and_varied_positives_per_page(syn):
    samples = build_page_samples(syn.log(), syn.catalog)
    st = samples.stats
    # A user's first request has no history (about 1 / mean_requests of the pages are skipped).
    assert st.mean_positives > 1.5 and st.skipped_no_positive == 0 and st.samples > 0.65 * st.pages
    # Raw log: clicked-or-ordered items per request, over every page.
    log = syn.log()
    pos = np.unique(log.request[log.action > 0] * syn.config.num_items
                    + syn.catalog.index(log.item.filter(log.action > 0)))
    assert len(pos) / len(log.request_ids) > 1.5
    # A user's pages have different positives (mean Jaccard of positive sets between a user's pages).
    jac = []
    for u in range(50):
        sets = [set(samples.positives[i].tolist()) for i in np.flatnonzero(samples.user == u)]
        sets = [x for x in sets if x]
        jac += [len(a & b) / len(a | b) for k, a in enumerate(sets) for b in sets[k + 1:]]
    assert np.mean(jac) < 0.1
    # Clicks follow the latent preference: clicked items match the user's interest better than the rest.
    item = syn.catalog.index(log.item)
    interest = syn.user_interest.mean(axis=1)[log.user_ids[log.user]]
    affinity = (interest * syn.item_mixture[item]).sum(1)
    clicked = np.isin(log.request * syn.config.num_items + item, pos)
    assert affinity[clicked].mean() > 1.5 * affinity[~clicked].mean()


def test_last_day_split_and_parquet_round_trip(syn, tmp_path):
    ts = syn.logs.column("ts").to_numpy()
    days = np.unique((ts - syn.config.start_ts) // 86_400)
    assert days.min() == 0 and days.max() >= syn.config.days - 1
    samples = build_page_samples(syn.log(), syn.catalog)
    sp = time_split(samples)
    assert len(sp.test) > 0.05 * len(samples) and len(sp.train) > 0.6 * len(samples)
    assert sp.test_start == syn.config.start_ts + (syn.config.days - 1) * 86_400
    paths = syn.write_parquet(tmp_path)
    assert sorted(p.name for p in paths.values()) == ["item_embeddings.npy", "items.parquet", "logs.parquet"]
    log = read_logs(paths["logs"])
    cat = ItemCatalog.load(tmp_path)
    assert cat.ids.tolist() == syn.catalog.ids.tolist() and np.array_equal(cat.embeddings, syn.catalog.embeddings)
    again = build_page_samples(log, cat)
    assert np.array_equal(again.history.to_csr()[1], samples.history.to_csr()[1])
    assert np.array_equal(again.target_actions.to_csr()[1], samples.target_actions.to_csr()[1])


def test_config_validation_and_scaling():
    with pytest.raises(ValueError, match=r"num_items=15 must be >= 2 \* page_size=20"):
        SyntheticConfig(num_items=15)
    with pytest.raises(ValueError, match="relevant_frac=0.8 and popular_frac=0.3"):
        SyntheticConfig(relevant_frac=0.8)
    with pytest.raises(ValueError, match="num_neighbours=500 must be < num_items=500"):
        SyntheticConfig(num_items=500, num_neighbours=500)
    with pytest.raises(ValueError, match="revisit_prob must be in"):
        SyntheticConfig(revisit_prob=1.5)
    with pytest.raises(ValueError, match="anchor_decay must be in"):
        SyntheticConfig(anchor_decay=0.0)
    cfg = SyntheticConfig()
    big = cfg.scaled(1_000_000)
    assert abs(big.num_users * cfg.mean_requests * cfg.page_size * cfg.ROWS_PER_EXPOSE / 1e6 - 1) < 0.01
    assert 10_000 < big.num_users < 30_000
    small = generate_synthetic(SyntheticConfig(num_users=300).scaled(30_000))
    assert 27_000 < small.logs.num_rows < 33_000


# ------------------------------------------------------------------------------- sequential structure


def _request_rows(syn):
    """Per raw request id: its page ``[R, P]`` (exposed items by position) and its positives bool ``[R, I]``."""
    log = syn.log()
    rid = log.request_ids[log.request]
    item = syn.catalog.index(log.item)
    R, P, I = len(log.request_ids), syn.config.page_size, syn.config.num_items
    assert np.array_equal(np.sort(log.request_ids), np.arange(R))
    exp = log.action == 0
    o = np.lexsort((log.position[exp], rid[exp]))
    page = item[exp][o].reshape(R, P)
    positive = np.zeros((R, I), dtype=bool)
    positive[rid[~exp], item[~exp]] = True
    return page, positive


def test_per_request_truth_matches_the_log(syn):
    cfg, log = syn.config, syn.log()
    R, L = len(log.request_ids), cfg.recent_clicks
    assert syn.item_neighbours.shape == (cfg.num_items, cfg.num_neighbours)
    assert (syn.item_neighbours != np.arange(cfg.num_items)[:, None]).all()  # an item is not its own neighbour
    # Neighbours are the nearest items in mixture space, nearest first.
    m = syn.item_mixture.astype(np.float64)
    d = ((m[:50, None, :] - m[None, :, :]) ** 2).sum(-1)
    d[np.arange(50), np.arange(50)] = np.inf
    nb_d = np.take_along_axis(d, syn.item_neighbours[:50].astype(np.int64), 1)
    assert (np.diff(nb_d, axis=1) >= -1e-12).all()
    assert (nb_d[:, -1] <= np.sort(d, 1)[:, cfg.num_neighbours - 1] + 1e-12).all()
    np.testing.assert_allclose(syn.item_popularity.sum(), 1.0)
    assert syn.request_user.shape == (R,) and syn.request_weight.shape == (R,)
    assert syn.request_anchors.shape == (R, L)
    user_of = np.zeros(R, dtype=np.int64)
    user_of[log.request_ids[log.request]] = log.user_ids[log.user]
    assert np.array_equal(syn.request_user, user_of)
    assert syn.request_weight.min() >= 0 and syn.request_weight.max() <= cfg.drift + 1e-6
    # A request's anchors are the user's last L clicked items before it, as the page samples' history has them.
    samples = build_page_samples(log, syn.catalog, max_history=None)
    rid = samples.request_ids[samples.request]
    for i in range(0, len(samples), 7):
        h = samples.history[i][-L:]
        a = syn.request_anchors[rid[i]]
        assert a[:L - len(h)].tolist() == [-1] * (L - len(h)) and a[L - len(h):].tolist() == h.tolist()
    # A user's requests have increasing times (the clicks of one shape the exposures of the next).
    first_ts = np.full(R, np.iinfo(np.int64).max)
    np.minimum.at(first_ts, log.request_ids[log.request], log.ts)
    for u in range(20):
        t = first_ts[syn.request_user == u]
        assert (np.diff(t) > 0).all()


def test_exposures_revisit_the_neighbourhood_of_recent_clicks(syn):
    cfg = syn.config
    page, positive = _request_rows(syn)
    anchors = syn.request_anchors.astype(np.int64)
    has = (anchors >= 0).any(1)

    def near_share(anchor_rows):
        nb = np.where((anchor_rows >= 0)[:, :, None], syn.item_neighbours[np.maximum(anchor_rows, 0)], -1)
        nb = nb.reshape(len(nb), -1)
        near = (page[has][:, :, None] == nb[:, None, :]).any(-1)
        return near.mean(), near

    share, near = near_share(anchors[has])
    rng = np.random.default_rng(0)
    chance, _ = near_share(anchors[has][rng.permutation(int(has.sum()))])  # another request's recent clicks
    n_rel = cfg.slots[0]
    # About revisit_prob of the relevant slots revisit a neighbourhood: far above chance.
    assert share > 0.5 * cfg.revisit_prob * n_rel / cfg.page_size and share > 5 * chance
    # ... and those exposures are clicked more often than the rest of the page.
    pos = positive[np.flatnonzero(has)[:, None], page[has]]
    assert pos[near].mean() > 1.5 * pos[~near].mean()


def test_positive_probability_is_the_worlds_truth(syn):
    cfg = syn.config
    page, positive = _request_rows(syn)
    R = len(page)
    rng = np.random.default_rng(1)
    req = np.sort(rng.choice(R, size=min(R, 400), replace=False))
    p = syn.positive_probability(req)
    assert p.shape == (len(req), cfg.num_items) and p.dtype == np.float32
    assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1
    # Chunks give the same answer; ids out of range are refused.
    np.testing.assert_allclose(syn.positive_probability(req[:37]), p[:37], rtol=1e-6)
    with pytest.raises(ValueError, match="request_ids must be in"):
        syn.positive_probability(np.array([R]))
    # Expected positives per page match the realised ones.
    realised = positive[req].sum(1).mean()
    assert abs(p.sum(1).mean() / realised - 1) < 0.1
    # It ranks the realised positives far above the other items (AUC per request with a positive).
    pos = positive[req]
    aucs = []
    for row, is_pos in zip(p, pos):
        if is_pos.any():
            rank = np.argsort(np.argsort(row, kind="stable"), kind="stable")
            n_pos = int(is_pos.sum())
            aucs.append((rank[is_pos].sum() - n_pos * (n_pos - 1) / 2) / (n_pos * (len(row) - n_pos)))
    assert np.mean(aucs) > 0.85
    # Top items are more often positives than popular ones: it is personal.
    top = np.argsort(-p, axis=1)[:, :10]
    pop_top = np.argsort(-syn.item_popularity)[:10]
    assert np.take_along_axis(pos, top, 1).any(1).mean() > 1.5 * pos[:, pop_top].any(1).mean()
