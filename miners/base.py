"""The miner interface: candidates in (``Candidates``), chosen negatives out (``Mined``).

Layout. Everything is a padded ``[Q, ·]`` array, so a miner works on a whole batch of queries at once.

- ``Candidates.docids [Q, K]`` (int or str), ``scores [Q, K]`` sorted descending along each row (the
  column index is the 0-based rank), ``mask [Q, K]`` True for real candidates (ragged rows are padded).
- ``positive_ids [Q, P]`` with ``positive_mask [Q, P]``, ``positive_scores [Q, P]`` (NaN: unknown).
- Optional teacher (cross-encoder) scores aligned with the above: ``teacher_scores [Q, K]`` and
  ``teacher_positive_scores [Q, P]`` (NaN: unknown); only ``DenoiseMiner`` reads them.

A ``CandidateMiner`` implements ``select(candidates, rng, eligible) -> keep [Q, K] bool``: the subset of
``eligible`` it keeps. ``eligible`` defaults to ``candidates.negative_mask`` (real, non-positive
candidates), so a positive can never be returned. ``__call__`` gathers the kept columns into ``Mined``.
``Chain`` feeds one stage's ``keep`` into the next as its ``eligible``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import numpy as np

from dr.miners.sampling import take_first, take_uniform


def pad_value(dtype: np.dtype):
    """The filler for padded docid slots: -1 for integer ids, '' for string ids, None otherwise."""
    if np.issubdtype(dtype, np.integer):
        return -1
    if np.issubdtype(dtype, np.str_):
        return ""
    return None


def _pad(rows: Sequence[Sequence], fill, dtype=None, empty_dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Ragged lists -> ([R, W] array, [R, W] mask); ``empty_dtype`` when there are no values at all."""
    width = max((len(r) for r in rows), default=0)
    flat = np.asarray([x for r in rows for x in r], dtype=dtype)
    dtype = flat.dtype if flat.size else (dtype or empty_dtype)
    fill = pad_value(np.dtype(dtype)) if fill is None else fill
    out = np.full((len(rows), width), fill, dtype=dtype)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        mask[i, : len(r)] = True
    return out, mask


