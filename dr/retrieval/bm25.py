"""BM25 (Lucene variant, via bm25s; Lù 2024): retrieval, scores of arbitrary text pairs, hard negatives.

One class serves every use: :meth:`BM25.search` / :meth:`BM25.search_run` rank the corpus
(baseline runs, validation candidates, BM25 negatives), :meth:`BM25.corpus_scores` scores every
passage for one query (score fusion), and :meth:`BM25.score_texts` scores any (query, passage)
texts with the corpus's statistics (the fusion teacher's in-batch matrix).

Defaults: k1 = 1.2, b = 0.75, English stop words and the Snowball English stemmer (PyStemmer),
as in BEIR's and our reference figures. Lucene's BM25 drops the constant (k1 + 1) factor and uses
idf = log(1 + (N - df + 0.5) / (df + 0.5)); bm25s computes the same.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from dr.data.negatives import NegativesRecord


def make_stemmer(language: str | None):
    """PyStemmer's ``stemWords`` for ``language`` (None: no stemming)."""
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
        docids: list[str] | None = None,
        k1: float = 1.2,
        b: float = 0.75,
        stemmer: str | None = "english",
        stopwords: str | None = "en",
        show_progress: bool = False,
    ):
        import bm25s

        self.docids = list(docids) if docids is not None else [str(i) for i in range(len(texts))]
        if len(self.docids) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(self.docids)} docids")
        self.k1, self.b = k1, b
        self.stem = make_stemmer(stemmer)
        self.stopwords = stopwords
        self.show_progress = show_progress
        tokens = bm25s.tokenize(list(texts), stopwords=stopwords, stemmer=self.stem, show_progress=show_progress)
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index(tokens, show_progress=show_progress)
        # Corpus statistics for scoring arbitrary text pairs (score_texts): document frequencies
        # are the posting-list lengths of bm25s's token-major score matrix (a Lucene BM25 score
        # is > 0 exactly where tf > 0), the average length comes from the tokenised corpus.
        self._vocab = dict(tokens.vocab)
        self._df = np.diff(np.asarray(self.retriever.scores["indptr"]))
        self.avgdl = float(np.mean([len(ids) for ids in tokens.ids])) if len(tokens.ids) else 0.0

    def __len__(self) -> int:
        return len(self.docids)

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

    def idf(self, term: str) -> float | None:
        """Lucene idf of a (tokenised) term, None when the corpus does not contain it."""
        t = self._vocab.get(term)
        if t is None or t >= len(self._df) or self._df[t] == 0:
            return None
        n, df = len(self.docids), int(self._df[t])
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def score_texts(self, queries: list[str], passages: list[str]) -> np.ndarray:
        """The ``[Q, P]`` BM25 scores of every query text against every passage text, with this
        corpus's statistics (the passages need not be in it). Query terms count with
        multiplicity and terms unknown to the corpus score 0, as in bm25s."""
        q_tokens = tokenize(queries, self.stopwords, self.stem)
        p_counts = [Counter(t) for t in tokenize(passages, self.stopwords, self.stem)]
        avgdl = self.avgdl or 1.0
        norm = np.array([self.k1 * (1 - self.b + self.b * sum(c.values()) / avgdl) for c in p_counts])
        out = np.zeros((len(queries), len(passages)), dtype=np.float64)
        for i, tokens in enumerate(q_tokens):
            for term in tokens:
                idf = self.idf(term)
                if idf is None:
                    continue
                tf = np.array([c.get(term, 0) for c in p_counts], dtype=np.float64)
                out[i] += idf * tf / (tf + norm)  # Lucene (and bm25s) drop the constant (k1 + 1)
        return out


class BM25Negatives:
    """A negatives source for the data module: BM25 candidates from ranks ``[rank_min, rank_max)``.

    Skipping the first ranks avoids the unlabelled relevant documents that sit at the very top
    (a common rank window, e.g. RocketQA and FlagEmbedding). Called as
    ``source(corpus, qids, query_texts, positives) -> [NegativesRecord]``; the BM25 index it
    builds stays in ``index`` (the data module reuses it for validation candidates).
    """

    name = "bm25"

    def __init__(self, rank_min: int = 10, rank_max: int = 50, k1: float = 1.2, b: float = 0.75):
        if not 0 <= rank_min < rank_max:
            raise ValueError(f"BM25 negatives: expected 0 <= rank_min < rank_max, got {rank_min} and {rank_max}")
        self.rank_min, self.rank_max, self.k1, self.b = rank_min, rank_max, k1, b
        self.index: BM25 | None = None

    def __call__(self, corpus, qids: list[str], query_texts: list[str], positives: dict) -> list[NegativesRecord]:
        from dr.data.corpus import passage_texts

        self.index = BM25(passage_texts(corpus), list(corpus["docid"]), k1=self.k1, b=self.b)
        return bm25_negatives(self.index, qids, query_texts, positives, self.rank_min, self.rank_max)


def bm25_negatives(
    bm25,
    qids: list[str],
    query_texts: list[str],
    positives: dict[str, set[str]],
    rank_min: int = 10,
    rank_max: int = 50,
) -> list[NegativesRecord]:
    """BM25 candidates from ranks ``[rank_min, rank_max)`` (0-based), never a positive.

    Skipping the first ranks avoids the unlabelled relevant documents that sit at the very top
    (a common rank window, e.g. RocketQA and FlagEmbedding).
    """
    rows, scores = bm25.search(query_texts, rank_max)
    records = []
    for qid, row, row_scores in zip(qids, rows, scores):
        pos = positives.get(qid, set())
        picked = [
            (bm25.docids[r], float(s))
            for r, s in zip(row[rank_min:rank_max], row_scores[rank_min:rank_max])
            if bm25.docids[r] not in pos
        ]
        records.append(NegativesRecord(qid, sorted(pos), [d for d, _ in picked], [s for _, s in picked]))
    return records
