"""Denoised hard negatives: drop candidates a teacher (cross-encoder) thinks are relevant.

RocketQA (Qu et al., NAACL 2021, "RocketQA: An Optimized Training Approach to Dense Passage Retrieval
for Open-Domain Question Answering", "denoised hard negatives"): from the retriever's top
candidates keep only those the cross-encoder scores low, since many top-ranked "negatives" are unlabelled
positives.

Formula, with t_i the teacher score of candidate i (``Candidates.teacher_scores``; ``dr-mine teacher=...``
fills them, :func:`dr.miners.candidates.with_teacher_scores`):
    threshold:  keep i if P_i < threshold                     (RocketQA: 0.1)
    margin:     keep i if t_i ≤ min_p t_pos,p − margin        (e.g. 3.0 on raw cross-encoder logits)
Scales: ``threshold`` is a probability of relevance in [0, 1], as RocketQA's cross-encoder outputs;
P_i = ``teacher_probability``(t_i), the teacher's own map onto it (:meth:`dr.teachers.Teacher.to_probability`:
a sigmoid of a single-logit cross-encoder's logit, so 0.1 is logit −2.2), set when the mining path binds
its teacher (:meth:`bind_teacher`). A teacher whose scores are no probability (a bi-encoder's
similarity, the fusion teacher's per-query normalisation, where 0.1 would be a relative cut) is refused
with a threshold. Unbound (the Python API on hand-made ``Candidates``), teacher scores are taken as
probabilities already. ``margin`` is on the teacher's raw scale.
t_pos is each positive's teacher score (``teacher_positive_scores``, else its teacher score as a retrieved
candidate); the *min* over positives makes the margin the strictest. Queries with no known t_pos skip the
margin filter. Both filters may be set at once. Then ``sampling`` picks ``num_negatives`` as in
``MarginMiner`` (RocketQA samples 4 per positive); ``num_negatives=None`` keeps all survivors.
"""

from __future__ import annotations

import numpy as np

from dr.config import ConfigError
from dr.miners.base import Candidates, FilterMiner

SAMPLINGS = ("top", "random")


class DenoiseMiner(FilterMiner):
    """Keep candidates whose teacher score is below a threshold and/or a margin under the positive's."""

    needs_teacher_scores = True  # the mining path must score the candidates with a teacher first

    def __init__(
        self,
        num_negatives: int | None = None,
        threshold: float | None = None,
        margin: float | None = None,
        sampling: str = "top",
        teacher_probability=None,
    ):
        if threshold is None and margin is None:
            raise ValueError("DenoiseMiner: set threshold and/or margin (otherwise it filters nothing)")
        if sampling not in SAMPLINGS:
            raise ValueError(f"DenoiseMiner: sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if threshold is not None and not 0 <= threshold <= 1:
            raise ValueError(f"DenoiseMiner: threshold is a probability of relevance in [0, 1], got {threshold}")
        self.num_negatives, self.threshold, self.margin, self.sampling = num_negatives, threshold, margin, sampling
        # teacher score -> P(relevant); None: the scores are probabilities
        self.teacher_probability = teacher_probability

    def bind_teacher(self, teacher) -> None:
        """Map ``teacher``'s scores onto the threshold's probability scale, or refuse a teacher without one."""
        if self.threshold is None:
            return
        if not getattr(teacher, "maps_to_probability", False):
            raise ConfigError(
                f"miner.threshold={self.threshold}: expected a teacher whose scores map to a probability of relevance "
                f"(a cross-encoder); {type(teacher).__name__}'s scores are not probabilities. Use miner.margin on the "
                "teacher's own scale, or teacher=cross_encoder"
            )
        self.teacher_probability = teacher.to_probability

    def passes(self, candidates: Candidates) -> np.ndarray:
        """[Q, K] bool: the candidate survives the teacher filters (before picking)."""
        if candidates.teacher_scores is None:
            raise ValueError(
                "DenoiseMiner: Candidates.teacher_scores [Q, K] are required (cross-encoder scores): "
                "mine with dr-mine teacher=cross_encoder|fusion"
            )
        t = candidates.teacher_scores
        ok = ~np.isnan(t)  # a candidate the teacher did not score cannot be vouched for
        if self.threshold is not None:
            p = t if self.teacher_probability is None else np.asarray(self.teacher_probability(t))
            ok = ok & (p < self.threshold)
        if self.margin is not None:
            t_pos = candidates.min_teacher_positive_score[:, None]
            ok = ok & ~(t > t_pos - self.margin)  # NaN t_pos compares False: filter skipped
        return ok

    def __repr__(self) -> str:
        return (
            f"DenoiseMiner(num_negatives={self.num_negatives}, threshold={self.threshold}, "
            f"margin={self.margin}, sampling={self.sampling!r})"
        )
