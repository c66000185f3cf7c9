"""Corpora and queries: where data lives (bundled, files, ``irds:``) and how it is read.

Formats (every reader validates each line and raises :class:`dr.data.io.DataError` naming the file, the
1-based line and what was expected; blank lines are skipped; ``.gz`` files are read transparently):

- corpus: TSV ``docid<TAB>text`` (``.tsv``/``.tsv.gz``) or BEIR JSONL ``{"_id", "title", "text"}``
  (``.jsonl``/``.jsonl.gz``), loaded into an Arrow-backed :class:`datasets.Dataset` so that memory
  stays flat for millions of passages;
- queries: TSV ``qid<TAB>text``;

Qrels and runs are in :mod:`dr.data.trec`.

Every reader first passes its argument through :func:`resolve_path`, so ``scifact:corpus`` or
``dl19:qrels`` name the data bundled with the package, and ``irds:<id>`` loads an `ir_datasets`_
dataset (optional dependency) instead of a file.

.. _ir_datasets: https://ir-datasets.com
"""

from __future__ import annotations

import os
import re
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import pyarrow.compute as pc

if TYPE_CHECKING:
    import datasets

from dr.config import ConfigError
from dr.data.corpus_cache import corpus_cache_dir, forget_old_versions
from dr.data.io import DataError, numbered_lines, parse_json

IRDS_PREFIX = "irds:"

_RESOURCES = Path(str(files("dr.resources")))

#: Data shipped inside the package: dataset name -> role -> absolute path.
BUNDLED: dict[str, dict[str, str]] = {
    "scifact": {
        "corpus": str(_RESOURCES / "scifact" / "corpus.jsonl.gz"),
        "train_queries": str(_RESOURCES / "scifact" / "queries.train.tsv"),
        "train_qrels": str(_RESOURCES / "scifact" / "qrels.train.trec"),
        "test_queries": str(_RESOURCES / "scifact" / "queries.test.tsv"),
        "test_qrels": str(_RESOURCES / "scifact" / "qrels.test.trec"),
    },
    "dl19": {
        "queries": str(_RESOURCES / "trec-dl-2019" / "queries.tsv"),
        "qrels": str(_RESOURCES / "trec-dl-2019" / "qrels.trec"),
        # the judged pool: 30,045 MS MARCO passages (the union of six strong retrievers' top 100 for
        # DL19 and DL20) and the official qrels restricted to them; figures are "on the DL19 judged pool"
        "pool_corpus": str(_RESOURCES / "trec-dl-2019" / "corpus.pool.tsv.gz"),
        "pool_qrels": str(_RESOURCES / "trec-dl-2019" / "qrels.pool.trec"),
    },
}


def corpus_features():
    """The corpus table's columns (``datasets`` is imported here: checking a config does not need it)."""
    import datasets

    return datasets.Features(
        {"docid": datasets.Value("string"), "title": datasets.Value("string"), "text": datasets.Value("string")}
    )


_WHITESPACE = re.compile(r"\s")


def bundled(name: str) -> dict[str, str]:
    """Return the absolute paths of the bundled dataset ``name`` (``"scifact"`` or ``"dl19"``)."""
    if name not in BUNDLED:
        raise KeyError(f"no bundled dataset {name!r}; available: {', '.join(sorted(BUNDLED))}")
    return dict(BUNDLED[name])


def resolve_path(spec: str | os.PathLike) -> str:
    """Map ``<bundled name>:<role>`` (e.g. ``scifact:corpus``) to its path; return anything else as is.

    An unknown role of a bundled dataset (``scifact:corpsu``) raises ``FileNotFoundError``."""
    spec = os.fspath(spec)
    name, sep, role = spec.partition(":")
    if not sep or name not in BUNDLED:
        return spec
    if role not in BUNDLED[name]:
        raise FileNotFoundError(
            f"{spec}: bundled dataset {name!r} has no {role!r}; available: {', '.join(BUNDLED[name])}"
        )
    return BUNDLED[name][role]


