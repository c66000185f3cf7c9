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


def read_teacher_compact(hparams, positives: dict[str, list[str]], known: Mapping[str, int]) -> TeacherTriples:
    """Read the one teacher-score file of the data options ``hparams`` as :class:`TeacherTriples` (after
    :func:`check_compact`); its positives in ``known`` join ``positives``."""
    check_compact(hparams)
    (path,) = [hparams.teacher_scores] if isinstance(hparams.teacher_scores, str) else list(hparams.teacher_scores)
    teacher = read_teacher_triples(resolve_path(path))
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

    def __init__(self, table: NegativesTable, positives: Mapping[str, list[str]], known: Mapping[str, int]):
        self.table, self.positives, self.known = table, positives, known

    def __getitem__(self, qid: str) -> list[str]:
        record = self.table[qid]
        pos = set(self.positives.get(qid, [])) | set(record.positives)
        return [d for d in record.negatives if d in self.known and d not in pos]

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)


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


def negatives_compact(path: str, positives: Mapping[str, list[str]], known: Mapping[str, int]) -> tuple[FileNegatives, FileScores]:
    """A negatives file's candidates and scores per query, read into a :class:`NegativesTable`."""
    table = read_negatives_compact(path)
    log.info("%s: %d queries in %.1f MiB of arrays", path, len(table), table.nbytes / 2**20)
    return FileNegatives(table, positives, known), FileScores(table)


class WithTeacherNegatives(Mapping):
    """``base[qid]`` followed by the teacher's negatives of ``qid`` that are new, in the corpus and not positives."""

    def __init__(self, base: Mapping[str, list[str]], teacher: TeacherTriples, positives: Mapping[str, list[str]],
                 known: Mapping[str, int]):
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
