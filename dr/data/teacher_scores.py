"""Teacher-score files: the published Margin-MSE format.

One (query, positive, negative) triple per line, tab-separated (Hofstätter et al. 2020, the
format of the public MS MARCO teacher-score files)::

    pos_score <TAB> neg_score <TAB> qid <TAB> pos_pid <TAB> neg_pid

The file may be gzipped (``.gz``). Scores are the teacher's raw scores for (qid, pos_pid) and
(qid, neg_pid); Margin-MSE only uses their difference, so any scale works. Readers validate every
line and name the file and line on error; writers are atomic.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from dr.data.io import DataError, atomic_write, numbered_lines

_WHITESPACE = re.compile(r"\s")
EXPECTED = "expected 5 tab-separated fields: pos_score, neg_score, qid, pos_pid, neg_pid (scores are numbers)"


@dataclass
class TeacherScores:
    """Teacher scores of (query, passage) pairs and the (positive, negative) pairs they came in.

    ``scores[qid][docid]`` is the teacher's score; ``pairs[qid]`` lists the (pos_pid, neg_pid)
    triples in file order (without duplicates). When a pair is scored twice the last score wins.
    """

    scores: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    pairs: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, qid: str, pos: str, neg: str, pos_score: float, neg_score: float) -> None:
        scores = self.scores[qid]
        if (pos, neg) not in self._pair_sets.setdefault(qid, set()):
            self._pair_sets[qid].add((pos, neg))
            self.pairs[qid].append((pos, neg))
        scores[pos] = pos_score
        scores[neg] = neg_score

    def __post_init__(self):
        self._pair_sets: dict[str, set] = {q: set(p) for q, p in self.pairs.items()}

    def update(self, other: "TeacherScores") -> None:
        for qid, pairs in other.pairs.items():
            for pos, neg in pairs:
                self.add(qid, pos, neg, other.scores[qid][pos], other.scores[qid][neg])
        for qid, scores in other.scores.items():  # scores without a pair (e.g. from a negatives file)
            for docid, score in scores.items():
                self.scores[qid].setdefault(docid, score)

    def score(self, qid: str, docid: str) -> float:
        """The teacher's score, or NaN when the pair was never scored."""
        return self.scores.get(qid, {}).get(docid, math.nan)

    def __len__(self) -> int:
        return sum(len(p) for p in self.pairs.values())

    def without(self, qids: set[str], docids: set[str]) -> "TeacherScores":
        """A copy without the pairs of ``qids`` and the pairs naming one of ``docids`` (unknown ids)."""
        kept = TeacherScores()
        for qid, pairs in self.pairs.items():
            for pos, neg in pairs:
                if qid not in qids and pos not in docids and neg not in docids:
                    kept.add(qid, pos, neg, self.scores[qid][pos], self.scores[qid][neg])
        return kept


def drop_teacher_inversions(
    teacher: TeacherScores, negatives: dict[str, list[str]], positives: dict[str, list[str]]
) -> tuple[int, int]:
    """Drop the pairs where the teacher scores the negative at or above the positive (likely
    unlabelled positives, or pairs the teacher would teach backwards); returns (pairs dropped,
    candidates dropped).

    - ``teacher.pairs``: every (pos, neg) with ``t(neg) >= t(pos)``;
    - ``negatives[qid]`` (the candidates a pair sampler draws from, with the positive drawn apart):
      a candidate scored at or above *any* of the query's scored positives, so no draw can pair it
      with a positive the teacher ranks below it (with one positive: exactly that pair).

    Unscored entries (NaN) are kept: the teacher says nothing about them.
    """
    pairs_dropped = candidates_dropped = 0
    for qid, pairs in teacher.pairs.items():
        scores = teacher.scores.get(qid, {})
        kept = [(p, n) for p, n in pairs if not scores.get(n, math.nan) >= scores.get(p, math.nan)]
        pairs_dropped += len(pairs) - len(kept)
        teacher.pairs[qid] = kept
        teacher._pair_sets[qid] = set(kept)
    for qid, candidates in negatives.items():
        scores = teacher.scores.get(qid, {})
        floor = min(
            (scores[p] for p in positives.get(qid, []) if not math.isnan(scores.get(p, math.nan))), default=math.nan
        )
        kept_negatives = [d for d in candidates if not scores.get(d, math.nan) >= floor]
        candidates_dropped += len(candidates) - len(kept_negatives)
        negatives[qid] = kept_negatives
    return pairs_dropped, candidates_dropped


def iter_teacher_scores(path: str | os.PathLike) -> Iterator[tuple[float, float, str, str, str]]:
    """Stream ``(pos_score, neg_score, qid, pos_pid, neg_pid)`` from a teacher-score file (plain or
    .gz), one validated line at a time: memory stays flat on files of any size (the MS MARCO
    files hold ~40M lines; :func:`dr.data.compact.read_teacher_triples` keeps them all in arrays)."""
    with numbered_lines(path) as lines:
        for line_no, line in lines:
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 5:
                raise DataError(path, line_no, f"found {len(parts)} fields; {EXPECTED}")
            try:
                pos_score, neg_score = float(parts[0]), float(parts[1])
            except ValueError:
                raise DataError(
                    path, line_no, f"scores {parts[0]!r}, {parts[1]!r} are not numbers; {EXPECTED}"
                ) from None
            if not (math.isfinite(pos_score) and math.isfinite(neg_score)):
                raise DataError(path, line_no, f"non-finite score; {EXPECTED}")
            qid, pos, neg = (p.strip() for p in parts[2:])
            if not (qid and pos and neg):
                raise DataError(path, line_no, f"empty id; {EXPECTED}")
            yield pos_score, neg_score, qid, pos, neg


def read_teacher_scores(path: str | os.PathLike, into: TeacherScores | None = None) -> TeacherScores:
    """Read a teacher-score file (plain or .gz) into dictionaries (see :func:`iter_teacher_scores`)."""
    teacher = into if into is not None else TeacherScores()
    for pos_score, neg_score, qid, pos, neg in iter_teacher_scores(path):
        teacher.add(qid, pos, neg, pos_score, neg_score)
    return teacher


def format_teacher_line(pos_score: float, neg_score: float, qid: str, pos: str, neg: str) -> str:
    """One line of the format (with its newline). Scores keep 8 significant digits (float32 round trip)."""
    for name, value in (("qid", qid), ("pos_pid", pos), ("neg_pid", neg)):
        if not value or _WHITESPACE.search(str(value)):  # the reader strips ids and splits on tabs
            raise ValueError(
                f"{name} {value!r} cannot be written to a teacher-score file: empty or contains whitespace"
            )
    if not (math.isfinite(float(pos_score)) and math.isfinite(float(neg_score))):
        raise ValueError(f"non-finite teacher score for ({qid}, {pos}, {neg}): {pos_score}, {neg_score}")
    return f"{float(pos_score):.8g}\t{float(neg_score):.8g}\t{qid}\t{pos}\t{neg}\n"


def write_teacher_scores(path: str | os.PathLike, rows: Iterable[tuple[float, float, str, str, str]]) -> int:
    """Write ``(pos_score, neg_score, qid, pos_pid, neg_pid)`` rows atomically; returns the count."""
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(format_teacher_line(*row))
            n += 1
    return n
