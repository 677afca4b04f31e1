"""Semantic IDs: item embeddings -> residual K-means codebooks -> unique SIDs -> a trie of valid SIDs."""

from .lookup import SIDLookup
from .rqkmeans import RQCodebooks, RQKMeansConfig, train_rq_kmeans
from .table import SIDStats, SIDTable, build_sid_table, catalog_index_of_sids, sid_codes_for, sid_tokens_for
from .trie import SIDTrie
from .vocab import SIDVocab

__all__ = ["RQCodebooks", "RQKMeansConfig", "SIDLookup", "SIDStats", "SIDTable", "SIDTrie", "SIDVocab", "build_sid_table",
           "catalog_index_of_sids", "sid_codes_for", "sid_tokens_for", "train_rq_kmeans"]