@dataclass
class Candidates:
    """Each query's retrieved candidates and its positives (see the module docstring for shapes)."""

    docids: np.ndarray
    scores: np.ndarray
    positive_ids: np.ndarray
    mask: np.ndarray | None = None
    positive_mask: np.ndarray | None = None
    positive_scores: np.ndarray | None = None
    teacher_scores: np.ndarray | None = None
    teacher_positive_scores: np.ndarray | None = None

    def __post_init__(self):
        self.scores = np.asarray(self.scores, dtype=np.float32)
        q, k = self.scores.shape
        if self.docids.shape != (q, k):
            raise ValueError(f"Candidates: docids {self.docids.shape} must match scores {self.scores.shape}")
        self.mask = np.ones((q, k), bool) if self.mask is None else np.asarray(self.mask, bool)
        p = self.positive_ids.shape[1]
        if self.positive_ids.shape[0] != q:
            raise ValueError(f"Candidates: positive_ids has {self.positive_ids.shape[0]} rows, expected {q}")
        if self.positive_mask is None:
            self.positive_mask = np.ones((q, p), bool)
        if self.positive_scores is None:
            self.positive_scores = np.full((q, p), np.nan, np.float32)
        if self.teacher_positive_scores is None and self.teacher_scores is not None:
            self.teacher_positive_scores = np.full((q, p), np.nan, np.float32)
        # Ranks are column indices, so each row's real scores must be non-increasing.
        s = np.where(self.mask, self.scores, np.nan)
        prev_min = np.concatenate([np.full((q, 1), np.nan), np.fmin.accumulate(s, axis=1)[:, :-1]], axis=1)
        bad = np.argwhere(s > prev_min)
        if len(bad):
            i, j = bad[0]
            raise ValueError(f"Candidates: scores must be sorted descending per row; row {i} rises at rank {j}")

    @classmethod
    def from_lists(
        cls,
        docids: Sequence[Sequence],
        scores: Sequence[Sequence[float]],
        positive_ids: Sequence[Sequence],
        positive_scores: Sequence[Sequence[float]] | None = None,
        teacher_scores: Sequence[Sequence[float]] | None = None,
        teacher_positive_scores: Sequence[Sequence[float]] | None = None,
    ) -> "Candidates":
        """Build from ragged per-query lists (e.g. a run file); rows are sorted by score, descending."""
        orders = [np.argsort(-np.asarray(s, np.float64), kind="stable") for s in scores]
        sort = lambda rows: None if rows is None else [np.asarray(r)[o] for r, o in zip(rows, orders)]  # noqa: E731
        d, mask = _pad(sort(docids), None)
        s, _ = _pad(sort(scores), np.nan, np.float32)
        t = None if teacher_scores is None else _pad(sort(teacher_scores), np.nan, np.float32)[0]
        pos, pos_mask = _pad(positive_ids, None, empty_dtype=d.dtype)
        opt = lambda rows: None if rows is None else _pad(rows, np.nan, np.float32)[0]  # noqa: E731
        return cls(d, s, pos, mask, pos_mask, opt(positive_scores), t, opt(teacher_positive_scores))

    @property
    def num_queries(self) -> int:
        return self.scores.shape[0]

    @cached_property
    def _matches(self) -> np.ndarray:
        """[Q, K, P]: candidate k of query q is its positive p."""
        if self.docids.size == 0 or self.positive_ids.size == 0:
            return np.zeros(self.docids.shape + self.positive_ids.shape[1:], bool)
        same = self.docids[:, :, None] == self.positive_ids[:, None, :]
        return same & self.mask[:, :, None] & self.positive_mask[:, None, :]

    @cached_property
    def is_positive(self) -> np.ndarray:
        """[Q, K] bool: the candidate is one of the query's positives."""
        return self._matches.any(axis=2)

    @property
    def negative_mask(self) -> np.ndarray:
        """[Q, K] bool: a real candidate that is not a positive (what any miner may return)."""
        return self.mask & ~self.is_positive

    def _positive_values(self, explicit: np.ndarray, retrieved: np.ndarray) -> np.ndarray:
        """[Q, P]: a positive's explicit score where given, else its score as a retrieved candidate, else NaN."""
        found = np.where(self._matches, retrieved[:, :, None], np.nan)
        from_candidates = np.fmax.reduce(found, axis=1) if found.shape[1] else np.full(explicit.shape, np.nan)
        values = np.where(np.isnan(explicit), from_candidates, explicit)
        return np.where(self.positive_mask, values, np.nan)

    @cached_property
    def best_positive_score(self) -> np.ndarray:
        """[Q] s_pos: the max over the query's positives of their (explicit or retrieved) score; NaN if unknown."""
        values = self._positive_values(self.positive_scores, self.scores)
        return np.fmax.reduce(values, axis=1) if values.shape[1] else np.full(self.num_queries, np.nan)

    @cached_property
    def min_positive_score(self) -> np.ndarray:
        """[Q] the min over the query's positives of their (explicit or retrieved) score; NaN if none is known."""
        values = self._positive_values(self.positive_scores, self.scores)
        return np.fmin.reduce(values, axis=1) if values.shape[1] else np.full(self.num_queries, np.nan)

    @cached_property
    def min_teacher_positive_score(self) -> np.ndarray:
        """[Q] the min over the query's positives of their teacher score; NaN if unknown."""
        if self.teacher_scores is None:
            raise ValueError("Candidates: teacher_scores are needed here (e.g. cross-encoder scores per candidate)")
        values = self._positive_values(self.teacher_positive_scores, self.teacher_scores)
        return np.fmin.reduce(values, axis=1) if values.shape[1] else np.full(self.num_queries, np.nan)


