"""Negatives files: which hard negatives each training query gets.

Format (JSONL, one training query per line)::

    {"qid": "q1", "positives": ["d1"], "positive_scores": [12.3],
     "negatives": [{"docid": "d7", "score": 10.1}, {"docid": "d9", "score": 9.8}]}

``positive_scores`` and the negatives' ``score`` are optional (``null`` when unknown). The file is
written atomically; readers validate every line and name the file and line on error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from dr.data.io import DataError, atomic_write, numbered_lines


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


def read_negatives(path: str | os.PathLike) -> dict[str, NegativesRecord]:
    """Read a negatives file into ``{qid: NegativesRecord}``."""
    records: dict[str, NegativesRecord] = {}
    expected = 'expected a JSON object {"qid": str, "positives": [str], "negatives": [{"docid": str, "score": float|null}]}'
    with numbered_lines(path) as lines:
        for line_no, line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, line_no, f"invalid JSON ({e.msg}); {expected}") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("qid"), str) or not isinstance(obj.get("negatives"), list):
                raise DataError(path, line_no, expected)
            negatives, scores = [], []
            for neg in obj["negatives"]:
                if isinstance(neg, str):
                    negatives.append(neg)
                    scores.append(None)
                elif isinstance(neg, dict) and isinstance(neg.get("docid"), str):
                    negatives.append(neg["docid"])
                    scores.append(neg.get("score"))
                else:
                    raise DataError(path, line_no, f"bad negative {neg!r}; {expected}")
            positives = obj.get("positives", [])
            if not isinstance(positives, list) or not all(isinstance(p, str) for p in positives):
                raise DataError(path, line_no, f"'positives' must be a list of docids; {expected}")
            if obj["qid"] in records:
                raise DataError(path, line_no, f"duplicate qid {obj['qid']!r}; expected one line per query")
            records[obj["qid"]] = NegativesRecord(
                obj["qid"], positives, negatives, scores, list(obj.get("positive_scores") or [])
            )
    return records
