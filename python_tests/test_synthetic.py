"""Synthetic page-log generator: determinism, structure (order ⊂ click ⊂ expose), one-to-many pages."""

from __future__ import annotations

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

SMALL = SyntheticConfig(num_items=500, num_users=200, seed=3)


@pytest.fixture(scope="module")
def syn():
    return generate_synthetic(SMALL)


def test_deterministic_for_a_seed(syn):
    again = generate_synthetic(SMALL)
    assert again.logs.equals(syn.logs)
    assert np.array_equal(again.catalog.embeddings, syn.catalog.embeddings)
    assert again.catalog.text["title"].tolist() == syn.catalog.text["title"].tolist()
    other = generate_synthetic(SyntheticConfig(num_items=500, num_users=200, seed=4))
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
    assert st.mean_positives > 1.5 and st.skipped_no_positive == 0 and st.samples > 0.8 * st.pages
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
    big = SyntheticConfig().scaled(1_000_000)
    assert 5_000 < big.num_users < 10_000
    small = generate_synthetic(SyntheticConfig(num_users=300).scaled(30_000))
    assert 20_000 < small.logs.num_rows < 45_000
