"""Negatives and teacher-score files of MS MARCO size held in compact arrays.

The dictionary readers (:func:`dr.data.read_negatives`, :func:`dr.data.read_teacher_scores`) make
several Python objects per line: fine for SciFact, tens of gigabytes for the ~40M lines of the
published MS MARCO teacher files. Here every line is parsed by the same streaming readers
(:func:`dr.data.negatives.iter_negatives`, :func:`dr.data.teacher_scores.iter_teacher_scores`),
kept a chunk at a time, and stored as integer codes and float32 scores:

- ids become ``int32`` codes into a sorted table of unique ids (:class:`IdTable`, a NumPy bytes
  array: one fixed-width entry per distinct id, looked up by binary search);
- rows are grouped by query (CSR: ``offsets[i]:offsets[i + 1]`` are the rows of query ``i``), file
  order kept inside a query.

A teacher triple costs 20 bytes (three codes, two float32 scores) plus its share of the id
tables. Python objects are made per query, only when a query is looked up: :class:`TeacherTriples`
offers the ``scores`` / ``pairs`` mappings and ``score()`` of :class:`dr.data.TeacherScores`, so
the samplers (e.g. :class:`dr.sampling.BalancedMarginPairSampler`) take either.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Callable, Iterator

import numpy as np

from dr.data.io import DataError
from dr.data.negatives import NegativesRecord, _records
from dr.data.teacher_scores import iter_teacher_scores

CHUNK = 1 << 20  # lines parsed into Python lists before they become arrays


class IdTable:
    """Sorted unique ids (UTF-8 bytes, fixed width) and their codes ``0 .. len-1``."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids

    @classmethod
    def intern(cls, chunks: list[np.ndarray]) -> tuple["IdTable", np.ndarray]:
        """The table of the ids in ``chunks`` (bytes arrays) and every id's code (int32, same order)."""
        every = np.concatenate(chunks) if chunks else np.zeros(0, dtype="S1")
        ids, codes = np.unique(every, return_inverse=True)
        return cls(ids), codes.astype(np.int32).reshape(-1)

    def __len__(self) -> int:
        return len(self.ids)

    def code(self, value: str) -> int:
        """The code of ``value``, or -1 when it is not in the table."""
        key = value.encode("utf-8")
        i = int(np.searchsorted(self.ids, key))
        return i if i < len(self.ids) and self.ids[i] == key else -1

    def decode(self, codes: np.ndarray) -> list[str]:
        return [b.decode("utf-8") for b in self.ids[codes].tolist()]

    def __iter__(self) -> Iterator[str]:
        return (b.decode("utf-8") for b in self.ids.tolist())

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes)


def _as_bytes(values: list[str]) -> np.ndarray:
    return np.array([v.encode("utf-8") for v in values], dtype=np.bytes_) if values else np.zeros(0, dtype="S1")


