"""Reward stage (paper §2.3): the SIM-style reward model, its training on logged feedback, and the hybrid
reward (relevance gate, anchoring), group-relative advantages that GRPO-SR uses (R@K itself is `genrec_ext.eval.reward_at_k`).

    from genrec_ext import reward

    result = reward.train_reward_model(catalog, splits, table, reward.RewardTrainConfig(), out_dir="runs/rm")
    rm = reward.HybridReward.load("runs/rm", catalog, table)            # gate and anchoring on
    out = rm(history_items, rollout_codes, positives)                     # [B, G] rewards, by rollout index
    adv = reward.group_advantages(out.rewards)                            # adv.advantages, adv.zero_std_share
"""

from .examples import Examples, RewardBatch, build_examples, make_batch
from .hybrid import (DEFAULT_TAU, GroupAdvantages, HybridReward, RolloutRewards, group_advantages,
                     hybrid_rewards, relevance, relevance_embeddings)
from .metrics import auc, group_auc, popularity_scores
from .model import RewardModelConfig, SIMRewardModel
from .train import RewardTrainConfig, RewardTrainResult, format_auc_table, score_examples, train_reward_model

__all__ = [
    "DEFAULT_TAU", "Examples", "GroupAdvantages", "HybridReward", "RewardBatch", "RewardModelConfig",
    "RewardTrainConfig", "RewardTrainResult", "RolloutRewards", "SIMRewardModel", "auc",
    "build_examples", "format_auc_table", "group_advantages", "group_auc", "hybrid_rewards",
    "make_batch", "popularity_scores", "relevance", "relevance_embeddings", "score_examples",
    "train_reward_model",
]
