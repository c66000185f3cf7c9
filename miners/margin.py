"""Margin-controlled negatives: a rank window plus positive-aware score thresholds.

- Rank window, as in SciNCL (Ostendorff et al., EMNLP 2022, "Neighborhood Contrastive Learning for
  Scientific Document Representations with Citation Embeddings"): keep ranks ``[range_min, range_max)``,
  e.g. skip the top 10–30 to avoid false negatives (FlagEmbedding mines from ranks 10–210).
- Positive-aware thresholds, as in NV-Retriever (Moreira et al. 2024, "NV-Retriever: Improving text
  embedding models with effective hard-negative mining", TopK-PercPos and TopK-MarginPos), with s_pos
  the positive's score (explicit ``Candidates.positive_scores``, else its score as a retrieved candidate):
    drop s_i if  s_i + absolute_margin > s_pos                   (TopK-MarginPos)
    drop s_i if  s_i > s_pos − |s_pos| · relative_margin          (TopK-PercPos; 95% ⇔ relative_margin=0.05)
  For s_pos ≥ 0 the relative threshold is (1 − relative_margin) · s_pos; the |s_pos| form keeps it below
  s_pos for negative scores too (as sentence-transformers). Queries whose s_pos is unknown skip these two.
- Absolute bounds: drop s_i > ``max_score`` or s_i < ``min_score``.

All thresholds are on the raw scores of the candidates (cosine, dot product, BM25), not on logits; the
relative margin does not depend on the scale of the scores.

Two choices differ between the methods this follows, and are explicit options:

- ``positive_score``: which positive's score is s_pos when a query has several. ``"min"`` (default):
  the hardest positive, as sentence-transformers' ``mine_hard_negatives`` ("to be on the safe side, we
  will use the minimum positive score", ``sentence_transformers/util/hard_negatives.py``), which filters
  more; NV-Retriever's TopK-PercPos has one positive per query, where min and max agree. ``"max"``: the
  best positive, a looser filter.
- ``rank_window``: what ``range_min`` / ``range_max`` count. ``"raw"`` (default): 0-based columns of the
  candidate list, positives and filtered candidates included (SciNCL's raw k-NN ranks). ``"filtered"``:
  ranks among the candidates left once positives and the score filters have removed theirs, as
  sentence-transformers (it sorts the surviving scores, then skips the first ``range_min``).

Then ``sampling="top"`` keeps the ``num_negatives`` best-ranked survivors, ``sampling="random"`` a uniform
sample of them; ``num_negatives=None`` keeps all survivors (a filter stage for ``Chain``).

Parity with sentence-transformers' ``mine_hard_negatives`` (same candidates, i.e. its top
``range_max`` + max positives): ``positive_score="min", rank_window="filtered"``, with the same
``range_min``, ``range_max``, margins, bounds, ``num_negatives`` and ``sampling``. The defaults
(``"min"``, ``"raw"``) are sentence-transformers' positive score and SciNCL's raw ranks. ``conf/miner/margin.yaml``:
TopK-PercPos 95%.
"""

from __future__ import annotations

import numpy as np

from dr.miners.base import Candidates, FilterMiner
from dr.miners.sampling import take_first, take_uniform

SAMPLINGS = ("top", "random")
POSITIVE_SCORES = ("max", "min")
RANK_WINDOWS = ("raw", "filtered")


class MarginMiner(FilterMiner):
    """Rank window + absolute/relative margin to the positive + score bounds (see module docstring)."""

    def __init__(
        self,
        num_negatives: int | None = None,
        range_min: int = 0,
        range_max: int | None = None,
        absolute_margin: float | None = None,
        relative_margin: float | None = None,
        max_score: float | None = None,
        min_score: float | None = None,
        sampling: str = "top",
        positive_score: str = "min",
        rank_window: str = "raw",
    ):
        if sampling not in SAMPLINGS:
            raise ValueError(f"MarginMiner: sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if positive_score not in POSITIVE_SCORES:
            raise ValueError(f"MarginMiner: positive_score must be one of {POSITIVE_SCORES}, got {positive_score!r}")
        if rank_window not in RANK_WINDOWS:
            raise ValueError(f"MarginMiner: rank_window must be one of {RANK_WINDOWS}, got {rank_window!r}")
        if range_max is not None and range_max < range_min:
            raise ValueError(f"MarginMiner: range_max ({range_max}) must be >= range_min ({range_min})")
        self.num_negatives, self.sampling = num_negatives, sampling
        self.range_min, self.range_max = range_min, range_max
        self.absolute_margin, self.relative_margin = absolute_margin, relative_margin
        self.max_score, self.min_score = max_score, min_score
        self.positive_score, self.rank_window = positive_score, rank_window

    def s_pos(self, candidates: Candidates) -> np.ndarray:
        """[Q] the positive score the margins are taken from (``positive_score``); NaN if unknown."""
        return candidates.best_positive_score if self.positive_score == "max" else candidates.min_positive_score

    def _in_window(self, rank: np.ndarray) -> np.ndarray:
        ok = rank >= self.range_min
        return ok if self.range_max is None else ok & (rank < self.range_max)

    def passes(self, candidates: Candidates) -> np.ndarray:
        """[Q, K] bool: the candidate survives the score filters, and the rank window when it
        counts raw ranks (``rank_window="filtered"`` applies the window in :meth:`select`)."""
        s = candidates.scores
        ok = np.ones(s.shape, bool)
        if self.rank_window == "raw":
            ok = self._in_window(np.arange(s.shape[1])[None, :])
        s_pos = self.s_pos(candidates)[:, None]  # NaN compares False: filters skipped
        if self.absolute_margin is not None:
            ok = ok & ~(s + self.absolute_margin > s_pos)
        if self.relative_margin is not None:
            ok = ok & ~(s > s_pos - np.abs(s_pos) * self.relative_margin)
        if self.max_score is not None:
            ok = ok & (s <= self.max_score)
        if self.min_score is not None:
            ok = ok & (s >= self.min_score)
        return ok

    def select(
        self, candidates: Candidates, rng: np.random.Generator, eligible: np.ndarray | None = None
    ) -> np.ndarray:
        ok = self._eligible(candidates, eligible) & self.passes(candidates)
        if self.rank_window == "filtered":  # ranks among the survivors (sentence-transformers)
            ok = ok & self._in_window(np.cumsum(ok, axis=1) - 1)
        if self.sampling == "random":
            return take_uniform(ok, self.num_negatives, rng)
        return take_first(ok, self.num_negatives)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None)
        return f"MarginMiner({args})"
