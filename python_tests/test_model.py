"""GenRecModel: prompt layout with and without the Token Merger, loss placement, persistence, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from genrec_ext import data
from genrec_ext.model import GenRecModel, ModelConfig, build_model
from genrec_ext.ops import reference
from genrec_ext.sid import RQKMeansConfig, SIDTable, build_sid_table, train_rq_kmeans
from genrec_ext.sid.vocab import BOS, EOS, SEP
from genrec_ext.train import collate, make_sft_dataset


@pytest.fixture(scope="module")
def world():
    syn = data.generate_synthetic(data.SyntheticConfig(num_items=300, num_users=120, seed=3))
    samples = data.build_page_samples(syn.log(), syn.catalog, max_history=30)
    codebooks = train_rq_kmeans(syn.catalog.embeddings, RQKMeansConfig(levels=3, codebook_size=16), progress=False)
    table = build_sid_table(syn.catalog.embeddings, list(syn.catalog.ids), codebooks)
    return syn, samples, table


def batch_of(world, objective="page", n=6, max_history=None):
    syn, samples, table = world
    ds = make_sft_dataset(samples, syn.catalog, table, objective, max_history=max_history)
    return ds, collate([ds[i] for i in range(n)])


@pytest.mark.parametrize("token_merger", [True, False])
def test_prompt_length_and_loss_positions(world, token_merger):
    ds, batch = batch_of(world)
    model = build_model("tiny", ds.vocab, token_merger=token_merger)
    lay = model.layout(batch)
    levels = ds.vocab.levels
    expected_prompt = batch.history_len + 2 if token_merger else levels * batch.history_len + 2
    assert torch.equal(lay.prompt_len, expected_prompt)
    # Loss only where the next token is a target token: |target| positions per example, never in the prompt.
    assert torch.equal(lay.label_mask.sum(1), batch.target_len)
    first_label = lay.label_mask.float().argmax(1)
    assert torch.equal(first_label, lay.prompt_len - 1)  # the <sep> position predicts y_1
    targets = [batch.target[b, : batch.target_len[b]] for b in range(len(batch))]
    assert torch.equal(lay.labels, torch.cat(targets))
    assert torch.equal(lay.attention_mask.sum(1), lay.prompt_len + batch.target_len)


def test_prompt_vectors_are_the_merged_items_and_specials(world):
    ds, batch = batch_of(world, n=3)
    model = build_model("tiny", ds.vocab)
    lay = model.layout(batch)
    emb = model.backbone.get_input_embeddings().weight
    b = 0
    n = int(batch.history_len[b])
    merged = reference.token_merge(batch.history[b : b + 1, :n], emb, model.merger.proj.weight, model.merger.proj.bias)
    torch.testing.assert_close(lay.inputs_embeds[b, 1 : n + 1], merged[0])
    torch.testing.assert_close(lay.inputs_embeds[b, 0], emb[BOS])
    torch.testing.assert_close(lay.inputs_embeds[b, n + 1], emb[SEP])
    torch.testing.assert_close(lay.inputs_embeds[b, n + 2], emb[batch.target[b, 0]])  # decoding: full SID tokens


def test_page_targets_follow_intensity_order_and_end_with_eos(world):
    syn, samples, table = world
    ds, batch = batch_of(world, n=len(samples))
    vocab = ds.vocab
    for i in range(0, len(samples), 7):
        history, target = ds[i]
        actions = samples.target_actions[i]
        assert np.all(np.diff(actions) <= 0)  # ordered (2) -> clicked (1) -> exposed (0)
        assert target[-1] == EOS and len(target) == len(samples.target[i]) * vocab.levels + 1
        items = samples.target[i]
        assert np.array_equal(target[:-1].reshape(-1, vocab.levels), vocab.tokens(table.codes[items]).numpy())


def test_point_objective_has_one_example_per_positive(world):
    syn, samples, _ = world
    ds, batch = batch_of(world, "point")
    counts = samples.positives.end - samples.positives.start
    assert len(ds) == counts.sum()
    assert torch.all(batch.target_len == ds.vocab.levels)


def test_save_and_reload_give_identical_logits(world, tmp_path):
    ds, batch = batch_of(world)
    model = build_model("tiny", ds.vocab, seed=5).eval()
    with torch.no_grad():
        model.merger.proj.bias.add_(0.25)  # not the init: the merger's own weights must round-trip
        before = model(batch).loss
        lay = model.layout(batch)
        logits = model.token_logits(model.hidden_states(lay.inputs_embeds, lay.attention_mask))
    model.save_pretrained(tmp_path / "m")
    loaded = GenRecModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.vocab == model.vocab and loaded.config == model.config
    with torch.no_grad():
        lay2 = loaded.layout(batch)
        logits2 = loaded.token_logits(loaded.hidden_states(lay2.inputs_embeds, lay2.attention_mask))
        assert torch.equal(logits, logits2) and torch.equal(before, loaded(batch).loss)


def test_pretrained_checkpoint_is_extended_with_sid_tokens(world, tmp_path):
    ds, batch = batch_of(world)
    hf = Qwen2Config(vocab_size=500, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                     intermediate_size=64, max_position_embeddings=256, tie_word_embeddings=True, rope_theta=1e6)
    Qwen2ForCausalLM(hf).save_pretrained(tmp_path / "qwen")  # a stand-in for a local Qwen2.5 directory
    model = build_model(ModelConfig(checkpoint=str(tmp_path / "qwen")), ds.vocab)
    assert model.token_offset == 500 and model.config.hidden_size == 32 and model.config.rope_theta == 1e6
    assert model.backbone.get_input_embeddings().num_embeddings == 500 + ds.vocab.size
    out = model(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.merger.proj.weight.grad is not None
    model.save_pretrained(tmp_path / "m")
    assert GenRecModel.from_pretrained(tmp_path / "m").token_offset == 500


@pytest.mark.parametrize("token_merger", [True, False])
def test_tiny_model_learns_below_the_unigram_baseline(world, token_merger):
    ds, _ = batch_of(world)
    counts = np.zeros(ds.vocab.size)
    for i in range(len(ds)):
        np.add.at(counts, ds[i][1], 1)
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log(p)).sum())
    model = build_model("tiny", ds.vocab, token_merger=token_merger)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        batch = collate([ds[int(i)] for i in torch.randint(len(ds), (32,), generator=g)])
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        held = collate([ds[i] for i in range(0, len(ds), max(1, len(ds) // 64))])
        final = model(held).loss.item()
    assert final < 0.8 * unigram, (final, unigram)


def test_errors_are_named(world, tmp_path):
    syn, samples, table = world
    other = SIDTable(table.codes[:-1], table.item_ids[:-1], table.level_sizes)
    with pytest.raises(ValueError, match=r"1 catalogue items have no SID in the SID table .* e\.g\. "):
        make_sft_dataset(samples, syn.catalog, other)
    with pytest.raises(ValueError, match=r"objective must be 'page' or 'point', got 'pages'"):
        make_sft_dataset(samples, syn.catalog, table, "pages")
    with pytest.raises(FileNotFoundError, match="missing genrec.json"):
        GenRecModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"unknown model config keys \['layers'\]"):
        (tmp_path / "bad.yaml").write_text("layers: 3\n")
        ModelConfig.load(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        ModelConfig.load("huge")


def test_sid_rows_and_catalogue_indices_align_whatever_the_table_order(world):
    from genrec_ext.train import catalog_index_of_sids, sid_codes_for

    syn, _, table = world
    order = np.random.default_rng(0).permutation(len(table))  # a table written in another item order
    shuffled = SIDTable(table.codes[order], [table.item_ids[i] for i in order], table.level_sizes)
    assert np.array_equal(sid_codes_for(syn.catalog, shuffled), sid_codes_for(syn.catalog, table))
    to_catalog = catalog_index_of_sids(syn.catalog, shuffled)
    assert np.array_equal(shuffled.codes, sid_codes_for(syn.catalog, table)[to_catalog])


@pytest.mark.parametrize("objective", ["page", "point"])
def test_level_softmax_loss_is_each_tokens_log_softmax_over_its_level(world, objective):
    ds, batch = batch_of(world, objective)
    model = build_model("tiny", ds.vocab, level_softmax=True).eval()
    lay = model.layout(batch)
    hidden = model.hidden_states(lay.inputs_embeds, lay.attention_mask)[lay.label_mask]
    logits = model.token_logits(hidden).float()
    vocab, expected = ds.vocab, []
    for row, (label, t) in enumerate(zip(lay.labels.tolist(), lay.label_index.tolist())):
        level = t % vocab.levels
        block = list(range(vocab.offsets[level], vocab.offsets[level] + vocab.level_sizes[level]))
        allowed = block + ([EOS] if level == 0 else [])
        assert label in allowed  # the layout's labels are where the levels say
        expected.append(-torch.log_softmax(logits[row, allowed], 0)[allowed.index(label)])
    assert model(batch).loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    assert ModelConfig(**model.config.to_dict()).level_softmax  # the flag travels with the saved config


def test_history_prompts_pad_ragged_and_empty_histories():
    from genrec_ext.model.batch import history_prompts

    item_tokens = np.array([[4, 10, 20], [5, 11, 21], [6, 12, 22]])
    tokens, lengths, items = history_prompts([np.array([2, 0]), np.array([], dtype=np.int64), np.array([1])],
                                             item_tokens, pad=0)
    assert lengths.tolist() == [2, 0, 1] and items.tolist() == [[2, 0], [-1, -1], [1, -1]]
    assert tokens.tolist() == [[[6, 12, 22], [4, 10, 20]], [[0, 0, 0], [0, 0, 0]], [[5, 11, 21], [0, 0, 0]]]
    tokens, lengths, items = history_prompts([np.array([], dtype=np.int64)], item_tokens, pad=0)
    assert tokens.shape == (1, 1, 3) and lengths.tolist() == [0] and items.tolist() == [[-1]]
