"""SimANS: ambiguous negatives sampled around the positive's score.

Zhou et al., EMNLP 2022, "SimANS: Simple Ambiguous Negatives Sampling for Dense Text Retrieval".

Formula. From the query's top-k candidates (positives removed), draw ``num_negatives`` distinct
negatives, one at a time, each with

    gaussian (paper):  p_i ∝ exp(−a · (s_i − s_pos − b)²)
    laplace (reference code for MS MARCO passages):  p_i ∝ exp(−τ · |s_i − s_pos|)

and excluding those already drawn (we use Gumbel-top-k, which is exactly that; ``miners/sampling.py``).

Sign of ``b``. We follow the paper's text, ``(s_i − s_pos − b)``: the kernel peaks at s_i = s_pos + b.
The reference code writes ``(s_neg − s_pos + b)``, so ``b_here = −b_code``: its NQ setting b = 1.0
(peak one point *below* the positive) is ``b=-1.0`` here. b = 0 is the same in both.

s_pos is the *max* score over the query's positives: an explicit ``Candidates.positive_scores`` value
where given, else the positive's score as a retrieved candidate.

Fallback. When s_pos is unknown (no positive score given and no positive retrieved), the reference code
takes the last ``num_negatives`` candidates of the top-k; we do the same (the lowest-ranked eligible ones).

Defaults: a = 0.5, b = 0 (reference code), τ = 3 (MS MARCO passages), 15 negatives from the top-200
(``top_k=None`` uses every candidate given; pass ``top_k=200`` to cut a deeper list). ``num_negatives=None``
keeps the whole eligible top-k (no sampling).
"""

from __future__ import annotations

import numpy as np

from miners.base import CandidateMiner, Candidates
from miners.sampling import take_last, take_weighted

KERNELS = ("gaussian", "laplace")


class SimANSMiner(CandidateMiner):
    """Sample negatives from the top-k with the SimANS kernel around s_pos (see module docstring)."""

    def __init__(
        self,
        num_negatives: int | None = 15,
        a: float = 0.5,
        b: float = 0.0,
        kernel: str = "gaussian",
        tau: float = 3.0,
        top_k: int | None = None,
    ):
        if kernel not in KERNELS:
            raise ValueError(f"SimANSMiner: kernel must be one of {KERNELS}, got {kernel!r}")
        if a < 0 or tau < 0:
            raise ValueError(f"SimANSMiner: a and tau must be >= 0, got a={a}, tau={tau}")
        self.num_negatives, self.a, self.b, self.kernel, self.tau, self.top_k = num_negatives, a, b, kernel, tau, top_k

    def log_weights(self, scores: np.ndarray, s_pos: np.ndarray) -> np.ndarray:
        """Unnormalised log p_i for ``scores [Q, K]`` around ``s_pos [Q]``."""
        diff = scores.astype(np.float64) - s_pos[:, None]
        if self.kernel == "laplace":
            return -self.tau * np.abs(diff)
        return -self.a * (diff - self.b) ** 2

    def select(
        self, candidates: Candidates, rng: np.random.Generator, eligible: np.ndarray | None = None
    ) -> np.ndarray:
        eligible = self._eligible(candidates, eligible)
        if self.top_k is not None:
            eligible = eligible & (np.arange(eligible.shape[1]) < self.top_k)
        s_pos = candidates.best_positive_score
        known = ~np.isnan(s_pos)
        log_w = self.log_weights(candidates.scores, np.where(known, s_pos, 0.0))
        sampled = take_weighted(eligible & known[:, None], log_w, self.num_negatives, rng)
        fallback = take_last(eligible & ~known[:, None], self.num_negatives)
        return sampled | fallback

    def __repr__(self) -> str:
        kernel = f"tau={self.tau}" if self.kernel == "laplace" else f"a={self.a}, b={self.b}"
        return f"SimANSMiner(num_negatives={self.num_negatives}, kernel={self.kernel!r}, {kernel}, top_k={self.top_k})"