@dataclass
class Mined:
    """Chosen negatives per query, padded: ``docids``/``scores``/``ranks`` ``[Q, N]`` with ``mask [Q, N]``.

    ``ranks`` are the negatives' columns in the candidate list (-1 where padded or not from the
    candidates, e.g. random negatives). ``scores`` are NaN where unknown.
    """

    docids: np.ndarray
    scores: np.ndarray
    mask: np.ndarray
    ranks: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.ranks is None:
            self.ranks = np.full(self.mask.shape, -1, np.int64)

    @classmethod
    def from_keep(cls, candidates: Candidates, keep: np.ndarray) -> "Mined":
        """Gather each row's kept columns, in rank order."""
        n = int(keep.sum(axis=1).max(initial=0))
        ranks = np.argsort(~keep, axis=1, kind="stable")[:, :n]  # kept columns first, in column order
        mask = np.take_along_axis(keep, ranks, axis=1)
        docids = np.take_along_axis(candidates.docids, ranks, axis=1)
        docids = np.where(mask, docids, pad_value(docids.dtype)).astype(docids.dtype)
        scores = np.where(mask, np.take_along_axis(candidates.scores, ranks, axis=1), np.nan)
        return cls(docids, scores.astype(np.float32), mask, np.where(mask, ranks, -1))

    def to_lists(self) -> tuple[list[list], list[list[float]]]:
        """(docids, scores) as ragged per-query Python lists, padding dropped."""
        docids = [d[m].tolist() for d, m in zip(self.docids, self.mask)]
        scores = [s[m].tolist() for s, m in zip(self.scores, self.mask)]
        return docids, scores

    def stats(self) -> dict[str, float]:
        """What was mined, for logging: negatives per query and their score range."""
        counts = self.mask.sum(axis=1)
        s = self.scores[self.mask]
        s = s[~np.isnan(s)]
        return {
            "queries": int(len(counts)),
            "negatives/mean": float(counts.mean()) if len(counts) else 0.0,
            "negatives/min": int(counts.min(initial=0)) if len(counts) else 0,
            "score/mean": float(s.mean()) if len(s) else float("nan"),
            "score/min": float(s.min()) if len(s) else float("nan"),
            "score/max": float(s.max()) if len(s) else float("nan"),
        }


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A ``numpy.random.Generator``; an int is a seed."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


class Miner(ABC):
    """Anything that maps ``(Candidates, rng)`` to ``Mined``."""

    num_negatives: int | None = None
    #: the candidates must carry teacher scores (``Candidates.teacher_scores``), e.g. RocketQA's denoising
    needs_teacher_scores: bool = False
    #: draws with a score kernel (SimANS): a pair sampler with the same kernel must not draw from its output again
    samples_by_kernel: bool = False

    @abstractmethod
    def __call__(self, candidates: Candidates, rng: np.random.Generator | int | None = None) -> Mined:
        """The chosen negatives of every query."""

    def bind_teacher(self, teacher) -> None:
        """Told which teacher scored ``Candidates.teacher_scores`` (the mining path calls it), so
        a miner with thresholds on a stated scale can map the teacher's scores onto it."""


class CandidateMiner(Miner):
    """A miner that chooses among the candidates: implement ``select``; ``__call__`` gathers its choice."""

    @abstractmethod
    def select(
        self, candidates: Candidates, rng: np.random.Generator, eligible: np.ndarray | None = None
    ) -> np.ndarray:
        """[Q, K] bool: the kept subset of ``eligible`` (default: ``candidates.negative_mask``)."""

    def __call__(self, candidates: Candidates, rng: np.random.Generator | int | None = None) -> Mined:
        return Mined.from_keep(candidates, self.select(candidates, as_rng(rng)))

    @staticmethod
    def _eligible(candidates: Candidates, eligible: np.ndarray | None) -> np.ndarray:
        # Always intersect with negative_mask: a caller-supplied mask can never re-admit a positive.
        base = candidates.negative_mask
        return base if eligible is None else base & eligible


class FilterMiner(CandidateMiner):
    """A miner that keeps the candidates passing a filter, then takes the top or a random sample.

    Subclasses implement ``passes`` and set ``sampling`` (``"top"`` or ``"random"``).
    """

    sampling: str = "top"

    @abstractmethod
    def passes(self, candidates: Candidates) -> np.ndarray:
        """[Q, K] bool: the candidates the filter keeps."""

    def select(
        self, candidates: Candidates, rng: np.random.Generator, eligible: np.ndarray | None = None
    ) -> np.ndarray:
        ok = self._eligible(candidates, eligible) & self.passes(candidates)
        if self.sampling == "random":
            return take_uniform(ok, self.num_negatives, rng)
        return take_first(ok, self.num_negatives)
