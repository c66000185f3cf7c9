"""Score fusion of BM25 and a dense encoder: a teacher that needs no cross-encoder.

Each system's scores are normalised per query over that query's candidate set, then summed with
weights (a convex combination when the weights sum to 1)::

    fused(q, d) = w_bm25 · norm_q(bm25(q, d)) + w_dense · norm_q(dense(q, d))

``norm_q`` is min-max ((s − min) / (max − min), 0 when all scores are equal) or z-score
((s − mean) / std, 0 when std = 0) over the candidates of q. Min-max keeps fused scores in
[0, 1], so Margin-MSE margins are in [-1, 1] like a cosine student's; z-score is the better
ranker over a full corpus (see the README's figures).

BM25 of arbitrary (query, passage) text pairs (:meth:`dr.retrieval.bm25.BM25.score_texts`) uses the
corpus's statistics (document frequencies, average length) and the same tokenizer, stemmer and
Lucene formula as BM25 retrieval, so a corpus passage gets exactly its bm25s score; new texts are
scored as if they were in the corpus.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from dr.teachers.base import Teacher
from dr.teachers.biencoder import BiEncoderTeacher

Normalization = Literal["minmax", "zscore"]


def normalize_scores(
    scores: np.ndarray, method: Normalization = "minmax", mask: np.ndarray | None = None
) -> np.ndarray:
    """Normalise each row of ``scores`` ``[Q, C]`` (a 1-D array is one row) over the entries where
    ``mask`` is true (all by default); entries outside the mask come back as NaN."""
    scores = np.asarray(scores, dtype=np.float64)
    squeeze = scores.ndim == 1
    scores = np.atleast_2d(scores)
    valid = np.isfinite(scores) if mask is None else (np.atleast_2d(mask) & np.isfinite(scores))
    x = np.where(valid, scores, np.nan)
    count = valid.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "minmax":
            lo = np.nanmin(np.where(count > 0, x, 0.0), axis=1, keepdims=True)
            hi = np.nanmax(np.where(count > 0, x, 0.0), axis=1, keepdims=True)
            span = hi - lo
            out = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0)
        elif method == "zscore":
            mean = np.nansum(x, axis=1, keepdims=True) / np.maximum(count, 1)
            std = np.sqrt(np.nansum((x - mean) ** 2, axis=1, keepdims=True) / np.maximum(count, 1))
            out = np.where(std > 0, (x - mean) / np.where(std > 0, std, 1.0), 0.0)
        else:
            raise ValueError(f"normalization must be 'minmax' or 'zscore', got {method!r}")
    out = np.where(valid, out, np.nan)
    return out[0] if squeeze else out


def fuse(
    score_sets: list[np.ndarray], weights: list[float], method: Normalization = "minmax", mask: np.ndarray | None = None
) -> np.ndarray:
    """Weighted sum of per-row normalised score arrays (all of the same shape)."""
    if len(score_sets) != len(weights):
        raise ValueError(f"{len(score_sets)} score sets but {len(weights)} weights")
    return sum(w * normalize_scores(s, method, mask) for s, w in zip(score_sets, weights))


def fusion_search(
    bm25,
    corpus_embeddings: np.ndarray,
    query_embeddings: np.ndarray,
    qids: list[str],
    query_texts: list[str],
    depth: int = 1000,
    k: int = 100,
    bm25_weight: float = 0.5,
    dense_weight: float = 0.5,
    normalization: Normalization = "zscore",
) -> dict[str, dict[str, float]]:
    """Rank a corpus by fused BM25 + dense scores; returns the top-``k`` run ``{qid: {docid: score}}``.

    ``bm25`` is a :class:`dr.retrieval.bm25.BM25` over the corpus (rows = embedding rows). The candidates of
    a query are the union of BM25's and the dense retriever's top-``depth`` (FAISS flat search,
    :mod:`dr.retrieval.index`); both systems' exact scores are computed for every candidate, normalised over
    the candidates and fused. ``depth >= len(corpus)`` fuses over the whole corpus.
    """
    from dr.retrieval.index import DenseIndex

    n = len(bm25.docids)
    depth = min(depth, n)
    index = DenseIndex.build(np.asarray(corpus_embeddings, dtype=np.float32), [str(r) for r in range(n)], use_gpu=False)
    _, dense_rows = index.search(np.asarray(query_embeddings, dtype=np.float32), depth)
    bm25_rows, _ = bm25.search(query_texts, depth)
    run = {}
    for i, qid in enumerate(qids):
        rows = np.unique(
            np.concatenate(
                [np.asarray([int(r) for r in dense_rows[i]], dtype=np.int64), np.asarray(bm25_rows[i], dtype=np.int64)]
            )
        )
        b_scores = bm25.corpus_scores(query_texts[i])[rows]
        d_scores = np.asarray(corpus_embeddings[rows], dtype=np.float32) @ np.asarray(
            query_embeddings[i], dtype=np.float32
        )
        fused = fuse([b_scores, d_scores], [bm25_weight, dense_weight], normalization)
        top = np.argsort(-fused, kind="stable")[:k]
        run[qid] = {bm25.docids[rows[j]]: float(fused[j]) for j in top}
    return run


class FusionTeacher(Teacher):
    """BM25 + dense score fusion, normalised per query over its passages.

    In a batch (``forward``) each query's scores are normalised over the batch's passages; in
    ``score_groups`` over that query's candidates (positives and negatives). BM25 uses the
    statistics of ``corpus`` (:meth:`dr.retrieval.bm25.BM25.score_texts`, any text pair); the
    dense part is a frozen :class:`BiEncoderTeacher` over ``model``.

    ``passage_index``: a saved flat index of ``corpus`` made by ``model`` with the same passage
    settings (a ``dr-train`` export's ``index/``): its vectors are the dense half's passage
    embeddings (by passage text), so only the queries are encoded; a text the corpus lacks is
    encoded as usual.
    """

    def __init__(
        self,
        corpus: str = "scifact:corpus",
        model: str = "all-MiniLM-L6-v2",
        bm25_weight: float = 0.5,
        dense_weight: float = 0.5,
        normalization: str = "minmax",
        query_max_length: int | None = 64,
        passage_max_length: int | None = 128,
        batch_size: int = 64,
        bf16: bool = False,
        k1: float = 1.2,
        b: float = 0.75,
        stemmer: str | None = "english",
        stopwords: str | None = "en",
        device: str | None = None,
        passage_index: str | None = None,
    ):
        super().__init__(device)
        if normalization not in ("minmax", "zscore"):
            raise ValueError(f"normalization must be 'minmax' or 'zscore', got {normalization!r}")
        self.corpus = corpus
        self.passage_index = passage_index
        self.bm25_weight, self.dense_weight = bm25_weight, dense_weight
        self.normalization = normalization
        self.bm25_args = dict(k1=k1, b=b, stemmer=stemmer, stopwords=stopwords)
        self.dense = BiEncoderTeacher(model, query_max_length, passage_max_length, batch_size, bf16, device)

    @property
    def bm25(self):
        if "bm25" not in self._loaded:
            from dr.data import passage_texts, read_corpus
            from dr.retrieval.bm25 import BM25

            self._loaded["bm25"] = BM25(passage_texts(read_corpus(self.corpus)), **self.bm25_args)
        return self._loaded["bm25"]

    def _prefill_passages(self) -> None:
        """Put ``passage_index``'s vectors into the dense teacher's passage cache (once)."""
        if not self.passage_index or "prefilled" in self._loaded:
            return
        from dr.data import passage_texts, read_corpus
        from dr.retrieval.index import DenseIndex

        table = read_corpus(self.corpus)
        docids = list(table["docid"])
        index = DenseIndex.load(self.passage_index, use_gpu=False)
        vectors = index.vectors_of(docids, f"passage_index={self.passage_index} (corpus {self.corpus})")
        texts = passage_texts(table)
        limit = self.dense.cache_size
        self.dense._cache.update(zip(texts[:limit], vectors[:limit]))
        self._loaded["prefilled"] = True

    def _fuse(self, bm25: np.ndarray, dense: np.ndarray) -> np.ndarray:
        return fuse([bm25, dense], [self.bm25_weight, self.dense_weight], self.normalization)

    def forward(self, queries, passages) -> torch.Tensor:
        self._prefill_passages()
        bm25 = self.bm25.score_texts(list(queries), list(passages))
        dense = self.dense.scores(queries, passages)
        return torch.from_numpy(self._fuse(bm25, dense)).float()

    def score_groups(self, queries, passages, show_progress: bool = False) -> list[np.ndarray]:
        self._prefill_passages()
        dense = self.dense.score_groups(queries, passages, show_progress=show_progress)
        return [
            self._fuse(self.bm25.score_texts([q], list(group))[0], d) for q, group, d in zip(queries, passages, dense)
        ]
