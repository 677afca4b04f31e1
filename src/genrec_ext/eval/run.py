"""Model evaluation: beam search over a split's histories, then HR/NDCG (constrained) or HaR (unconstrained)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import ItemCatalog, PageSamples
from ..decoding import beam_search
from ..model import GenRecModel
from ..model.batch import history_prompts, padded_rows
from ..sid import SIDTable, SIDTrie, catalog_index_of_sids, sid_tokens_for
from ..sid.vocab import PAD
from .metrics import DEFAULT_KS, evaluate


def sample_queries(samples: PageSamples, max_queries: int | None, seed: int = 0) -> PageSamples:
    """A seeded random ``max_queries`` of ``samples`` in their original order (all of them when ``max_queries``
    is None, 0 or at least their number): never the first users in file order."""
    if not max_queries or len(samples) <= max_queries:
        return samples
    pick = np.random.default_rng(seed).choice(len(samples), max_queries, replace=False)
    return samples.subset(np.sort(pick))


def item_popularity(samples: PageSamples) -> np.ndarray:
    """Positive interactions per item in ``samples`` (e.g. the training split), for the long-tail share."""
    return samples.item_popularity()


@torch.no_grad()
def recommend(model: GenRecModel, samples: PageSamples, catalog: ItemCatalog, table: SIDTable, *, beam_width: int = 50,
              constrained: bool = True, batch_size: int = 64, max_history: int | None = None,
              progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Top-``beam_width`` items for every sample's history: (items int64 [Q, W] with -1 = no item,
    generated bool [Q, W] = the slot holds a generated SID rather than a dead beam)."""
    model.eval()
    device = next(model.parameters()).device
    item_tokens = sid_tokens_for(catalog, table)
    trie = SIDTrie.from_table(table).to(device)
    to_catalog = torch.from_numpy(catalog_index_of_sids(catalog, table))
    items, generated = [], []
    for start in tqdm(range(0, len(samples), batch_size), desc="beam search", unit="batch", disable=not progress):
        rows = range(start, min(start + batch_size, len(samples)))
        histories = [samples.history[i] if max_history is None else samples.history[i][-max_history:] for i in rows]
        history, history_len, _ = history_prompts(histories, item_tokens, pad=PAD)
        result = beam_search(model, history.to(device), history_len.to(device), trie, beam_width=beam_width,
                             constrained=constrained, table=table)
        found = result.items.cpu()
        items.append(torch.where(found >= 0, to_catalog[found.clamp(min=0)], -1).numpy())
        generated.append(torch.isfinite(result.scores).cpu().numpy())
    if not items:
        return np.zeros((0, beam_width), np.int64), np.zeros((0, beam_width), bool)
    return np.concatenate(items), np.concatenate(generated)


def evaluate_model(model: GenRecModel, samples: PageSamples, catalog: ItemCatalog, table: SIDTable, *,
                   beam_width: int = 50, constrained: bool = True, ks=DEFAULT_KS, popularity: np.ndarray | None = None,
                   batch_size: int = 64, max_history: int | None = None, progress: bool = True,
                   reward=None) -> dict[str, float]:
    """HR@K / NDCG@K against each page's positives D+ (or the held-out item), HaR@K, and the long-tail share;
    with ``reward`` (a :class:`genrec_ext.reward.HybridReward`) also R@K, the reward model's best ``r_pref``
    among the top K (0 for a SID that is no item). Pages without positives (exposures only) cannot be scored:
    they are skipped and counted (``skipped_empty``)."""
    items, generated = recommend(model, samples, catalog, table, beam_width=beam_width, constrained=constrained,
                                 batch_size=batch_size, max_history=max_history, progress=progress)
    ks = tuple(k for k in ks if k <= beam_width) or (beam_width,)
    rewards = None if reward is None else item_rewards(reward, samples, items, max_history=max_history)
    return evaluate(items, samples.positives, ks=ks, item_popularity=popularity, generated=generated,
                    rewards=rewards, on_empty="skip")


