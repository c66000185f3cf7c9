"""SimANS negatives redrawn every time a query is loaded (Zhou et al., EMNLP 2022, "SimANS: Simple
Ambiguous Negatives Sampling for Dense Text Retrieval": the paper's sampling distribution, and its
reference code's training loop).

The reference code keeps each query's top-k candidates of the current retriever (k = 200) with
their scores and, every time the query is loaded, samples its hard negatives from them with

    gaussian (paper):  p_i ∝ exp(−a · (z_i − z_pos − b)²)
    laplace (reference code for MS MARCO passages):  p_i ∝ exp(−τ · |z_i − z_pos|)

(one at a time, without replacement). Mining once with :class:`dr.miners.SimANSMiner` and then taking
one of the 15 fixed negatives uniformly is not the same distribution: it freezes one draw per
refresh. :class:`SimANSPairSampler` is the ``data.pair_sampler`` that redraws, over a negatives file
that keeps the whole candidate pool with its scores and the positives' scores (``dr-mine
miner=pool``, or ``miner@refresh.miner=pool`` for an index refresh; ``sampler=simans``).

Scale: z = ``score_scale`` × s, the student's logits (a = 0.5 and τ = 3 were tuned on dot-product
scores tens of points apart); ``score_scale=None`` is set by the data module at train start to
1/temperature of the training loss, else 20 for a cosine encoder and 1 for a dot-product one
(:func:`dr.miners.candidates.student_score_scale`). Sign of b: the paper's, as :mod:`dr.miners.simans`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dr.sampling.random import sample_negatives
from dr.miners.sampling import take_last, take_weighted
from dr.miners.simans import SimANSMiner

log = logging.getLogger(__name__)


@dataclass
class _Pool:
    """One query's scored candidates, best first, valid for the lists it was built from."""

    negatives: list
    scores_of: dict
    docids: list[str]
    scores: np.ndarray


class SimANSPairSampler:
    """A ``pair_sampler`` drawing each load's negatives with the SimANS kernel (see module docstring).

    The positive is uniform over the query's positives and the kernel is centred on its score
    (s_pos; when unknown, the best known positive score). Candidates are the query's negatives that
    have a score, the first ``top_k`` by score (None: all). Fall-backs as the reference: no known
    s_pos takes the lowest-ranked candidates; no scored candidate samples uniformly.
    """

    uses_scores = True  # the data module passes the negatives file's scores (``scores=``)

    def __init__(
        self,
        a: float = 0.5,
        b: float = 0.0,
        kernel: str = "gaussian",
        tau: float = 3.0,
        top_k: int | None = None,
        score_scale: float | None = None,
    ):
        self.kernel = SimANSMiner(num_negatives=1, a=a, b=b, kernel=kernel, tau=tau, score_scale=score_scale)
        self.top_k = top_k
        self._cache: dict[str, _Pool] = {}
        self._warned = False

    @property
    def score_scale(self) -> float | None:
        return self.kernel.score_scale

    @score_scale.setter
    def score_scale(self, value: float | None) -> None:
        self.kernel.score_scale = value

    def probabilities(self, pool_scores: np.ndarray, s_pos: float) -> np.ndarray:
        """The first draw's probabilities over a pool of raw scores (for tests and diagnostics)."""
        log_w = self.kernel.log_weights(np.asarray(pool_scores, np.float64)[None, :], np.array([s_pos]))[0]
        p = np.exp(log_w - log_w.max())
        return p / p.sum()

    def __call__(self, qid, positives, negatives, teacher, num_negatives, rng, scores=None):
        scores = scores or {}
        positive = positives[rng.integers(len(positives))]
        if num_negatives <= 0 or not negatives:
            return positive, []
        pool = self.pool_of(qid, negatives, scores)
        if not pool.docids:
            return positive, sample_negatives(negatives, num_negatives, rng)
        s_pos = scores.get(positive)
        if s_pos is None:
            known = [scores[p] for p in positives if p in scores]
            s_pos = max(known) if known else None
        eligible = np.ones((1, len(pool.docids)), bool)
        if s_pos is None:  # the reference takes the last candidates of the top-k
            if not self._warned:
                log.warning(
                    "SimANS: query %s has no positive score in the negatives file: it takes its lowest-ranked "
                    "candidates (as the reference); mine with dr-mine or a refresh to have the positives' scores",
                    qid,
                )
                self._warned = True
            keep = take_last(eligible, num_negatives)[0]
        else:
            log_w = self.kernel.log_weights(pool.scores[None, :], np.array([float(s_pos)]))
            keep = take_weighted(eligible, log_w, num_negatives, rng)[0]
        return positive, [pool.docids[j] for j in np.flatnonzero(keep)]

    def pool_of(self, qid, negatives, scores) -> _Pool:
        """The query's scored candidates, best first (cached while the same lists are passed)."""
        entry = self._cache.get(qid)
        if entry is not None and entry.negatives is negatives and entry.scores_of is scores:
            return entry
        scored = sorted(((scores[d], d) for d in dict.fromkeys(negatives) if d in scores), key=lambda x: -x[0])[
            : self.top_k
        ]
        entry = _Pool(negatives, scores, [d for _, d in scored], np.array([s for s, _ in scored], np.float64))
        self._cache[qid] = entry
        return entry

    def __repr__(self) -> str:
        k = self.kernel
        shape = f"tau={k.tau}" if k.kernel == "laplace" else f"a={k.a}, b={k.b}"
        return f"SimANSPairSampler(kernel={k.kernel!r}, {shape}, top_k={self.top_k}, score_scale={self.score_scale})"