# --------------------------------------------------------------------------------------------------
# helpers


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, line without its end-of-line)`` for the non-blank lines of ``path``."""
    with numbered_lines(path) as lines:
        for line_no, line in lines:
            line = line.rstrip("\r\n")
            if line.strip():
                yield line_no, line


def _check_id(path: str, line_no: int | None, value: str, what: str) -> str:
    """Return ``value`` if it is a usable id (non-empty, no whitespace); raise DataError otherwise."""
    if not value or _WHITESPACE.search(value):
        raise DataError(path, line_no, f"expected a non-empty {what} without whitespace, got {value!r}")
    return value


def _irds(spec: str) -> Any:
    """Load the ir_datasets dataset named by ``irds:<id>``."""
    try:
        import ir_datasets
    except ImportError:
        raise ConfigError(
            f"{spec}: needs the optional package ir_datasets, which is not installed: "
            "pip install 'dr[irds]' (or pip install ir_datasets)"
        ) from None
    return ir_datasets.load(spec[len(IRDS_PREFIX) :])


def _irds_text(item: Any) -> str:
    """The text of an ir_datasets doc or query namedtuple."""
    text = getattr(item, "text", None)
    return text if isinstance(text, str) else item.default_text()


# --------------------------------------------------------------------------------------------------
# corpus


def _corpus_format(path: str) -> str:
    name = path.lower().removesuffix(".gz")
    for fmt in ("jsonl", "tsv"):
        if name.endswith("." + fmt):
            return fmt
    raise DataError(path, None, "expected a corpus file named *.tsv, *.tsv.gz, *.jsonl or *.jsonl.gz")


def _parse_tsv_passage(path: str, line_no: int, line: str) -> tuple[str, str, str]:
    fields = line.split("\t")
    if len(fields) != 2:
        raise DataError(path, line_no, f"expected 2 tab-separated fields 'docid<TAB>text', got {len(fields)}")
    return _check_id(path, line_no, fields[0], "docid"), "", fields[1]


def _parse_jsonl_passage(path: str, line_no: int, line: str) -> tuple[str, str, str]:
    expected = 'expected a JSON object {"_id": ..., "title": ..., "text": ...}'
    obj = parse_json(path, line_no, line, expected)
    if not isinstance(obj, dict):
        raise DataError(path, line_no, f"{expected}, got a JSON {type(obj).__name__}")
    docid = obj.get("_id")
    if isinstance(docid, int) and not isinstance(docid, bool):
        docid = str(docid)
    if not isinstance(docid, str):
        raise DataError(path, line_no, f"expected a string '_id' field, got {docid!r}")
    text = obj.get("text")
    if not isinstance(text, str):
        raise DataError(path, line_no, f"expected a string 'text' field, got {text!r}")
    title = obj.get("title") or ""
    if not isinstance(title, str):
        raise DataError(path, line_no, f"expected a string 'title' field, got {title!r}")
    return _check_id(path, line_no, docid, "'_id'"), title, text


def _passages(path: str) -> Iterator[tuple[int | None, str, str, str]]:
    """Yield validated ``(line number, docid, title, text)`` from a corpus file or ``irds:`` id."""
    if path.startswith(IRDS_PREFIX):
        for doc in _irds(path).docs_iter():
            docid = _check_id(path, None, str(doc.doc_id), "docid")
            yield None, docid, getattr(doc, "title", "") or "", _irds_text(doc)
        return
    parse = _parse_jsonl_passage if _corpus_format(path) == "jsonl" else _parse_tsv_passage
    for line_no, line in _lines(path):
        yield (line_no, *parse(path, line_no, line))


def _generate_corpus(path: str, stamp: tuple) -> Iterator[dict[str, str]]:
    """Generator for ``Dataset.from_generator``; ``stamp`` only keys the datasets cache."""
    for _, docid, title, text in _passages(path):
        yield {"docid": docid, "title": title, "text": text}


def _file_stamp(path: str) -> tuple:
    """What identifies a version of ``path`` for caching (an ``irds:`` id is its own version)."""
    if path.startswith(IRDS_PREFIX):
        return (path,)
    stat = os.stat(path)
    return (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


def _find_duplicate_docid(path: str) -> None:
    """Raise a DataError at the first repeated docid of ``path`` (slow path, only run on failure)."""
    seen: set[str] = set()
    for line_no, docid, _, _ in _passages(path):
        if docid in seen:
            raise DataError(path, line_no, f"expected unique docids, got a second {docid!r}")
        seen.add(docid)


def read_corpus(path: str | os.PathLike, cache_dir: str | None = None) -> datasets.Dataset:
    """Read a corpus into a :class:`datasets.Dataset` with string columns ``docid``, ``title``, ``text``.

    ``path`` is a TSV (``docid<TAB>text``, title ``""``) or BEIR JSONL (``{"_id", "title", "text"}``)
    file, optionally gzipped, a bundled name such as ``scifact:corpus``, or ``irds:<id>``. The
    Arrow table is written to ``cache_dir`` (dr's cache when ``None``: :mod:`dr.data.corpus_cache`)
    and memory mapped; it is rebuilt when the file's size or modification time changes, and the
    table of the corpus's previous version is then deleted. Malformed lines and
    duplicate docids raise :class:`DataError`.
    """
    path = resolve_path(path)
    if not path.startswith(IRDS_PREFIX):
        _corpus_format(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        if next(_passages(path), None) is None:  # datasets cannot build an empty split
            raise DataError(path, None, "expected at least one passage, got none")
    import datasets

    cache_dir = corpus_cache_dir(cache_dir)
    try:
        corpus = datasets.Dataset.from_generator(
            _generate_corpus,
            features=corpus_features(),
            cache_dir=cache_dir,
            gen_kwargs={"path": path, "stamp": _file_stamp(path)},
        )
    except Exception as e:  # datasets wraps generator errors in DatasetGenerationError
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, (DataError, ConfigError, ImportError)):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None
    if len(pc.unique(corpus.data.column("docid"))) != len(corpus):
        _find_duplicate_docid(path)
    forget_old_versions(
        cache_dir, path if path.startswith(IRDS_PREFIX) else str(Path(path).resolve()), corpus.cache_files
    )
    return corpus


def passage_texts(corpus: datasets.Dataset, indices: Iterable[int] | None = None) -> list[str]:
    """The texts to encode for rows ``indices`` (all rows if ``None``) of a corpus.

    ``"title text"`` joined by one space when the title is non-empty, else ``text`` (the BEIR /
    sentence-transformers convention).
    """
    rows = corpus[:] if indices is None else corpus[[int(i) for i in indices]]
    return [f"{title} {text}" if title else text for title, text in zip(rows["title"], rows["text"])]


# --------------------------------------------------------------------------------------------------
# queries


def read_queries(path: str | os.PathLike) -> dict[str, str]:
    """Read queries ``qid<TAB>text`` (BEIR JSONL ``{"_id", "text"}`` for ``*.jsonl``, or ``irds:<id>``) into ``{qid:
    text}``."""
    path = resolve_path(path)
    if path.startswith(IRDS_PREFIX):
        return {str(q.query_id): _irds_text(q) for q in _irds(path).queries_iter()}
    if path.lower().removesuffix(".gz").endswith(".jsonl"):  # BEIR queries {"_id", "text"}
        from dr.data.beir import read_jsonl_queries

        return read_jsonl_queries(path)
    queries: dict[str, str] = {}
    for line_no, line in _lines(path):
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(path, line_no, f"expected 2 tab-separated fields 'qid<TAB>text', got {len(fields)}")
        qid, text = _check_id(path, line_no, fields[0], "qid"), fields[1]
        if not text.strip():
            raise DataError(path, line_no, f"expected a non-empty query text for qid {qid!r}")
        if qid in queries:
            raise DataError(path, line_no, f"expected unique qids, got a second {qid!r}")
        queries[qid] = text
    return queries
