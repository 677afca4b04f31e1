"""The reward stage: the SIM-style model (shapes, any SID tuple, hard / soft search on hand-built histories),
AUC / GAUC, examples with exposures and sampled negatives, training that beats popularity on a small synthetic
world, save / load, resume, the hybrid reward (gate, anchoring), group advantages, relevance, R@K, and the CLI."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from genrec_ext import data
from genrec_ext.cli import main
from genrec_ext.experiments import synthetic_task
from genrec_ext.reward import (
    HybridReward,
    RewardModelConfig,
    RewardTrainConfig,
    SIMRewardModel,
    auc,
    build_examples,
    group_advantages,
    group_auc,
    hybrid_rewards,
    relevance,
    relevance_embeddings,
    train_reward_model,
)
from genrec_ext.reward.train import CHECKPOINT_FILE, MODEL_DIR, REPORT_FILE
from genrec_ext.sid import sid_codes_for

WORLD = {"num_items": 150, "num_users": 300, "seed": 0}
SMALL = {"dim": 16, "hidden": [32]}
#: measured with this world, config and seed: valid 0.719 vs 0.564, test 0.715 vs 0.558 (margins ~0.155)
MARGIN = 0.10


@pytest.fixture(scope="module")
def task():
    return synthetic_task(WORLD, max_history=20, sid={"levels": 2, "codebook_size": 16})


@pytest.fixture(scope="module")
def trained(task, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    config = RewardTrainConfig(epochs=6, patience=0, model=SMALL)
    return out, train_reward_model(task.catalog, task.splits, task.table, config, out_dir=out, progress=False)


def _model(levels=(8, 8, 8), **kw) -> SIMRewardModel:
    torch.manual_seed(0)
    return SIMRewardModel(RewardModelConfig(level_sizes=levels, dim=8, heads=2, hidden=(16,), **kw)).eval()


# ------------------------------------------------------------------------------------------- the model


def test_model_scores_any_sid_tuple_with_probabilities():
    model = _model()
    hist = torch.tensor([[[1, 2, 3], [4, 5, 6], [-1, -1, -1]], [[7, 7, 7], [0, 1, 2], [3, 3, 3]]])
    cand = torch.tensor([[[1, 2, 3], [7, 7, 0], [-1, -1, -1], [0, 0, 0]], [[5, 5, 5], [2, 2, 2], [1, 2, 3], [6, 0, 1]]])
    p = model(hist, None, cand)
    assert p.shape == (2, 4) and p.dtype == torch.float32
    assert ((p >= 0) & (p <= 1)).all()
    assert p[0, 2] == 0  # an empty slot (-1 codes)
    real = torch.cat([p[0, [0, 1, 3]], p[1]])
    assert ((real > 0) & (real < 1)).all()  # any in-range tuple gets a real score, item or not
    # the mask decides, not the alignment: the same history right-aligned scores the same
    right = torch.tensor([[[-1, -1, -1], [1, 2, 3], [4, 5, 6]]])
    torch.testing.assert_close(model(right, right[..., 0] >= 0, cand[:1]), model(hist[:1], None, cand[:1]))


def test_model_names_bad_input():
    model = _model()
    hist = torch.zeros(1, 2, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="candidate_codes holds codes outside"):
        model(hist, None, torch.tensor([[[8, 0, 0]]]))
    with pytest.raises(ValueError, match=r"history_codes must be \[B, \*, 3\]"):
        model(torch.zeros(1, 2, 2, dtype=torch.int64), None, torch.zeros(1, 1, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="history_mask marks history rows holding -1"):
        model(torch.full((1, 2, 3), -1), torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 1, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="RewardModelConfig: search must be"):
        RewardModelConfig(level_sizes=(4,), search="fuzzy")


def _search(model, hist, cand):
    mask = (hist >= 0).all(-1)
    maskf = mask.float()
    age = (maskf.flip(1).cumsum(1).flip(1) - maskf).long()
    idx, valid = model.search(model.encode(cand), cand, model.encode(hist), hist, mask, age)
    return [sorted(i for i, v in zip(row.tolist(), ok.tolist()) if v) for row, ok in zip(idx[0], valid[0])]


def test_hard_search_takes_the_category_then_the_most_recent():
    model = _model(top_k=4, search="hard")
    first = [5, 1, 5, 2, 3, 5]  # oldest first
    hist = torch.tensor([[[c, 0, 0] for c in first]])
    cand = torch.tensor([[[5, 1, 1], [7, 0, 0], [1, 0, 0]]])
    got = _search(model, hist, cand)
    assert got[0] == [0, 2, 4, 5]  # the three 5s, then the most recent other item (position 4)
    assert got[1] == [2, 3, 4, 5]  # no 7: the four most recent
    assert got[2] == [1, 3, 4, 5]  # the 1, then the three most recent others
    short = torch.tensor([[[5, 0, 0], [1, 0, 0], [-1, -1, -1]]])  # two real items < top_k: padding never selected
    assert _search(model, short, cand[:, :1]) == [[0, 1]]


def test_soft_search_takes_the_closest_code_embeddings():
    model = _model(levels=(4,), top_k=2, search="soft", tuple_buckets=0)
    angles = torch.tensor([0.0, 0.3, 1.6, 3.0])  # code c -> a unit vector at angle c's entry
    with torch.no_grad():
        model.code_embedding.weight.zero_()
        model.code_embedding.weight[:, 0] = angles.cos()
        model.code_embedding.weight[:, 1] = angles.sin()
    hist = torch.tensor([[[3], [1], [2], [0]]])
    assert _search(model, hist, torch.tensor([[[0]]])) == [[1, 3]]  # codes 0 and 1 are closest to 0
    assert _search(model, hist, torch.tensor([[[3]]])) == [[0, 2]]  # codes 3 and 2


# -------------------------------------------------------------------------------------- metrics, examples


def test_auc_and_group_auc_by_hand():
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auc([1.0, 1.0, 2.0], [0, 1, 1]) == pytest.approx(0.75)  # a tie counts one half
    assert math.isnan(auc([1.0, 2.0], [1, 1]))
    # group a: AUC 1 (3 candidates), group b: AUC 0 (2), group c: one class only (left out)
    g = group_auc([0.1, 0.9, 0.5, 0.8, 0.2, 0.3], [0, 1, 0, 0, 1, 1], ["a", "a", "a", "b", "b", "c"])
    assert g == pytest.approx((3 * 1.0 + 2 * 0.0) / 5)


def test_examples_from_exposures_and_sampled_negatives(task, tmp_path):
    ex = build_examples(task.splits.valid, "exposures")
    s = task.splits.valid[3]
    lo, hi = ex.offsets[3], ex.offsets[4]
    assert ex.items[lo:hi].tolist() == s.target.tolist()
    assert ex.labels[lo:hi].tolist() == (s.target_actions >= data.CLICK).astype(float).tolist()
    seqs = {"u1": ["a", "b", "c", "d", "e"], "u2": ["c", "a", "b", "d"]}
    (tmp_path / "Toy.inter.json").write_text(json.dumps(seqs))
    (tmp_path / "Toy.item.json").write_text(json.dumps({i: {"title": i} for i in "abcdefgh"}))
    _, splits = data.load_lcrec(tmp_path)
    ex = build_examples(splits.test, "sampled", num_negatives=5, seed=(0, 7))
    assert ex.offsets.tolist() == [0, 6, 12]
    for i, positive in enumerate(splits.test.positives.to_csr()[1]):
        items, labels = ex.items[6 * i:6 * i + 6], ex.labels[6 * i:6 * i + 6]
        assert items[0] == positive and labels.tolist() == [1, 0, 0, 0, 0, 0]
        assert (items[1:] != positive).all() and ((items >= 0) & (items < 8)).all()
    again = build_examples(splits.test, "sampled", num_negatives=5, seed=(0, 7))
    assert again.items.tolist() == ex.items.tolist()


# ------------------------------------------------------------------------------------------- training


def test_training_beats_popularity_and_round_trips(trained, task):
    out, result = trained
    r = result.report
    for split in ("valid", "test"):
        assert r[split]["model"]["AUC"] > r[split]["popularity"]["AUC"] + MARGIN, r[split]
        assert r[split]["model"]["GAUC"] > r[split]["popularity"]["GAUC"] + MARGIN, r[split]
    assert r["selected_epoch"] == 1 + int(np.argmax([h["valid_AUC"] for h in r["history"]]))
    assert json.loads((out / REPORT_FILE).read_text())["test"] == r["test"]
    again = SIMRewardModel.load(out / MODEL_DIR)
    assert again.config == result.model.config
    codes = torch.from_numpy(sid_codes_for(task.catalog, task.table))
    sizes = torch.tensor(task.table.level_sizes)
    hist, cand = codes[None, :7], (torch.rand(1, 9, len(sizes)) * sizes).long()  # any tuples, most not items
    torch.testing.assert_close(again(hist, None, cand), result.model(hist, None, cand), rtol=0, atol=0)


def test_resume_continues_exactly(task, tmp_path):
    config = {"patience": 0, "model": SMALL, "batch_size": 128}
    full = train_reward_model(task.catalog, task.splits, task.table, RewardTrainConfig(epochs=3, **config),
                              out_dir=tmp_path / "full", progress=False)
    train_reward_model(task.catalog, task.splits, task.table, RewardTrainConfig(epochs=1, **config),
                       out_dir=tmp_path / "cut", progress=False)
    with pytest.raises(FileExistsError, match="pass resume"):
        train_reward_model(task.catalog, task.splits, task.table, RewardTrainConfig(epochs=3, **config),
                           out_dir=tmp_path / "cut", progress=False)
    with pytest.raises(ValueError, match="cannot resume .* seed=0"):
        train_reward_model(task.catalog, task.splits, task.table, RewardTrainConfig(epochs=3, **{**config, "seed": 1}),
                           out_dir=tmp_path / "cut", resume=True, progress=False)
    resumed = train_reward_model(task.catalog, task.splits, task.table, RewardTrainConfig(epochs=3, **config),
                                 out_dir=tmp_path / "cut", resume=True, progress=False)
    assert resumed.resumed_from == 1 and (tmp_path / "cut" / CHECKPOINT_FILE).exists()
    assert resumed.report["history"] == full.report["history"]
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)


# ----------------------------------------------------------------------------------- the hybrid reward


def test_relevance_by_hand():
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])
    cand = torch.tensor([[2, -1, 3, 0], [1, 2, 0, 3]])
    hist = torch.tensor([[0, 1], [-1, -1]])  # the second user has no history
    s = relevance(cand, hist, emb)
    r2 = 1 / math.sqrt(2)
    torch.testing.assert_close(s, torch.tensor([[r2, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    # item 3 = -item 0: its best cosine (0 with item 1) is 0; an invalid SID (-1) is 0 by definition


def test_gate_and_anchoring_by_hand():
    r_pref = torch.tensor([[0.9, 0.6, 0.3, 0.2], [0.5, 0.4, 0.7, 0.1]])
    s = torch.tensor([[0.05, 0.5, 0.8, 0.0], [0.3, 0.3, 0.3, 0.3]])
    pos = torch.tensor([[False, False, False, True], [False, True, False, False]])
    gated = hybrid_rewards(r_pref, s, tau=0.1)
    torch.testing.assert_close(gated, torch.tensor([[0.0, 0.6, 0.3, 0.0], [0.5, 0.4, 0.7, 0.1]]))
    anchored = hybrid_rewards(r_pref, s, pos, tau=0.1)
    torch.testing.assert_close(anchored, torch.tensor([[0.0, 0.6, 0.3, 0.6], [0.5, 0.7, 0.7, 0.1]]))
    no_gate = hybrid_rewards(r_pref, s, pos, tau=0.1, gate=False)  # the "w/o gate" ablation
    torch.testing.assert_close(no_gate, torch.tensor([[0.9, 0.6, 0.3, 0.9], [0.5, 0.7, 0.7, 0.1]]))


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])
    out = group_advantages(rewards)
    std = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3)  # unbiased, as torch.std / TRL
    torch.testing.assert_close(out.advantages[0], torch.tensor([-2.0, -1.0, 0.0, 3.0]) / (std + 1e-4))
    assert (out.advantages[1:] == 0).all() and out.zero_std_share == pytest.approx(2 / 3)
    torch.testing.assert_close(out.mean, torch.tensor([3.0, 0.5, 0.0]))
    centred = group_advantages(rewards, scale_rewards=False)
    torch.testing.assert_close(centred.advantages[0], torch.tensor([-2.0, -1.0, 0.0, 3.0]))
    batch = group_advantages(rewards, scale_rewards="batch")
    torch.testing.assert_close(batch.advantages[0], torch.tensor([-2.0, -1.0, 0.0, 3.0]) / (rewards.std() + 1e-4))
    masked = group_advantages(torch.tensor([[1.0, 3.0, 100.0]]), mask=torch.tensor([[True, True, False]]))
    torch.testing.assert_close(masked.advantages, torch.tensor([[-1.0, 1.0, 0.0]]) / (math.sqrt(2) + 1e-4))
    with pytest.raises(ValueError, match="scale_rewards must be"):
        group_advantages(rewards, scale_rewards="sometimes")


def test_hybrid_reward_end_to_end_gates_hallucinated_sids(trained, task):
    out, _ = trained
    rm = HybridReward.load(out, task.catalog, task.table)
    free = HybridReward.load(out, task.catalog, task.table, gate=False)
    codes = torch.from_numpy(sid_codes_for(task.catalog, task.table))
    valid = {tuple(c) for c in codes.tolist()}
    bogus = next(t for t in itertools.product(*map(range, task.table.level_sizes)) if t not in valid)
    empty = [-1] * len(bogus)
    hist = torch.tensor([[0, 1, 2, -1], [3, 4, 5, 6]])
    rollouts = torch.stack([torch.stack([codes[2], codes[10], torch.tensor(bogus), torch.tensor(empty)]),
                            torch.stack([codes[7], codes[8], codes[9], torch.tensor(bogus)])])
    positives = torch.tensor([[10, -1], [-1, -1]])
    got = rm(hist, rollouts, positives)
    assert got.items.tolist() == [[2, 10, -1, -1], [7, 8, 9, -1]]
    assert got.relevance[0, 0] == pytest.approx(1.0, abs=1e-5)  # item 2 is in the history
    assert (got.relevance[:, 2:][got.items[:, 2:] < 0] == 0).all()
    assert got.r_pref[0, 2] > 0.01 and got.r_pref[0, 3] == 0  # the model scores a hallucinated SID; empty slot 0
    assert got.rewards[0, 2] == 0 and got.rewards[1, 3] == 0  # ... and the gate removes it
    assert got.in_positives.tolist() == [[False, True, False, False], [False] * 4]
    assert got.rewards[0, 1] == got.rewards[0].max()  # anchored
    ungated = free(hist, rollouts, positives)
    assert ungated.rewards[0, 2] == pytest.approx(float(got.r_pref[0, 2]))  # w/o gate the hack pays
    relevance_embeddings(task.catalog, task.table)  # the catalogue's own vectors
    lone = data.ItemCatalog(task.catalog.ids)  # no embeddings: reconstructed from the SID codebooks
    assert relevance_embeddings(lone, task.table).shape == (len(task.catalog), task.catalog.embeddings.shape[1])


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_reward_train_smoke_and_errors(tmp_path, capsys):
    args = ["reward", "train", "--data", "synthetic", "--world", "num_items=120", "--world", "num_users=60",
            "--max-history", "10", "--epochs", "1", "--dim", "8", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "rm")]) == 0
    printed = capsys.readouterr().out
    assert "| valid |" in printed and "popularity AUC" in printed
    report = json.loads((tmp_path / "rm" / REPORT_FILE).read_text())
    assert set(report["test"]) >= {"model", "popularity"} and (tmp_path / "rm" / MODEL_DIR / "model.safetensors").exists()
    with pytest.raises(SystemExit, match="already holds a reward-model run"):
        main([*args, "--out", str(tmp_path / "rm")])
    with pytest.raises(SystemExit, match="--sids is required"):
        main(["reward", "train", "--data", str(tmp_path), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["reward", "train", "--data", str(tmp_path / "nope"), "--sids", str(tmp_path / "rm"), "--out",
              str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=r"unknown SyntheticConfig keys \['num_itemz'\]"):
        main(["reward", "train", "--data", "synthetic", "--world", "num_itemz=9", "--out", str(tmp_path / "z")])
    with pytest.raises(SystemExit, match="epochs must be >= 1"):
        main([*args[:-5], "--epochs", "0", "--out", str(tmp_path / "y")])
