"""Random negatives: documents drawn uniformly from the whole corpus.

The "random" negatives of DPR (Karpukhin et al., EMNLP 2020) and the easy negatives SciNCL adds to its
hard ones. Formula: negatives(q) ~ Uniform over the ``num_negatives``-subsets of corpus \\ positives(q).
Default ``num_negatives=15``. Scores are unknown (NaN): the candidates are not consulted, so this miner
cannot be a ``Chain`` stage.

``corpus`` is the corpus size ``N`` (docids are ``0..N-1``) or the array of docids. It may be left ``None``
in a config and set on the instance before use (``miner.corpus = ids``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dr.miners.base import Candidates, Miner, Mined, as_rng, pad_value


def _distinct_rows(rng: np.random.Generator, size: int, rows: int, width: int) -> np.ndarray:
    """[rows, width] indices in [0, size), distinct within a row, a uniformly random ordered sample."""
    if size <= 4 * width * width:  # small corpus: a random permutation per row is cheap
        return np.argsort(rng.random((rows, size)), axis=1)[:, :width]
    out = rng.integers(size, size=(rows, width))
    while True:  # rejection: redraw the (rare, ~width²/size) rows with a repeated index
        s = np.sort(out, axis=1)
        redo = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if not redo.any():
            return out
        out[redo] = rng.integers(size, size=(int(redo.sum()), width))


class RandomMiner(Miner):
    """``num_negatives`` distinct non-positive documents per query, uniform over the corpus."""

    def __init__(self, num_negatives: int = 15, corpus: int | Sequence | np.ndarray | None = None):
        if num_negatives is None or num_negatives < 0:
            raise ValueError(f"RandomMiner: num_negatives must be an int >= 0, got {num_negatives}")
        self.num_negatives, self.corpus = num_negatives, corpus

    def __call__(self, candidates: Candidates, rng: np.random.Generator | int | None = None) -> Mined:
        if self.corpus is None:
            raise ValueError("RandomMiner: set `corpus` (the corpus size or its docids) before mining")
        ids = None if isinstance(self.corpus, (int, np.integer)) else np.asarray(self.corpus)
        size = int(self.corpus) if ids is None else len(ids)
        q, p = candidates.positive_ids.shape
        # Draw n + P distinct documents, drop the (at most P) positives, keep the first n left.
        width = min(size, self.num_negatives + p)
        draws = _distinct_rows(as_rng(rng), size, q, width)
        docids = draws if ids is None else ids[draws]
        if p and docids.size:
            same = docids[:, :, None] == candidates.positive_ids[:, None, :]
            ok = ~(same & candidates.positive_mask[:, None, :]).any(axis=2)
        else:
            ok = np.ones(docids.shape, bool)
        keep = ok & (np.cumsum(ok, axis=1) <= self.num_negatives)
        n = int(keep.sum(axis=1).max(initial=0))
        order = np.argsort(~keep, axis=1, kind="stable")[:, :n]
        mask = np.take_along_axis(keep, order, axis=1)
        docids = np.take_along_axis(docids, order, axis=1)
        docids = np.where(mask, docids, pad_value(docids.dtype)).astype(docids.dtype)
        return Mined(docids, np.full(mask.shape, np.nan, np.float32), mask)

    def __repr__(self) -> str:
        corpus = self.corpus if self.corpus is None or isinstance(self.corpus, int) else f"<{len(self.corpus)} ids>"
        return f"RandomMiner(num_negatives={self.num_negatives}, corpus={corpus})"
