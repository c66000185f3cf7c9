"""Search with the first ``m`` dimensions of the embeddings: the evaluation of a Matryoshka model
(Kusupati et al. 2022) at every nested dimension, without encoding the corpus again.

The passages' full embeddings are read back from the flat index the test evaluation built, the
queries are encoded once, and for each ``m`` both are cut to their first ``m`` components and
L2-normalised again when the encoder normalises (what ``export.truncate_dim`` ships and what
sentence-transformers' ``truncate_dim`` with ``normalize_embeddings=True`` computes).
"""

from __future__ import annotations

import numpy as np

from dr.retrieval.index import DenseIndex


def truncate_rows(x: np.ndarray, dim: int, normalize: bool) -> np.ndarray:
    """The first ``dim`` columns of ``x`` (float32), each row L2-normalised again when ``normalize``."""
    x = np.ascontiguousarray(x[:, :dim], dtype=np.float32)
    if normalize:
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


class TruncatedSearch:
    """Exact search at any prefix dimension of a flat index's vectors and of the queries' embeddings."""

    def __init__(
        self, encoder, index: DenseIndex, queries: dict[str, str], k: int, batch_size: int = 64, bf16: bool = False
    ):
        if index.kind != "flat":
            raise ValueError(f"truncated search reads the vectors back from a flat index, got a {index.kind} index")
        self.passages = index.index.reconstruct_n(0, index.index.ntotal)
        self.docids = index.docids
        self.qids = list(queries)
        self.queries = encoder.encode_queries(
            [queries[q] for q in self.qids], batch_size=batch_size, bf16=bf16, show_progress=False
        )
        self.normalize = bool(encoder.normalize)
        self.k = k

    def index(self, dim: int) -> DenseIndex:
        """A flat index of the passages' first ``dim`` dimensions."""
        return DenseIndex.build(truncate_rows(self.passages, dim, self.normalize), self.docids, use_gpu=False)

    def run(self, dim: int) -> dict[str, dict[str, float]]:
        """The top-k run ``{qid: {docid: score}}`` at ``dim`` dimensions."""
        return self.index(dim).search_run(self.qids, truncate_rows(self.queries, dim, self.normalize), self.k)
