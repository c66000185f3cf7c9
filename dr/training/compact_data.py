"""Training data from compact tables (``data.compact=true``) for negatives and teacher files of MS MARCO size.

With ``compact`` the :class:`dr.training.RetrievalDataModule` reads a teacher-score file with
:func:`dr.data.read_teacher_triples` and a negatives file with :func:`dr.data.read_negatives_compact`
(arrays of id codes and float32 scores, :mod:`dr.data.compact`) instead of dictionaries of Python
strings (~30 GiB for the ~40M lines of the published MS MARCO teacher files). The per-query views
here build a query's candidates and scores on lookup, in the order the dictionary path builds them,
so a seeded run draws the same batches either way:

- :class:`FileNegatives`: the file's negatives of a query that are in the corpus and never a positive;
- :class:`FileScores`: the file's ``{docid: score}`` per query (for ``uses_scores`` pair samplers);
- :class:`WithTeacherNegatives`: a query's candidates followed by the teacher's negatives not yet
  among them (first occurrence in the file, in the corpus, not a positive).

The teacher's positives join the qrels positives at set-up (:func:`read_teacher_compact`); that
dictionary holds one entry per training query, as the qrels do. What the compact path does not do
(several teacher files, ``teacher_from_negatives``, ``teacher_pair_filter``, which all edit the
scores in place) is refused by :func:`dr.validate.check_compact` (in ``dr-train``'s validation and at set-up).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Iterator

import numpy as np

from dr.data import NegativesRecord, resolve_path
from dr.data.compact import NegativesTable, TeacherTriples, read_negatives_compact, read_teacher_triples
from dr.validate import check_compact

log = logging.getLogger(__name__)


def record_scores(record: NegativesRecord) -> dict[str, float]:
    """``{docid: score}`` of a negatives record's positives and negatives (unknown scores left out)."""
    pairs = [*zip(record.positives, record.positive_scores), *zip(record.negatives, record.negative_scores)]
    return {d: float(s) for d, s in pairs if s is not None}


def _without(teacher: TeacherTriples, qids: set[str], docids: set[str]) -> TeacherTriples:
    """``teacher`` without the triples of the queries ``qids`` and those naming a passage of ``docids``."""
    codes = lambda table, ids: np.array([c for c in (table.code(i) for i in ids) if c >= 0], dtype=np.int64)  # noqa: E731
    query_of_row = np.repeat(np.arange(len(teacher.qids), dtype=np.int64), np.diff(teacher.offsets))
    bad_docs = codes(teacher.docids, docids)
    keep = (
        ~np.isin(query_of_row, codes(teacher.qids, qids))
        & ~np.isin(teacher.pos, bad_docs)
        & ~np.isin(teacher.neg, bad_docs)
    )
    counts = np.bincount(query_of_row[keep], minlength=len(teacher.qids))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(teacher.offsets.dtype)
    # As TeacherScores.without: a kept passage keeps its last score over every line of the file,
    # dropped lines included (a positive scored on a line whose negative is unknown is still scored).
    n_docs = max(1, len(teacher.docids))
    keys = np.stack([query_of_row * n_docs + teacher.pos, query_of_row * n_docs + teacher.neg], axis=1).reshape(-1)
    values = np.stack([teacher.pos_score, teacher.neg_score], axis=1).reshape(-1)
    order = np.lexsort((np.arange(len(keys)), keys))  # by key, then file order
    last = np.r_[keys[order][1:] != keys[order][:-1], True]
    final_keys, final_values = keys[order][last], values[order][last]
    final = lambda docs: final_values[np.searchsorted(final_keys, query_of_row[keep] * n_docs + docs[keep])]  # noqa: E731
    return TeacherTriples(
        teacher.qids,
        teacher.docids,
        offsets,
        teacher.pos[keep],
        teacher.neg[keep],
        final(teacher.pos).astype(teacher.pos_score.dtype),
        final(teacher.neg).astype(teacher.neg_score.dtype),
    )


