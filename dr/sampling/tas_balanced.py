"""Balanced margin sampling, the "Balanced" of TAS-Balanced (Hofstätter et al., "Efficiently Teaching
an Effective Dense Retriever with Balanced Topic Aware Sampling", SIGIR 2021, Sec. 3.2): each
query's (positive, negative) pair is drawn so that the teacher margins are spread evenly over
their range instead of following their (skewed) distribution.

Follows the reference implementation (matchmaker's ``tas_balanced_training_loader.py``): margins
``t_pos - t_neg`` of the query's teacher-scored pairs, 10 equal-width bins over ``[min, max]``
(``numpy.digitize`` over ``arange(min, max, (max - min) / 10)``), a bin chosen uniformly among
the non-empty ones (the reference retries on an empty bin: the same distribution), then a pair
uniformly inside it.

The recipe's other parts: topic-aware batches (:mod:`dr.sampling.tas`), query clustering
(:mod:`dr.sampling.clustering`), the dual-teacher loss (:mod:`dr.losses.tas_b`) and the configs
``sampler=tas_balanced``, ``loss=tas_b``, ``experiment=tas_balanced``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dr.sampling.random import sample_negatives, uniform_pair_sampler


def margin_bins(margins: np.ndarray, num_bins: int = 10) -> np.ndarray:
    """Bin index (0 .. num_bins-1) of each margin over ``num_bins`` equal-width bins on [min, max].

    As the reference: ``numpy.digitize(margins, arange(min, max, (max - min) / num_bins)) - 1``;
    the maximum falls in the last bin (clipped, in case float rounding gives ``arange`` an extra
    edge), and equal margins all go to bin 0.
    """
    margins = np.asarray(margins, dtype=np.float64)
    lo, hi = float(margins.min()), float(margins.max())
    if not hi > lo:
        return np.zeros(len(margins), dtype=np.int64)
    edges = np.arange(lo, hi, (hi - lo) / num_bins)
    return np.clip(np.digitize(margins, edges) - 1, 0, num_bins - 1).astype(np.int64)


@dataclass
class _QueryPairs:
    """One query's teacher-scored pairs and their bins, valid for the objects it was built from."""

    positives: list
    negatives: list
    teacher: object
    pos: list[str]
    neg: list[str]
    bin_of: np.ndarray
    bins: list[np.ndarray]  # pair indices per non-empty bin


class BalancedMarginPairSampler:
    """TAS-Balanced's pair choice (Sec. 3.2): a uniform bin of teacher margins, then a uniform pair in it.

    A ``pair_sampler`` for :class:`dr.training.ContrastiveDataset`. A query's candidate pairs
    are its teacher-file pairs (``teacher.pairs[qid]``) whose positive and negative are still
    among its positives and negative candidates; without file pairs, every positive × negative
    candidate that both have a teacher score. Margins ``t_pos - t_neg`` are binned into
    ``num_bins`` equal-width bins (:func:`margin_bins`); a non-empty bin is picked uniformly,
    then a pair uniformly inside it. Bins are cached per query and rebuilt when the candidate
    lists or the teacher change (an index refresh swaps the negatives lists).

    Fall-backs: with one scored pair that pair is used (the reference drops such queries); with
    none, or without a teacher, the uniform sampler (:func:`dr.sampling.uniform_pair_sampler`).

    ``num_negatives > 1``: the first negative comes with the positive from a balanced pair; each
    further negative is drawn the same way (uniform non-empty bin, uniform pair) among the pairs
    with that same positive and a negative not drawn yet; when those run out the rest are distinct
    uniform draws from the remaining candidates (their teacher score may be NaN, which the losses
    ignore), and fewer are returned when no candidate is left.
    """

    def __init__(self, num_bins: int = 10):
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        self.num_bins = num_bins
        self._cache: dict[str, _QueryPairs] = {}

    def __call__(self, qid, positives, negatives, teacher, num_negatives, rng):
        if teacher is None:
            return uniform_pair_sampler(qid, positives, negatives, teacher, num_negatives, rng)
        entry = self.pairs_of(qid, positives, negatives, teacher)
        if not entry.pos:
            return uniform_pair_sampler(qid, positives, negatives, teacher, num_negatives, rng)
        first = self._draw(entry.bins, rng)
        positive = entry.pos[first]
        if num_negatives <= 0:
            return positive, []
        chosen = [entry.neg[first]]
        if num_negatives > 1:
            same_pos = np.array([i for i, p in enumerate(entry.pos) if p == positive], dtype=np.int64)
            while len(chosen) < num_negatives:
                left = same_pos[~np.isin(np.asarray(entry.neg, dtype=object)[same_pos], chosen)]
                if not len(left):
                    break
                bins = [left[entry.bin_of[left] == b] for b in np.unique(entry.bin_of[left])]
                chosen.append(entry.neg[self._draw(bins, rng)])
            if len(chosen) < num_negatives:
                taken = set(chosen)
                rest = [d for d in negatives if d not in taken]
                chosen += sample_negatives(rest, min(len(rest), num_negatives - len(chosen)), rng)
        return positive, chosen

    @staticmethod
    def _draw(bins: list[np.ndarray], rng: np.random.Generator) -> int:
        members = bins[int(rng.integers(len(bins)))]
        return int(members[int(rng.integers(len(members)))])

    def pairs_of(self, qid, positives, negatives, teacher) -> _QueryPairs:
        """The query's scored pairs and bins (cached while the same lists and teacher are passed)."""
        entry = self._cache.get(qid)
        if (
            entry is not None
            and entry.positives is positives
            and entry.negatives is negatives
            and entry.teacher is teacher
        ):
            return entry
        scores = teacher.scores.get(qid, {})
        pos_set, neg_set = set(positives), set(negatives)
        file_pairs = teacher.pairs.get(qid)
        if file_pairs:
            pairs = [(p, n) for p, n in file_pairs if p in pos_set and n in neg_set and p in scores and n in scores]
        else:
            pairs = [(p, n) for p in positives if p in scores for n in negatives if n in scores]
        pos = [p for p, _ in pairs]
        neg = [n for _, n in pairs]
        if pairs:
            margins = np.array([scores[p] - scores[n] for p, n in pairs])
            bin_of = margin_bins(margins, self.num_bins)
        else:
            bin_of = np.zeros(0, dtype=np.int64)
        bins = [np.flatnonzero(bin_of == b) for b in np.unique(bin_of)]
        entry = _QueryPairs(positives, negatives, teacher, pos, neg, bin_of, bins)
        self._cache[qid] = entry
        return entry
