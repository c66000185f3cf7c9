"""Negatives files: which hard negatives each training query gets.

Format (JSONL, one training query per line)::

    {"qid": "q1", "positives": ["d1"], "positive_scores": [12.3],
     "negatives": [{"docid": "d7", "score": 10.1}, {"docid": "d9", "score": 9.8}]}

``positive_scores`` and the negatives' ``score`` are optional (``null`` when unknown). A docid
repeated within a line is read once (its first occurrence and score). The file is
written atomically; readers validate every line and name the file and line on error.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Iterator

from dr.data.io import DataError, atomic_write, numbered_lines, parse_json

EXPECTED = 'expected a JSON object {"qid": str, "positives": [str], "negatives": [{"docid": str, "score": float|null}]}'
_WHITESPACE = re.compile(r"\s")


@dataclass
class NegativesRecord:
    qid: str
    positives: list[str]
    negatives: list[str]
    negative_scores: list[float | None] = field(default_factory=list)
    positive_scores: list[float | None] = field(default_factory=list)

    def to_json(self) -> dict:
        scores = self.negative_scores or [None] * len(self.negatives)
        return {
            "qid": self.qid,
            "positives": self.positives,
            "positive_scores": self.positive_scores or [None] * len(self.positives),
            "negatives": [{"docid": d, "score": s} for d, s in zip(self.negatives, scores)],
        }


def write_negatives(path: str | os.PathLike, records: list[NegativesRecord]) -> None:
    with atomic_write(path) as f:
        for record in records:
            f.write(json.dumps(record.to_json()) + "\n")


def iter_negatives(path: str | os.PathLike) -> Iterator[NegativesRecord]:
    """Stream a negatives file one validated record at a time (memory stays flat on any size).

    The same validation as :func:`read_negatives`, without the duplicate-qid check (that needs
    every qid in memory; :func:`dr.data.compact.read_negatives_compact` does it in arrays).
    """
    for _, record in _records(path):
        yield record


def read_negatives(path: str | os.PathLike) -> dict[str, NegativesRecord]:
    """Read a negatives file into ``{qid: NegativesRecord}``.

    Ids are non-empty strings without whitespace (as in a corpus); scores are numbers or null.
    Anything else raises :class:`DataError` naming the file and line. For files of MS MARCO size
    (millions of lines) stream with :func:`iter_negatives` or read them into compact arrays with
    :func:`dr.data.compact.read_negatives_compact`.
    """
    records: dict[str, NegativesRecord] = {}
    for line_no, record in _records(path):
        if record.qid in records:
            raise DataError(path, line_no, f"duplicate qid {record.qid!r}; expected one line per query")
        records[record.qid] = record
    return records


def _records(path: str | os.PathLike) -> Iterator[tuple[int, NegativesRecord]]:
    """``(line number, record)`` of every non-blank line, validated."""
    with numbered_lines(path) as lines:
        for line_no, line in lines:
            if not line.strip():
                continue
            obj = parse_json(path, line_no, line, EXPECTED)
            if not isinstance(obj, dict) or not isinstance(obj.get("negatives"), list):
                raise DataError(path, line_no, EXPECTED)
            qid = _id(path, line_no, obj.get("qid"), "'qid'")
            negatives, scores = [], []
            for neg in obj["negatives"]:
                if isinstance(neg, dict):
                    negatives.append(_id(path, line_no, neg.get("docid"), "negative 'docid'"))
                    scores.append(_score(path, line_no, neg.get("score"), "negative 'score'"))
                else:
                    negatives.append(_id(path, line_no, neg, "negative"))
                    scores.append(None)
            positives = obj.get("positives", [])
            if not isinstance(positives, list):
                raise DataError(path, line_no, f"expected 'positives' to be a list of docids, got {positives!r}")
            positives = [_id(path, line_no, p, "positive") for p in positives]
            positive_scores = obj.get("positive_scores") or []
            if not isinstance(positive_scores, list):
                raise DataError(
                    path,
                    line_no,
                    f"expected 'positive_scores' to be a list of numbers or nulls, got {positive_scores!r}",
                )
            positive_scores = [_score(path, line_no, v, "positive score") for v in positive_scores]
            negatives, scores = _first_of_each(negatives, scores)
            if len(positives) == len(positive_scores):
                positives, positive_scores = _first_of_each(positives, positive_scores)
            else:
                positives = list(dict.fromkeys(positives))
            yield line_no, NegativesRecord(qid, positives, negatives, scores, positive_scores)


def _first_of_each(ids: list[str], scores: list) -> tuple[list[str], list]:
    """``ids`` without repeats (the first occurrence and its score kept): a repeated candidate would
    be drawn twice as often, and twice in one draw, entering the InfoNCE denominator twice."""
    first = {}
    for j, docid in enumerate(ids):
        first.setdefault(docid, j)
    if len(first) == len(ids):
        return ids, scores
    keep = list(first.values())
    return [ids[j] for j in keep], [scores[j] for j in keep]


def _id(path, line_no: int, value, what: str) -> str:
    if not isinstance(value, str) or not value or _WHITESPACE.search(value):
        raise DataError(
            path, line_no, f"expected the {what} to be a non-empty string without whitespace, got {value!r}"
        )
    return value


def _score(path, line_no: int, value, what: str) -> float | None:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
        return value
    if isinstance(value, float):  # NaN or Infinity, which Python's JSON reader accepts
        raise DataError(
            path,
            line_no,
            f"expected the {what} to be a finite number or null (null marks a score that is "
            f"not known, as the format allows), got {value!r}",
        )
    raise DataError(path, line_no, f"expected the {what} to be a number or null, got {value!r}")
