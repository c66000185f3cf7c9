"""Score fusion of BM25 and a dense encoder: a teacher that needs no cross-encoder.

Each system's scores are normalised per query over that query's candidate set, then summed with
weights (a convex combination when the weights sum to 1)::

    fused(q, d) = w_bm25 · norm_q(bm25(q, d)) + w_dense · norm_q(dense(q, d))

``norm_q`` is min-max ((s − min) / (max − min), 0 when all scores are equal) or z-score
((s − mean) / std, 0 when std = 0) over the candidates of q. Min-max keeps fused scores in
[0, 1], so Margin-MSE margins are in [-1, 1] like a cosine student's; z-score is the better
ranker over a full corpus (see the README's figures).

BM25 of arbitrary (query, passage) text pairs (:class:`BM25Scorer`) uses the corpus's statistics
(document frequencies, average length) and the same tokenizer, stemmer and Lucene formula as
:mod:`dr.bm25`, so a corpus passage gets exactly its bm25s score; new texts are scored as if they
were in the corpus.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Literal

import numpy as np

Normalization = Literal["minmax", "zscore"]


def normalize_scores(scores: np.ndarray, method: Normalization = "minmax", mask: np.ndarray | None = None) -> np.ndarray:
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


def fuse(score_sets: list[np.ndarray], weights: list[float], method: Normalization = "minmax", mask: np.ndarray | None = None) -> np.ndarray:
    """Weighted sum of per-row normalised score arrays (all of the same shape)."""
    if len(score_sets) != len(weights):
        raise ValueError(f"{len(score_sets)} score sets but {len(weights)} weights")
    return sum(w * normalize_scores(s, method, mask) for s, w in zip(score_sets, weights))


class BM25Scorer:
    """Lucene BM25 of any (query, passage) texts with the statistics of a corpus (see module docstring).

    ``score(queries, passages)`` returns the ``[B, P]`` matrix of every query against every
    passage. Query terms are counted with multiplicity and terms unknown to the corpus score 0,
    as in bm25s.
    """

    def __init__(self, texts: list[str], k1: float = 1.2, b: float = 0.75, stemmer: str | None = "english", stopwords: str | None = "en"):
        from dr.bm25 import _stemmer

        self.k1, self.b = k1, b
        self.stem = _stemmer(stemmer)
        self.stopwords = stopwords
        docs = self.tokenize(texts)
        df: Counter = Counter()
        for tokens in docs:
            df.update(set(tokens))
        n = len(docs)
        self.avgdl = sum(len(t) for t in docs) / max(1, n)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def tokenize(self, texts: list[str]) -> list[list[str]]:
        from dr.bm25 import tokenize

        return tokenize(texts, self.stopwords, self.stem)

    def score(self, queries: list[str], passages: list[str]) -> np.ndarray:
        q_tokens = self.tokenize(queries)
        p_counts = [Counter(t) for t in self.tokenize(passages)]
        norm = np.array([self.k1 * (1 - self.b + self.b * sum(c.values()) / self.avgdl) for c in p_counts])
        out = np.zeros((len(queries), len(passages)), dtype=np.float64)
        for i, tokens in enumerate(q_tokens):
            for term in tokens:
                idf = self.idf.get(term)
                if idf is None:
                    continue
                tf = np.array([c.get(term, 0) for c in p_counts], dtype=np.float64)
                out[i] += idf * tf / (tf + norm)  # Lucene (and bm25s) drop the constant (k1 + 1)
        return out


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

    ``bm25`` is a :class:`dr.bm25.BM25` over the corpus (rows = embedding rows). The candidates of
    a query are the union of BM25's and the dense retriever's top-``depth`` (FAISS flat search,
    :mod:`dr.index`); both systems' exact scores are computed for every candidate, normalised over
    the candidates and fused. ``depth >= len(corpus)`` fuses over the whole corpus.
    """
    from dr.index import DenseIndex

    n = len(bm25.docids)
    depth = min(depth, n)
    index = DenseIndex.build(np.asarray(corpus_embeddings, dtype=np.float32), [str(r) for r in range(n)], use_gpu=False)
    _, dense_rows = index.search(np.asarray(query_embeddings, dtype=np.float32), depth)
    bm25_rows, _ = bm25.search(query_texts, depth)
    run = {}
    for i, qid in enumerate(qids):
        rows = np.unique(np.concatenate([np.asarray([int(r) for r in dense_rows[i]], dtype=np.int64), np.asarray(bm25_rows[i], dtype=np.int64)]))
        b_scores = bm25.corpus_scores(query_texts[i])[rows]
        d_scores = np.asarray(corpus_embeddings[rows], dtype=np.float32) @ np.asarray(query_embeddings[i], dtype=np.float32)
        fused = fuse([b_scores, d_scores], [bm25_weight, dense_weight], normalization)
        top = np.argsort(-fused, kind="stable")[:k]
        run[qid] = {bm25.docids[rows[j]]: float(fused[j]) for j in top}
    return run
