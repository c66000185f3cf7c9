"""SimANS: ambiguous negatives sampled around the positive's score.

Zhou et al., EMNLP 2022, "SimANS: Simple Ambiguous Negatives Sampling for Dense Text Retrieval".

Formula. From the query's top-k candidates (positives removed), draw ``num_negatives`` distinct
negatives, one at a time, each with

    gaussian (paper):  p_i ∝ exp(−a · (z_i − z_pos − b)²)
    laplace (reference code for MS MARCO passages):  p_i ∝ exp(−τ · |z_i − z_pos|)

where z = ``score_scale`` × s are the retriever's logits, and excluding those already drawn (we use
Gumbel-top-k, which is exactly that; ``miners/sampling.py``).

Score scale. a, b and τ are on the scale of the retriever's *logits*, z = ``score_scale × s``: the
reference tuned a = 0.5 and τ = 3 on dot-product retrievers whose top-200 scores lie tens of points
apart. A cosine student's scores lie in [−1, 1]; its logits are cos / temperature (InfoNCE's 0.05:
``score_scale = 20``). On raw cosines the same a = 0.5 weighs the whole top-200 within a few percent
of each other, i.e. samples uniformly. ``score_scale=None`` is 1 (raw scores) unless the mining path
sets it (``dr-mine score_scale``, ``refresh.score_scale``: 1/temperature of the training loss, or
by the encoder's similarity); each call records the kernel's effective sample size 1/Σp² per query
in ``last_effective_sample_size`` (about the pool size: a flat kernel).

Sign of ``b``. We follow the paper's text, ``(z_i − z_pos − b)``: the kernel peaks at z_i = z_pos + b.
The reference code writes ``(s_neg − s_pos + b)``, so ``b_here = −b_code``: its NQ setting b = 1.0
(peak one point *below* the positive) is ``b=-1.0`` here. b = 0 is the same in both.

s_pos is the *max* score over the query's positives: an explicit ``Candidates.positive_scores`` value
where given, else the positive's score as a retrieved candidate.

Fallback. When s_pos is unknown (no positive score given and no positive retrieved), the reference code
takes the last ``num_negatives`` candidates of the top-k; we do the same (the lowest-ranked eligible ones).

Defaults: a = 0.5, b = 0 (reference code), τ = 3 (MS MARCO passages), all on logits, 15 negatives from
the top-200 (``top_k=None`` uses every candidate given; pass ``top_k=200`` to cut a deeper list).
``num_negatives=None`` keeps the whole eligible top-k (no sampling). Training can also redraw from the
stored top-k every time a query is loaded, as the reference does: :mod:`dr.sampling.simans`.
"""

from __future__ import annotations

import numpy as np

from dr.miners.base import CandidateMiner, Candidates
from dr.miners.sampling import effective_sample_size, take_last, take_weighted

KERNELS = ("gaussian", "laplace")


class SimANSMiner(CandidateMiner):
    """Sample negatives from the top-k with the SimANS kernel around s_pos (see module docstring)."""

    samples_by_kernel = True  # a pair sampler with the same kernel must not sample its output again

    def __init__(
        self,
        num_negatives: int | None = 15,
        a: float = 0.5,
        b: float = 0.0,
        kernel: str = "gaussian",
        tau: float = 3.0,
        top_k: int | None = None,
        score_scale: float | None = None,
    ):
        if kernel not in KERNELS:
            raise ValueError(f"SimANSMiner: kernel must be one of {KERNELS}, got {kernel!r}")
        if a < 0 or tau < 0:
            raise ValueError(f"SimANSMiner: a and tau must be >= 0, got a={a}, tau={tau}")
        if score_scale is not None and not score_scale > 0:
            raise ValueError(f"SimANSMiner: score_scale must be > 0, got {score_scale}")
        self.num_negatives, self.a, self.b, self.kernel, self.tau, self.top_k = num_negatives, a, b, kernel, tau, top_k
        self.score_scale = score_scale
        self.last_effective_sample_size: np.ndarray | None = None

    def log_weights(self, scores: np.ndarray, s_pos: np.ndarray) -> np.ndarray:
        """Unnormalised log p_i for raw ``scores [Q, K]`` around raw ``s_pos [Q]``, on logits
        (``score_scale ×`` the raw difference)."""
        scale = 1.0 if self.score_scale is None else float(self.score_scale)
        diff = scale * (scores.astype(np.float64) - s_pos[:, None])
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
        self.last_effective_sample_size = effective_sample_size(eligible & known[:, None], log_w)
        sampled = take_weighted(eligible & known[:, None], log_w, self.num_negatives, rng)
        fallback = take_last(eligible & ~known[:, None], self.num_negatives)
        return sampled | fallback

    def __repr__(self) -> str:
        kernel = f"tau={self.tau}" if self.kernel == "laplace" else f"a={self.a}, b={self.b}"
        return (
            f"SimANSMiner(num_negatives={self.num_negatives}, kernel={self.kernel!r}, {kernel}, top_k={self.top_k}, "
            f"score_scale={self.score_scale})"
        )
