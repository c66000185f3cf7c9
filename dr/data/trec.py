"""TREC qrels and runs, and the positives a qrels file gives.

- qrels: ``qid 0 docid grade`` (whitespace-separated, integer grade);
- runs: ``qid Q0 docid rank score tag``.

Readers validate every line and raise :class:`dr.data.io.DataError` naming the file, the 1-based
line and what was expected; ``.gz`` is read transparently; bundled names (``dl19:qrels``) and
``irds:<id>`` work as in :mod:`dr.data.corpus`.
"""

from __future__ import annotations

import math
import os

from dr.data.corpus import IRDS_PREFIX, _check_id, _irds, _lines, resolve_path
from dr.data.io import DataError, atomic_write


def read_positives(
    qrels: dict[str, dict[str, int]], min_relevance: int = 1, known: set[str] | dict | None = None
) -> dict[str, list[str]]:
    """``{qid: sorted docids graded >= min_relevance}``, queries without one left out.

    ``known``: when given, only docids in it count (e.g. the corpus's ``row_of``).
    """
    positives: dict[str, list[str]] = {}
    for qid, judged in qrels.items():
        docs = sorted(d for d, grade in judged.items() if grade >= min_relevance and (known is None or d in known))
        if docs:
            positives[qid] = docs
    return positives


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Read TREC qrels ``qid 0 docid grade`` (BEIR TSV for ``*.tsv``, or ``irds:<id>``) into ``{qid: {docid:
    grade}}``."""
    path = resolve_path(path)
    qrels: dict[str, dict[str, int]] = {}
    if path.startswith(IRDS_PREFIX):
        for q in _irds(path).qrels_iter():
            qrels.setdefault(str(q.query_id), {})[str(q.doc_id)] = int(q.relevance)
        return qrels
    if path.lower().removesuffix(".gz").endswith(".tsv"):  # BEIR qrels: query-id, corpus-id, score
        from dr.data.beir import read_tsv_qrels

        return read_tsv_qrels(path)
    for line_no, line in _lines(path):
        fields = line.split()
        if len(fields) != 4:
            raise DataError(
                path, line_no, f"expected 4 whitespace-separated fields 'qid 0 docid grade', got {len(fields)}"
            )
        qid, _, docid, grade = fields
        try:
            value = int(grade)
        except ValueError:
            raise DataError(path, line_no, f"expected an integer grade, got {grade!r}") from None
        judged = qrels.setdefault(qid, {})
        if docid in judged:
            raise DataError(path, line_no, f"expected one judgment per (qid, docid), got a second for ({qid}, {docid})")
        judged[docid] = value
    return qrels


def read_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Read a TREC run ``qid Q0 docid rank score tag`` into ``{qid: {docid: score}}``.

    Ranks are validated but not kept: the order is given by the scores, as in trec_eval.
    """
    path = resolve_path(path)
    run: dict[str, dict[str, float]] = {}
    for line_no, line in _lines(path):
        fields = line.split()
        if len(fields) != 6:
            expected = "expected 6 whitespace-separated fields 'qid Q0 docid rank score tag'"
            raise DataError(path, line_no, f"{expected}, got {len(fields)}")
        qid, _, docid, rank, score, _ = fields
        try:
            int(rank)
        except ValueError:
            raise DataError(path, line_no, f"expected an integer rank, got {rank!r}") from None
        try:
            value = float(score)
        except ValueError:
            raise DataError(path, line_no, f"expected a numeric score, got {score!r}") from None
        if math.isnan(value):
            raise DataError(path, line_no, "expected a numeric score, got NaN")
        ranking = run.setdefault(qid, {})
        if docid in ranking:
            raise DataError(path, line_no, f"expected each docid once per query, got a second ({qid}, {docid})")
        ranking[docid] = value
    return run


def write_run(
    run: dict[str, dict[str, float]], path: str | os.PathLike, tag: str = "dr", depth: int | None = None
) -> None:
    """Write ``{qid: {docid: score}}`` as a TREC run, atomically (``.gz`` is compressed).

    Queries are written in sorted qid order; each query's documents by decreasing score (ties
    broken by docid, for determinism), ranked from 1 and cut at ``depth`` if given.
    """
    _check_id(str(path), None, tag, "run tag")
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth}")
    with atomic_write(path) as f:
        for qid in sorted(run):
            _check_id(str(path), None, qid, "qid")
            ranking = sorted(run[qid].items(), key=lambda item: (-item[1], item[0]))[:depth]
            for rank, (docid, score) in enumerate(ranking, 1):
                _check_id(str(path), None, docid, "docid")
                f.write(f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n")
