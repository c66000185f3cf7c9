"""BM25 retrieval with bm25s (Lù 2024), used for hard negatives and as a baseline.

Defaults: Lucene-style BM25 with k1 = 1.2, b = 0.75, English stop words and the Snowball
English stemmer (PyStemmer), as in BEIR's and our reference figures.
"""

from __future__ import annotations

import numpy as np


def _stemmer(language: str | None):
    if not language:
        return None
    import Stemmer

    return Stemmer.Stemmer(language).stemWords


def tokenize(texts: list[str], stopwords: str | None, stem) -> list[list[str]]:
    """bm25s tokens (strings) of ``texts``, with the given stop words and stemmer."""
    import bm25s

    if not texts:
        return []
    return bm25s.tokenize(list(texts), stopwords=stopwords, stemmer=stem, return_ids=False, show_progress=False)


class BM25:
    """A bm25s index over ``texts`` whose rows are named by ``docids``."""

    def __init__(
        self,
        texts: list[str],
        docids: list[str],
        k1: float = 1.2,
        b: float = 0.75,
        stemmer: str | None = "english",
        stopwords: str | None = "en",
        show_progress: bool = False,
    ):
        import bm25s

        self.docids = list(docids)
        self.stem = _stemmer(stemmer)
        self.stopwords = stopwords
        self.show_progress = show_progress
        tokens = bm25s.tokenize(texts, stopwords=stopwords, stemmer=self.stem, show_progress=show_progress)
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index(tokens, show_progress=show_progress)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k row indices ``[Q, k]`` and scores ``[Q, k]``, best first."""
        k = min(k, len(self.docids))
        tokens = tokenize(queries, self.stopwords, self.stem)
        rows, scores = self.retriever.retrieve(tokens, k=k, show_progress=self.show_progress, n_threads=0)
        return np.asarray(rows), np.asarray(scores)

    def corpus_scores(self, query: str) -> np.ndarray:
        """The BM25 score of every corpus row for one query (zeros when it has no known term)."""
        tokens = tokenize([query], self.stopwords, self.stem)[0]
        return self.retriever.get_scores(tokens) if tokens else np.zeros(len(self.docids))

    def search_run(self, qids: list[str], queries: list[str], k: int) -> dict[str, dict[str, float]]:
        """Search and return a run ``{qid: {docid: score}}``."""
        rows, scores = self.search(queries, k)
        return {
            qid: {self.docids[r]: float(s) for r, s in zip(row, row_scores)}
            for qid, row, row_scores in zip(qids, rows, scores)
        }
