"""Semantic IDs: RQ K-means training, collision resolution, the SID table format, the trie, embeddings."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from genrec_ext.cli import main
from genrec_ext.data import ItemCatalog, generate_synthetic, load_lcrec_catalog
from genrec_ext.sid import RQCodebooks, RQKMeansConfig, SIDLookup, SIDTable, SIDTrie, build_sid_table, train_rq_kmeans
from genrec_ext.sid.embed import check_finite, embed_texts, item_texts, load_npy_embeddings, load_text_encoder

SCIENTIFIC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon18-scientific"


def clustered(n=3000, clusters=8, dim=16, seed=0, spread=0.05):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g) * 5
    labels = torch.randint(clusters, (n,), generator=g)
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


# ---- RQ K-means -------------------------------------------------------------------------------------

def test_first_level_recovers_the_clusters():
    x, labels = clustered()
    codebooks = train_rq_kmeans(x, RQKMeansConfig(levels=2, codebook_size=8), progress=False)
    codes = codebooks.encode(x)
    pairs = set(zip(labels.tolist(), codes[:, 0].tolist()))
    assert len(pairs) == 8  # a bijection between true clusters and level-1 codes
    assert codebooks.inertia[0] < 0.05**2 * 16 * 1.5  # what is left is the within-cluster noise
    assert codebooks.inertia[1] < codebooks.inertia[0]  # the second level refines the residual


def test_training_is_deterministic_given_a_seed():
    x, _ = clustered(n=800, seed=1, spread=1.0)
    config = RQKMeansConfig(levels=3, codebook_size=[16, 8, 4], seed=7)
    a = train_rq_kmeans(x, config, progress=False)
    b = train_rq_kmeans(x, config, progress=False)
    assert torch.equal(a.codebooks, b.codebooks) and a.level_sizes == [16, 8, 4]
    c = train_rq_kmeans(x, RQKMeansConfig(levels=3, codebook_size=[16, 8, 4], seed=8), progress=False)
    assert not torch.equal(a.codebooks, c.codebooks)


def test_empty_clusters_are_reseeded():
    # 6 distinct points, K = 6: k-means++ may pick duplicates; every code must still end up used.
    points = torch.eye(6).repeat_interleave(torch.tensor([50, 1, 1, 1, 1, 1]), dim=0)
    codebooks = train_rq_kmeans(points, RQKMeansConfig(levels=1, codebook_size=6, seed=0), progress=False)
    codes = codebooks.encode(points)[:, 0]
    assert len(codes.unique()) == 6
    assert codebooks.inertia[0] == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize(
    "config, x, match",
    [
        (RQKMeansConfig(levels=2, codebook_size=[4]), torch.randn(10, 2), r"codebook_size has 1 entries but levels = 2"),
        (RQKMeansConfig(levels=1, codebook_size=50), torch.randn(10, 2), r"codebook size 50 exceeds .* N = 10"),
        (RQKMeansConfig(levels=1, codebook_size=2), torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), r"NaN/inf values in rows \[1\]"),
        (RQKMeansConfig(levels=1, codebook_size=2), torch.zeros(0, 3), r"non-empty \[N, D\]"),
    ],
)
def test_trainer_rejects_bad_input(config, x, match):
    with pytest.raises(ValueError, match=match):
        train_rq_kmeans(x, config, progress=False)


# ---- collisions and the table -----------------------------------------------------------------------

def _fixed_codebooks():
    # Level 1: two centroids far apart; level 2: four small offsets. Items placed by hand.
    level1 = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    level2 = torch.tensor([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]])
    return RQCodebooks(torch.stack([level1, level2]), [2, 4])


def test_collisions_are_reassigned_to_free_last_level_codes():
    items = np.array([[10.0, 1.0], [10.0, 0.9], [10.0, 1.2], [-10.0, -1.0]], dtype=np.float32)
    table = build_sid_table(items, ["a", "b", "c", "d"], _fixed_codebooks())
    assert table.stats.colliding_items_before == 3 and table.stats.max_group == 3
    assert table.levels == 2 and not table.collision_level  # SIDs stay L codes
    assert table.sid(0) == (0, 0)  # (10, 1.0) sits on its centroid: it keeps the tuple
    assert len({table.sid(i) for i in range(4)}) == 4
    # The others move nearest-first to the nearest free codes: (1, 0) then (-1, 0), not (0, -1).
    assert (table.sid(1), table.sid(2), table.sid(3)) == ((0, 2), (0, 3), (1, 1))
    assert table.stats.used_codes == [2, 2] and table.stats.utilisation == [1.0, 0.5]


def test_append_adds_a_tiger_level_and_error_names_the_items():
    items = np.array([[10.0, 1.0], [10.0, 0.9], [-10.0, -1.0]], dtype=np.float32)
    table = build_sid_table(items, ["a", "b", "c"], _fixed_codebooks(), collisions="append")
    assert table.collision_level and table.level_sizes == [2, 4, 2]
    assert [table.sid(i) for i in range(3)] == [(0, 0, 0), (0, 0, 1), (1, 1, 0)]
    assert table.item((0, 0, 1)) == 1 and table.item((0, 0, 2)) is None
    with pytest.raises(ValueError, match=r"2 items collide, e.g. items \['a', 'b'\] share SID \(0, 0\)"):
        build_sid_table(items, ["a", "b", "c"], _fixed_codebooks(), collisions="error")


def test_reassign_falls_back_to_append_when_a_prefix_is_full():
    # Five items on one level-1 centroid but only four level-2 codes: one must get an extra level.
    items = np.array([[10.0, 1.0]] * 5, dtype=np.float32)
    table = build_sid_table(items, list("abcde"), _fixed_codebooks())
    assert table.collision_level and len({table.sid(i) for i in range(5)}) == 5


def test_save_load_round_trip(tmp_path):
    x, _ = clustered(n=500, seed=2, spread=1.0)
    codebooks = train_rq_kmeans(x, RQKMeansConfig(levels=3, codebook_size=[8, 8, 4]), progress=False)
    table = build_sid_table(x.numpy(), [f"item{i}" for i in range(500)], codebooks)
    out = table.save(tmp_path / "sids")
    table.save(out)  # overwriting an existing table works, and leaves no temp dirs behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sids"]
    loaded = SIDTable.load(out)
    assert np.array_equal(loaded.codes, table.codes) and loaded.item_ids == table.item_ids
    assert loaded.level_sizes == table.level_sizes and loaded.stats == table.stats
    assert torch.equal(loaded.codebooks.codebooks, codebooks.codebooks)
    assert torch.equal(loaded.codebooks.encode(x), codebooks.encode(x))
    for i in (0, 17, 499):
        assert loaded.item(loaded.sid(i)) == i
    meta = json.loads((out / "sid_table.json").read_text())
    assert meta["format"] == "genrec-sid/1"


def test_load_rejects_other_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing sid_table.json"):
        SIDTable.load(tmp_path)
    (tmp_path / "sid_table.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ValueError, match=r"format 'other/9' is not 'genrec-sid/1'"):
        SIDTable.load(tmp_path)


# ---- trie -------------------------------------------------------------------------------------------

@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 4)), min_size=1, max_size=40, unique=True))
def test_trie_matches_the_set_of_sids(sids):
    trie = SIDTrie.from_codes(np.array(sids), [4, 3, 5])
    for item, sid in enumerate(sids):
        assert trie.lookup(sid) == item
    for sid in itertools.product(range(4), range(3), range(5)):
        if sid not in set(sids):
            assert trie.lookup(sid) is None
    # Dense masks agree with the prefixes that exist.
    prefixes = {s[:1] for s in sids}
    mask0 = trie.dense_mask(0)
    assert mask0.shape == (1, 4) and {(int(c),) for c in torch.nonzero(mask0[0]).flatten()} == prefixes
    assert trie.dense_mask(1).sum() == len({s[:2] for s in sids})
    assert trie.num_nodes(2) == len({s[:2] for s in sids}) and len(trie.leaf_items) == len(sids)


def test_sid_lookup_by_hand():
    lookup = SIDLookup(np.array([[0, 1], [2, 0], [1, 1]]), [3, 2])
    codes = torch.tensor([[[2, 0], [1, 1], [1, 0], [-1, 1], [3, 0], [0, 1]]])
    assert lookup(codes).tolist() == [[1, 2, -1, -1, -1, 0]]  # -1 codes, out-of-range codes, unknown SIDs: -1
    with pytest.raises(ValueError, match="duplicate SIDs"):
        SIDLookup(np.array([[0, 1], [0, 1]]), [3, 2])


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 4)), min_size=1, max_size=40, unique=True),
       st.lists(st.tuples(st.integers(-1, 4), st.integers(-1, 3), st.integers(-1, 5)), min_size=1, max_size=30))
def test_table_maps_sids_to_items_like_a_dict(sids, queries):
    table = SIDTable(np.array(sids), list(range(len(sids))), [4, 3, 5])
    index = {sid: i for i, sid in enumerate(sids)}
    want = [index.get(q, -1) for q in queries]
    assert table.items_of(torch.tensor(queries)).tolist() == want
    assert [table.item(q) for q in queries] == [None if w < 0 else w for w in want]


def test_trie_rejects_duplicates():
    with pytest.raises(ValueError, match="1 SIDs are duplicates"):
        SIDTrie.from_codes(np.array([[0, 1], [0, 1]]), [2, 2])


# ---- embeddings -------------------------------------------------------------------------------------

def test_non_finite_embeddings_name_the_items(tmp_path):
    bad = np.ones((4, 3), dtype=np.float32)
    bad[1, 0], bad[3, 2] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"2 item embeddings contain NaN/inf: items 'b', 'd'"):
        check_finite(bad, ["a", "b", "c", "d"])
    np.save(tmp_path / "e.npy", bad[:2])
    with pytest.raises(ValueError, match="2 embedding rows for 3 items"):
        load_npy_embeddings(tmp_path / "e.npy", [1, 2, 3])


def test_item_texts_join_fields_and_name_missing_ones():
    catalog = ItemCatalog(["x", "y"], text={"title": ["Bolt", "Nut"], "brand": ["Acme", ""]})
    assert item_texts(catalog, ["title", "brand"]) == ["title: Bolt; brand: Acme", "title: Nut"]
    with pytest.raises(ValueError, match=r"\['categories'\] are not in the catalogue"):
        item_texts(catalog, ["title", "categories"])


def test_minilm_embeds_offline():
    vectors = embed_texts(["steel hex bolt", "stainless hex bolt", "lab safety goggles"], progress=False)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # related products are closer


# ---- CLI and real data ------------------------------------------------------------------------------

def test_sid_build_cli_on_synthetic_items(tmp_path, capsys):
    data = generate_synthetic()
    data.catalog.save(tmp_path / "items")
    assert main(["sid", "build", "--items", str(tmp_path / "items"), "--levels", "2", "--codebook-size", "32,16",
                 "--out", str(tmp_path / "sids"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "codebook utilisation: L1" in out and "-> 0 after resolution" in out
    table = SIDTable.load(tmp_path / "sids")
    assert len(table) == len(data.catalog) and table.level_sizes[:2] == [32, 16]
    assert len({tuple(r) for r in table.codes.tolist()}) == len(table)


@pytest.mark.skipif(not SCIENTIFIC.exists(), reason="../shared/data/amazon18-scientific is absent")
def test_real_scientific_items_get_unique_sids(tmp_path):
    catalog = load_lcrec_catalog(SCIENTIFIC / "Scientific.item.json")
    assert len(catalog) == 4344
    encoder = load_text_encoder()
    encoder.max_seq_length = 32  # titles only, short: keeps this real-data test ~20 s on 2 cores
    vectors = embed_texts(item_texts(catalog, ["title"]), list(catalog.ids), encoder=encoder, progress=False)
    codebooks = train_rq_kmeans(vectors, RQKMeansConfig(levels=3, codebook_size=256), progress=False)
    table = build_sid_table(vectors, list(catalog.ids), codebooks)
    assert len(table) == 4344 and table.levels == 3
    assert len({tuple(r) for r in table.codes.tolist()}) == 4344
    assert all(u >= 200 for u in table.stats.used_codes)  # codebooks are well used
    trie = SIDTrie.from_table(table)
    assert all(trie.lookup(table.sid(i)) == i for i in range(0, 4344, 97))
    table.save(tmp_path / "sci")
    assert SIDTable.load(tmp_path / "sci").item(table.sid(123)) == 123


def test_load_catalog_reads_every_kind_of_items_source(tmp_path):
    """What `genrec recommend --items` and `genrec sid build --items` take: a page-log dataset directory, an
    LC-Rec dataset directory (as `genrec eval --data` takes), its X.item.json, or a Parquet file."""
    import json

    from genrec_ext import data
    from genrec_ext.sid.build import load_catalog

    lcrec = tmp_path / "lcrec"
    lcrec.mkdir()
    (lcrec / "Toy.inter.json").write_text(json.dumps({"u1": ["a", "b"]}))
    (lcrec / "Toy.item.json").write_text(json.dumps({"a": {"title": "A"}, "b": {"title": "B"}}))
    for source in (lcrec, lcrec / "Toy.item.json"):
        catalog = load_catalog(source)
        assert list(catalog.ids) == ["a", "b"] and list(catalog.text["title"]) == ["A", "B"]
    syn = data.generate_synthetic(data.SyntheticConfig(num_items=30, num_users=5, seed=0))
    paths = syn.write_parquet(tmp_path / "pages")
    assert len(load_catalog(tmp_path / "pages")) == 30 and len(load_catalog(paths["items"])) == 30
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_catalog(tmp_path / "nope")