def _group(query_codes: np.ndarray, num_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Row order grouped by query (stable: file order inside a query) and the CSR offsets."""
    order = np.argsort(query_codes, kind="stable")
    offsets = np.zeros(num_queries + 1, dtype=np.int64)
    np.cumsum(np.bincount(query_codes, minlength=num_queries), out=offsets[1:])
    return order, offsets


class _PerQuery(Mapping):
    """A read-only ``{qid: value}`` view that builds each value on lookup."""

    def __init__(self, qids: IdTable, make: Callable[[int], object]):
        self._qids, self._make = qids, make

    def __getitem__(self, qid: str):
        i = self._qids.code(qid)
        if i < 0:
            raise KeyError(qid)
        return self._make(i)

    def __iter__(self) -> Iterator[str]:
        return iter(self._qids)

    def __len__(self) -> int:
        return len(self._qids)


class TeacherTriples:
    """All (query, positive, negative, pos_score, neg_score) triples of teacher-score files, as arrays.

    Reads like :class:`dr.data.TeacherScores`: ``scores[qid]`` is ``{docid: score}`` (the last
    score of a passage wins), ``pairs[qid]`` the (pos, neg) pairs in file order without duplicates,
    ``score(qid, docid)`` NaN when never scored.
    """

    def __init__(
        self,
        qids: IdTable,
        docids: IdTable,
        offsets: np.ndarray,
        pos: np.ndarray,
        neg: np.ndarray,
        pos_score: np.ndarray,
        neg_score: np.ndarray,
    ):
        self.qids, self.docids, self.offsets = qids, docids, offsets
        self.pos, self.neg, self.pos_score, self.neg_score = pos, neg, pos_score, neg_score
        self.scores = _PerQuery(qids, self._scores_of)
        self.pairs = _PerQuery(qids, self._pairs_of)

    def __len__(self) -> int:
        """The number of triples (lines), duplicates included."""
        return len(self.pos)

    @property
    def nbytes(self) -> int:
        arrays = (self.offsets, self.pos, self.neg, self.pos_score, self.neg_score)
        return sum(int(a.nbytes) for a in arrays) + self.qids.nbytes + self.docids.nbytes

    def rows(self, qid: str) -> slice:
        i = self.qids.code(qid)
        return slice(0, 0) if i < 0 else slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def _pairs_of(self, i: int) -> list[tuple[str, str]]:
        rows = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
        pairs = zip(self.docids.decode(self.pos[rows]), self.docids.decode(self.neg[rows]))
        return list(dict.fromkeys(pairs))

    def _scores_of(self, i: int) -> dict[str, float]:
        rows = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
        scores: dict[str, float] = {}
        for p, n, sp, sn in zip(
            self.docids.decode(self.pos[rows]),
            self.docids.decode(self.neg[rows]),
            self.pos_score[rows].tolist(),
            self.neg_score[rows].tolist(),
        ):
            scores[p], scores[n] = sp, sn
        return scores

    def score(self, qid: str, docid: str) -> float:
        return self.scores.get(qid, {}).get(docid, math.nan)


def read_teacher_triples(path: str | os.PathLike) -> TeacherTriples:
    """Read a teacher-score file (plain or .gz) into a :class:`TeacherTriples` (scores as float32)."""
    q_chunks, p_chunks, n_chunks, sp_chunks, sn_chunks = [], [], [], [], []
    q, p, n, sp, sn = [], [], [], [], []

    def flush():
        q_chunks.append(_as_bytes(q)), p_chunks.append(_as_bytes(p)), n_chunks.append(_as_bytes(n))
        sp_chunks.append(np.array(sp, dtype=np.float32)), sn_chunks.append(np.array(sn, dtype=np.float32))
        for column in (q, p, n, sp, sn):
            column.clear()

    for pos_score, neg_score, qid, pos, neg in iter_teacher_scores(path):
        q.append(qid), p.append(pos), n.append(neg), sp.append(pos_score), sn.append(neg_score)
        if len(q) >= CHUNK:
            flush()
    flush()
    qids, query_codes = IdTable.intern(q_chunks)
    q_chunks.clear()  # free the chunks now (the closure above keeps the name)
    docids, doc_codes = IdTable.intern(p_chunks + n_chunks)
    p_chunks.clear(), n_chunks.clear()
    half = len(doc_codes) // 2
    order, offsets = _group(query_codes, len(qids))
    return TeacherTriples(
        qids,
        docids,
        offsets,
        doc_codes[:half][order],
        doc_codes[half:][order],
        np.concatenate(sp_chunks)[order],
        np.concatenate(sn_chunks)[order],
    )


class NegativesTable(Mapping):
    """A negatives file as arrays: ``table[qid]`` is its :class:`dr.data.NegativesRecord` (built on lookup).

    Unknown scores (``null``) are NaN in the arrays and ``None`` in the records.
    """

    def __init__(
        self, qids: IdTable, docids: IdTable, neg_offsets, negatives, neg_scores, pos_offsets, positives, pos_scores
    ):
        self.qids, self.docids = qids, docids
        self.neg_offsets, self.negatives, self.neg_scores = neg_offsets, negatives, neg_scores
        self.pos_offsets, self.positives, self.pos_scores = pos_offsets, positives, pos_scores

    def __getitem__(self, qid: str) -> NegativesRecord:
        i = self.qids.code(qid)
        if i < 0:
            raise KeyError(qid)
        neg = slice(int(self.neg_offsets[i]), int(self.neg_offsets[i + 1]))
        pos = slice(int(self.pos_offsets[i]), int(self.pos_offsets[i + 1]))
        scores = lambda a: [None if math.isnan(v) else v for v in a.tolist()]  # noqa: E731
        return NegativesRecord(
            qid,
            self.docids.decode(self.positives[pos]),
            self.docids.decode(self.negatives[neg]),
            scores(self.neg_scores[neg]),
            scores(self.pos_scores[pos]),
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.qids)

    def __len__(self) -> int:
        return len(self.qids)

    @property
    def nbytes(self) -> int:
        arrays = (self.neg_offsets, self.negatives, self.neg_scores, self.pos_offsets, self.positives, self.pos_scores)
        return sum(int(a.nbytes) for a in arrays) + self.qids.nbytes + self.docids.nbytes


def read_negatives_compact(path: str | os.PathLike) -> NegativesTable:
    """Read a negatives file into a :class:`NegativesTable`; a repeated qid raises :class:`DataError`."""
    qids, lines, neg_counts, pos_counts = [], [], [], []
    neg_ids, pos_ids, neg_scores, pos_scores = [], [], [], []
    neg_chunks, pos_chunks, neg_score_chunks, pos_score_chunks = [], [], [], []

    def flush():
        neg_chunks.append(_as_bytes(neg_ids)), pos_chunks.append(_as_bytes(pos_ids))
        (
            neg_score_chunks.append(np.array(neg_scores, dtype=np.float32)),
            pos_score_chunks.append(np.array(pos_scores, dtype=np.float32)),
        )
        for column in (neg_ids, pos_ids, neg_scores, pos_scores):
            column.clear()

    for line_no, record in _records(path):
        qids.append(record.qid), lines.append(line_no)
        neg_ids += record.negatives
        pos_ids += record.positives
        neg_counts.append(len(record.negatives)), pos_counts.append(len(record.positives))
        neg_scores += [math.nan if s is None else s for s in (record.negative_scores or [None] * len(record.negatives))]
        pos_scores += [math.nan if s is None else s for s in (record.positive_scores or [None] * len(record.positives))]
        if len(neg_ids) >= CHUNK:
            flush()
    flush()
    qid_table, query_codes = IdTable.intern([_as_bytes(qids)])
    if len(qid_table) != len(qids):
        seen: set[str] = set()
        for qid, line_no in zip(qids, lines):
            if qid in seen:
                raise DataError(path, line_no, f"duplicate qid {qid!r}; expected one line per query")
            seen.add(qid)
    docids, codes = IdTable.intern(neg_chunks + pos_chunks)
    n_neg = sum(len(c) for c in neg_chunks)
    order = np.argsort(query_codes, kind="stable")  # one record per query: records in qid-table order

    def csr(counts, values, scores):
        counts = np.asarray(counts, dtype=np.int64)
        starts = np.cumsum(counts) - counts  # each record's first row in file order
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts[order], out=offsets[1:])
        # row j of query-ordered record r comes from file row starts[r] + j
        take = np.repeat(starts[order] - offsets[:-1], counts[order]) + np.arange(offsets[-1])
        return offsets, values[take], scores[take]

    neg_offsets, negatives, neg_s = csr(neg_counts, codes[:n_neg], np.concatenate(neg_score_chunks))
    pos_offsets, positives, pos_s = csr(pos_counts, codes[n_neg:], np.concatenate(pos_score_chunks))
    return NegativesTable(qid_table, docids, neg_offsets, negatives, neg_s, pos_offsets, positives, pos_s)
