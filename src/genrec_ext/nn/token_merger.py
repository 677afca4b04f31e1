"""TokenMerger: one prompt position per history item instead of L (paper eq. 5)."""

from __future__ import annotations

from torch import Tensor, nn

from ..ops import token_merge


class TokenMerger(nn.Module):
    """``Linear(Concat(E[s_1], ..., E[s_L]))`` for every history item, via ``genrec::token_merge``.

    Args:
        vocab_size: rows of the token embedding table.
        dim: embedding width d.
        levels: SID levels L (tokens per item).
        out_dim: width of the merged vector (the decoder's hidden size).
        pad_id: padding token id, whose embeddings add zeros (all-pad items merge to zeros); None (default): no
            padding (GenRec's model passes its ``<pad>``).
        bias: whether the projection has a bias.
        embedding: an existing ``nn.Embedding`` to share (e.g. the decoder's input embeddings, so prompt
            and decoding use one table); a new one is created when omitted.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        levels: int,
        out_dim: int,
        *,
        pad_id: int | None = None,
        bias: bool = True,
        embedding: nn.Embedding | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"TokenMerger: levels must be >= 1, got {levels}")
        if embedding is None:
            embedding = nn.Embedding(vocab_size, dim, device=device, dtype=dtype)
        elif tuple(embedding.weight.shape) != (vocab_size, dim):
            raise ValueError(
                f"TokenMerger: shared embedding has shape {tuple(embedding.weight.shape)}, "
                f"expected (vocab_size, dim) = ({vocab_size}, {dim})"
            )
        self.embedding = embedding
        self.proj = nn.Linear(levels * dim, out_dim, bias=bias, device=device, dtype=dtype)
        self.levels = levels
        self.pad_id = pad_id

    def forward(self, sid_tokens: Tensor) -> Tensor:
        """``sid_tokens`` int64 ``[B, N, L]`` -> ``[B, N, out_dim]``."""
        if sid_tokens.dim() != 3 or sid_tokens.shape[-1] != self.levels:
            raise ValueError(
                f"TokenMerger: sid_tokens must be [B, N, {self.levels}], got {tuple(sid_tokens.shape)}"
            )
        return token_merge(sid_tokens, self.embedding.weight, self.proj.weight, self.proj.bias, self.pad_id)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, pad_id={self.pad_id}"