@torch.no_grad()
def item_rewards(reward, samples: PageSamples, items: np.ndarray, *, max_history: int | None = None,
                 batch_size: int = 256) -> np.ndarray:
    """``r_pref`` of recommended catalogue items ``[Q, K]`` for each sample's history (``reward``: a
    :class:`genrec_ext.reward.HybridReward`), NaN where the slot holds no item (R@K counts it 0)."""
    items = np.asarray(items, dtype=np.int64)
    out = np.full(items.shape, np.nan, dtype=np.float64)
    device = reward.item_codes.device
    for start in range(0, len(items), batch_size):
        rows = range(start, min(start + batch_size, len(items)))
        hist, _ = padded_rows([samples.history[i] if max_history is None else samples.history[i][-max_history:]
                               for i in rows])
        rec = torch.from_numpy(items[start:start + len(rows)]).to(device)
        codes = reward.item_codes[rec.clamp(min=0)].masked_fill((rec < 0)[..., None], -1)
        r = reward.r_pref(torch.from_numpy(hist).to(device), codes).double().cpu().numpy()
        out[start:start + len(rows)] = np.where(items[start:start + len(rows)] >= 0, r, np.nan)
    return out


def make_validator(samples: PageSamples, catalog: ItemCatalog, table: SIDTable, *, beam_width: int = 20,
                   max_queries: int | None = 4096, max_history: int | None = None, batch_size: int = 64,
                   seed: int = 0):
    """A ``validate(model) -> {"HR@10", "NDCG@10"}`` function for :func:`genrec_ext.train.train_sft`'s model
    selection: a constrained beam search over ``samples`` (a seeded sample of ``max_queries`` of them; ``None``
    or 0: all)."""
    samples = sample_queries(samples, max_queries, seed)

    def validate(model: GenRecModel) -> dict[str, float]:
        items, generated = recommend(model, samples, catalog, table, beam_width=beam_width, batch_size=batch_size,
                                     max_history=max_history, progress=False)
        m = evaluate(items, samples.positives, ks=(10,), generated=generated, on_empty="skip")
        return {"HR@10": m["HR@10"], "NDCG@10": m["NDCG@10"]}

    return validate


def make_rl_validator(samples: PageSamples, catalog: ItemCatalog, table: SIDTable, reward, *, beam_width: int = 10,
                      ks=(1, 10), max_queries: int | None = 512, max_history: int | None = None, batch_size: int = 64,
                      unconstrained: bool = True, seed: int = 0):
    """A ``validate(model)`` for :func:`genrec_ext.train.train_rl`: on a seeded sample of ``max_queries``
    validation pages, a constrained beam search gives ``R@K`` (``reward``'s best ``r_pref`` among the top K),
    ``HR@K`` and ``NDCG@K`` for K in ``ks``; with ``unconstrained`` a free search gives ``HaR@K`` (share of
    hallucinated SIDs in the top K)."""
    samples = sample_queries(samples, max_queries, seed)
    ks = tuple(k for k in ks if k <= beam_width) or (beam_width,)

    def validate(model: GenRecModel) -> dict[str, float]:
        items, generated = recommend(model, samples, catalog, table, beam_width=beam_width, batch_size=batch_size,
                                     max_history=max_history, progress=False)
        rewards = item_rewards(reward, samples, items, max_history=max_history)
        m = evaluate(items, samples.positives, ks=ks, generated=generated, rewards=rewards, on_empty="skip")
        out = {f"{name}@{k}": m[f"{name}@{k}"] for name in ("R", "HR", "NDCG") for k in ks}
        if unconstrained:
            items, generated = recommend(model, samples, catalog, table, beam_width=beam_width, constrained=False,
                                         batch_size=batch_size, max_history=max_history, progress=False)
            free = evaluate(items, samples.positives, ks=ks, generated=generated, on_empty="skip")
            out.update({f"HaR@{k}": free[f"HaR@{k}"] for k in ks})
        return out

    return validate