def read_teacher_compact(
    hparams, positives: dict[str, list[str]], known: Mapping[str, int], unknown=None
) -> TeacherTriples:
    """Read the one teacher-score file of the data options ``hparams`` as :class:`TeacherTriples` (after
    :func:`check_compact`); its positives in ``known`` join ``positives``. ``unknown(ids, source, what)``
    returns the qids or docids to drop (``data.on_missing``; it raises for ``error``)."""
    check_compact(hparams)
    (path,) = [hparams.teacher_scores] if isinstance(hparams.teacher_scores, str) else list(hparams.teacher_scores)
    teacher = read_teacher_triples(resolve_path(path))
    if unknown is not None:
        bad_q, bad_d = unknown(teacher.qids, path, "qids"), unknown(teacher.docids, path, "docids")
        if bad_q or bad_d:
            teacher = _without(teacher, bad_q, bad_d)
    n_docs = max(1, len(teacher.docids))
    query_of_row = np.repeat(np.arange(len(teacher.qids), dtype=np.int64), np.diff(teacher.offsets))
    pairs = np.unique(query_of_row * n_docs + teacher.pos)  # distinct (query, positive) codes
    new: dict[str, set[str]] = {}
    for qid, docid in zip(teacher.qids.decode(pairs // n_docs), teacher.docids.decode(pairs % n_docs)):
        if docid in known:
            new.setdefault(qid, set()).add(docid)
    added = 0
    for qid, docids in new.items():
        have = set(positives.get(qid, []))
        if docids - have:
            positives[qid] = sorted(have | docids)
            added += len(docids - have)
    if added:
        log.info("teacher-score files add %d positives not in the qrels", added)
    log.info("%s: %d teacher triples in %.1f MiB of arrays", path, len(teacher), teacher.nbytes / 2**20)
    return teacher


class FileNegatives(Mapping):
    """``{qid: [negative, ...]}`` of a :class:`NegativesTable`: known docids, never a positive of the query."""

    def __init__(
        self,
        table: NegativesTable,
        positives: Mapping[str, list[str]],
        known: Mapping[str, int],
        dropped: set[str] = frozenset(),
    ):
        self.table, self.positives, self.known, self.dropped = table, positives, known, set(dropped)

    def __getitem__(self, qid: str) -> list[str]:
        if qid in self.dropped:
            raise KeyError(qid)
        record = self.table[qid]
        pos = set(self.positives.get(qid, [])) | set(record.positives)
        return [d for d in record.negatives if d in self.known and d not in pos]

    def __iter__(self) -> Iterator[str]:
        return (q for q in self.table if q not in self.dropped)

    def __len__(self) -> int:
        return len(self.table) - len(self.dropped)


class FileScores(Mapping):
    """``{qid: {docid: score}}`` of a :class:`NegativesTable` (the retriever's scores in the file)."""

    def __init__(self, table: NegativesTable):
        self.table = table

    def __getitem__(self, qid: str) -> dict[str, float]:
        return record_scores(self.table[qid])

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)


def negatives_compact(
    path: str, positives: Mapping[str, list[str]], known: Mapping[str, int], unknown=None
) -> tuple[FileNegatives, FileScores]:
    """A negatives file's candidates and scores per query, read into a :class:`NegativesTable`;
    ``unknown(ids, source, what)`` returns the qids to drop (and reports unknown docids, which
    :class:`FileNegatives` leaves out)."""
    table = read_negatives_compact(path)
    log.info("%s: %d queries in %.1f MiB of arrays", path, len(table), table.nbytes / 2**20)
    dropped = set()
    if unknown is not None:
        dropped = unknown(table.qids, path, "qids")
        unknown(table.docids, path, "docids")
    return FileNegatives(table, positives, known, dropped), FileScores(table)


class WithTeacherNegatives(Mapping):
    """``base[qid]`` followed by the teacher's negatives of ``qid`` that are new, in the corpus and not positives."""

    def __init__(
        self,
        base: Mapping[str, list[str]],
        teacher: TeacherTriples,
        positives: Mapping[str, list[str]],
        known: Mapping[str, int],
    ):
        self.base, self.teacher, self.positives, self.known = base, teacher, positives, known

    def __getitem__(self, qid: str) -> list[str]:
        rows = self.teacher.rows(qid)
        if rows.stop == rows.start and qid not in self.base:
            raise KeyError(qid)
        have = list(self.base.get(qid, []))
        seen, pos = set(have), set(self.positives.get(qid, []))
        for neg in self.teacher.docids.decode(self.teacher.neg[rows]):
            if neg not in seen and neg not in pos and neg in self.known:
                have.append(neg)
                seen.add(neg)
        return have

    def __iter__(self) -> Iterator[str]:
        yield from self.base
        yield from (q for q in self.teacher.qids if q not in self.base)

    def __len__(self) -> int:
        return sum(1 for _ in self)
