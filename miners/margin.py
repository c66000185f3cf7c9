"""Margin-controlled negatives: a rank window plus positive-aware score thresholds.

- Rank window, as in SciNCL (Ostendorff et al., EMNLP 2022, "Neighborhood Contrastive Learning for
  Scientific Document Representations with Citation Embeddings",): keep ranks
  ``[range_min, range_max)`` (0-based columns of the candidate list), e.g. skip the top 10–30 to avoid
  false negatives (FlagEmbedding mines from ranks 10–210).
- Positive-aware thresholds, as in NV-Retriever (Moreira et al. 2024, "NV-Retriever: Improving text
  embedding models with effective hard-negative mining", TopK-PercPos and TopK-MarginPos), with
  s_pos the best positive's score (``Candidates.best_positive_score``):
    drop s_i if  s_i + absolute_margin > s_pos             (TopK-MarginPos)
    drop s_i if  s_i > (1 − relative_margin) · s_pos        (TopK-PercPos; 95% ⇔ relative_margin=0.05)
  The relative margin assumes non-negative scores (cosine, cross-encoder probabilities). Queries whose
  s_pos is unknown skip these two filters.
- Absolute bounds: drop s_i > ``max_score`` or s_i < ``min_score``.

Then ``sampling="top"`` keeps the ``num_negatives`` best-ranked survivors, ``sampling="random"`` a uniform
sample of them; ``num_negatives=None`` keeps all survivors (a filter stage for ``Chain``). The knobs and
their semantics match sentence-transformers' ``mine_hard_negatives``.
Defaults: every filter off except what you set; the ``conf/miner/margin.yaml`` default is TopK-PercPos 95%.
"""

from __future__ import annotations

import numpy as np

from miners.base import Candidates, FilterMiner

SAMPLINGS = ("top", "random")


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
    ):
        if sampling not in SAMPLINGS:
            raise ValueError(f"MarginMiner: sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if range_max is not None and range_max < range_min:
            raise ValueError(f"MarginMiner: range_max ({range_max}) must be >= range_min ({range_min})")
        self.num_negatives, self.sampling = num_negatives, sampling
        self.range_min, self.range_max = range_min, range_max
        self.absolute_margin, self.relative_margin = absolute_margin, relative_margin
        self.max_score, self.min_score = max_score, min_score

    def passes(self, candidates: Candidates) -> np.ndarray:
        """[Q, K] bool: the candidate survives every configured filter (before picking)."""
        s = candidates.scores
        rank = np.arange(s.shape[1])[None, :]
        ok = rank >= self.range_min
        if self.range_max is not None:
            ok = ok & (rank < self.range_max)
        s_pos = candidates.best_positive_score[:, None]  # NaN compares False: filters skipped
        if self.absolute_margin is not None:
            ok = ok & ~(s + self.absolute_margin > s_pos)
        if self.relative_margin is not None:
            ok = ok & ~(s > (1.0 - self.relative_margin) * s_pos)
        if self.max_score is not None:
            ok = ok & (s <= self.max_score)
        if self.min_score is not None:
            ok = ok & (s >= self.min_score)
        return ok

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None)
        return f"MarginMiner({args})"
