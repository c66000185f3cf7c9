"""BEIR benchmark folders: ``corpus.jsonl``, ``queries.jsonl`` (or ``.tsv``) and ``qrels/<split>.tsv``.

The BEIR layout (Thakur et al., NeurIPS 2021 Datasets and Benchmarks): queries as JSONL
``{"_id", "text"}``, qrels as TSV ``query-id<TAB>corpus-id<TAB>score`` with a header line. The
corpus JSONL is read by :func:`dr.data.read_corpus`; :func:`dr.data.read_queries` and
:func:`dr.data.read_qrels` hand ``.jsonl`` queries and ``.tsv`` qrels to the readers here, so a
BEIR file works wherever a file is accepted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dr.data.io import DataError, numbered_lines, parse_json

_WHITESPACE = re.compile(r"\s")


def _rows(path: str):
    with numbered_lines(path) as lines:
        for line_no, line in lines:
            line = line.rstrip("\r\n")
            if line.strip():
                yield line_no, line


def _id(path: str, line_no: int, value, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or _WHITESPACE.search(value):
        raise DataError(path, line_no, f"expected a non-empty {what} without whitespace, got {value!r}")
    return value


def read_jsonl_queries(path: str) -> dict[str, str]:
    """BEIR queries ``{"_id": ..., "text": ...}`` one per line into ``{qid: text}``."""
    queries: dict[str, str] = {}
    expected = 'expected a JSON object {"_id": ..., "text": ...}'
    for line_no, line in _rows(path):
        obj = parse_json(path, line_no, line, expected)
        if not isinstance(obj, dict):
            raise DataError(path, line_no, f"{expected}, got a JSON {type(obj).__name__}")
        qid = _id(path, line_no, obj.get("_id"), "'_id'")
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(path, line_no, f"expected a non-empty string 'text' field, got {text!r}")
        if qid in queries:
            raise DataError(path, line_no, f"expected unique qids, got a second {qid!r}")
        queries[qid] = text
    return queries


def read_tsv_qrels(path: str) -> dict[str, dict[str, int]]:
    """BEIR qrels ``query-id<TAB>corpus-id<TAB>score`` (a header line is skipped) into
    ``{qid: {docid: grade}}``; four tab-separated fields are read as TREC ``qid 0 docid grade``."""
    qrels: dict[str, dict[str, int]] = {}
    first = True
    for line_no, line in _rows(path):
        fields = line.split("\t")
        if len(fields) == 4:
            fields = [fields[0], fields[2], fields[3]]
        if len(fields) != 3:
            raise DataError(
                path, line_no, f"expected 3 tab-separated fields 'query-id<TAB>corpus-id<TAB>score', got {len(fields)}"
            )
        qid, docid, grade = (f.strip() for f in fields)
        try:
            value = int(grade)
        except ValueError:
            if first:  # the header line, e.g. query-id corpus-id score
                first = False
                continue
            raise DataError(path, line_no, f"expected an integer score, got {grade!r}") from None
        first = False
        judged = qrels.setdefault(_id(path, line_no, qid, "query-id"), {})
        docid = _id(path, line_no, docid, "corpus-id")
        if docid in judged:
            raise DataError(
                path, line_no, f"expected one judgment per (query-id, corpus-id), got a second for ({qid}, {docid})"
            )
        judged[docid] = value
    return qrels


def beir_folder(path: str | os.PathLike, split: str = "test") -> dict[str, str]:
    """The files of a BEIR folder: ``corpus`` (corpus.jsonl[.gz]), ``queries`` (queries.jsonl or
    queries.tsv, optionally gzipped) and ``qrels`` (``qrels/<split>.tsv``)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no such folder (expected a BEIR folder with corpus.jsonl, queries.jsonl and qrels/{split}.tsv)"
        )

    def find(*names: str) -> str:
        for name in names:
            if (root / name).is_file():
                return str(root / name)
        raise FileNotFoundError(f"{root}: expected {' or '.join(names)} in this BEIR folder")

    return {
        "corpus": find("corpus.jsonl", "corpus.jsonl.gz"),
        "queries": find("queries.jsonl", "queries.tsv", "queries.jsonl.gz", "queries.tsv.gz"),
        "qrels": find(f"qrels/{split}.tsv", f"qrels/{split}.tsv.gz"),
    }
