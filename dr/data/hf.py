"""Training data given as texts (a Hugging Face ``datasets`` folder, parquet or JSONL) turned into
the corpus, queries, qrels and negatives files that the rest of dr reads.

``data.hf.path=PATH`` (``dr-train``) reads rows in the conventions of sentence-transformers or
FlagEmbedding (:mod:`dr.data.hf_columns`) and **interns** their texts: identical texts are one
passage, or one query, whose id is the first 16 hex digits of the SHA-256 of the text's UTF-8
bytes (the text exactly as given: no case folding, no trimming). Rows with the same query text
are one query: its positives and negatives are the union over those rows, in order of first
appearance, a text keeping the first score given for it; a text that is a positive of a query is
never one of its negatives. Each (query, positive) is a qrel of grade 1; the scores go into the
negatives file (the positives' scores too), where SimANS reads them as retriever scores and
``data.teacher_from_negatives=true`` as a teacher's (KD, Margin-MSE).

The files are written once per version of the input (its files' sizes and modification times),
split, column mapping and ignored columns, into ``$DR_CACHE_DIR/hf/<key>/`` (default
``~/.cache/dr/hf``): ``corpus.jsonl`` (BEIR, empty title), ``queries.jsonl``, ``qrels.trec``,
``negatives.jsonl`` (when the rows have negative columns) and ``manifest.json``. The folder is built
beside its final place and renamed into it complete; a later run reads it back. The version an
input replaces is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from dr.config import ConfigError
from dr.data.hf_columns import Layout, detect_layout, parse_row
from dr.data.io import DataError, atomic_write, numbered_lines, parse_json, usual_modes, write_json
from dr.data.negatives import NegativesRecord, write_negatives

log = logging.getLogger(__name__)

#: Bumped when the files written change, so that older cache folders are not read.
VERSION = 1
ID_DIGITS = 16


def text_id(text: str) -> str:
    """The id of a text: the first 16 hex digits (64 bits) of the SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_DIGITS]


@dataclass(frozen=True)
class HfFiles:
    """The files materialised from a dataset (``negatives`` is None when it has no negative columns)."""

    corpus: str
    queries: str
    qrels: str
    negatives: str | None
    manifest: dict


# ------------------------------------------------------------------------------------------ reading
def _kind(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return "dataset_dict"
        if (path / "state.json").is_file():
            return "dataset"
        raise DataError(
            path,
            None,
            "expected a datasets folder (Dataset.save_to_disk: state.json, or a DatasetDict's dataset_dict.json)",
        )
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    raise DataError(
        path,
        None,
        "expected a datasets folder (Dataset.save_to_disk), a .parquet file or a .jsonl file (one object per line)",
    )


def _arrow_rows(batches: Iterator[list[dict]]) -> Iterator[tuple[int | None, int, dict]]:
    index = 0
    for batch in batches:
        for row in batch:
            yield None, index, row
            index += 1


def _jsonl_rows(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int | None, int, dict]]:
    expected = 'expected a JSON object per line, e.g. {"query": ..., "positive": ..., "negative": ...}'
    index = 0
    for line_no, line in lines:
        if not line.strip():
            continue
        obj = parse_json(path, line_no, line, expected)
        if not isinstance(obj, dict):
            raise DataError(path, line_no, f"{expected}, got a JSON {type(obj).__name__}")
        yield line_no, index, obj
        index += 1


@contextlib.contextmanager
def open_rows(path: str | os.PathLike, split: str = "train") -> Iterator[tuple[list[str], Iterator]]:
    """``(column names, rows)`` of a dataset: each row ``(line number or None, 0-based row index,
    {column: value})``; a JSONL file's columns are its first row's keys."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    kind = _kind(path)
    if kind == "jsonl":
        with numbered_lines(path) as lines:
            rows = _jsonl_rows(path, lines)
            first = next(rows, None)
            if first is None:
                raise DataError(path, None, "expected at least one row, got none")
            yield list(first[2]), itertools.chain([first], rows)
        return
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
        except Exception as e:  # pyarrow's ArrowInvalid for a file that is not parquet
            raise DataError(path, None, f"expected a parquet file, got one that cannot be read ({e})") from None
        yield table.schema_arrow.names, _arrow_rows(b.to_pylist() for b in table.iter_batches(batch_size=1024))
        return
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ConfigError(f"data.hf.split={split}: {path} has the splits {', '.join(loaded)}")
        loaded = loaded[split]
    batches = ([dict(zip(b, values)) for values in zip(*b.values())] for b in loaded.iter(batch_size=1024))
    yield list(loaded.column_names), _arrow_rows(batches)


# ---------------------------------------------------------------------------------------- interning
class _Interned:
    """Queries and passages by id, and each query's positives and negatives ``{docid: score}`` in order."""

    def __init__(self, path: Path):
        self.path = path
        self.queries: dict[str, str] = {}
        self.passages: dict[str, str] = {}
        self.positives: dict[str, dict[str, float | None]] = {}
        self.negatives: dict[str, dict[str, float | None]] = {}
        self.rows = 0

    def _id(self, table: dict[str, str], text: str, what: str) -> str:
        key = text_id(text)
        known = table.setdefault(key, text)
        if known != text:  # 64 bits: about one chance in 10^6 at 10^7 texts, never silently merged
            raise DataError(self.path, None, f"two different {what} texts share the id {key} (SHA-256 prefix)")
        return key

    def add(self, example) -> None:
        self.rows += 1
        qid = self._id(self.queries, example.query, "query")
        for kind, texts, scores in (
            (self.positives, example.positives, example.positive_scores),
            (self.negatives, example.negatives, example.negative_scores),
        ):
            have = kind.setdefault(qid, {})
            for text, score in zip(texts, scores):
                docid = self._id(self.passages, text, "passage")
                if have.get(docid) is None:  # the first score given for a text (a later one fills a gap)
                    have[docid] = score


def intern_rows(
    path: str | os.PathLike, split: str, columns: dict | None, ignore: list[str]
) -> tuple[_Interned, Layout]:
    """Read and validate every row of the dataset at ``path``, interning its texts."""
    path = Path(path)
    interned = _Interned(path)
    with open_rows(path, split) as (names, rows):
        layout = detect_layout(names, columns, ignore, where=str(path))
        known = set(names)
        for line_no, index, row in rows:
            where = (line_no, "") if line_no is not None else (None, f"row {index} (dataset[{index}]): ")
            fail = lambda message, w=where: DataError(path, w[0], w[1] + message)  # noqa: E731
            extra = [c for c in row if c not in known]
            if extra:  # a JSONL row with a key the first row lacks: the layout was read from the first row
                raise fail(f"expected the first row's columns ({', '.join(names)}), got also {extra[0]!r}")
            interned.add(parse_row(layout, row, fail))
    if not interned.rows:
        raise DataError(path, None, "expected at least one row, got none")
    return interned, layout


# ------------------------------------------------------------------------------------ materialising
def hf_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$DR_CACHE_DIR/hf``, else ``~/.cache/dr/hf``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("DR_CACHE_DIR") or "~/.cache/dr").expanduser() / "hf"


def _stamp(path: Path) -> list:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [
        [str(p.relative_to(path)) if path.is_dir() else p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files
    ]


def _source(path: Path, split: str, columns: dict | None, ignore: list[str]) -> dict:
    """What the cached files depend on (without the files' stamps: the input's identity)."""
    cols = {k: (v if isinstance(v, str) else list(v)) for k, v in sorted((columns or {}).items())}
    return {"path": str(path.resolve()), "split": split, "columns": cols, "ignore": list(ignore)}


def materialise(
    path: str | os.PathLike,
    split: str = "train",
    columns: dict | None = None,
    ignore: list[str] | tuple = (),
    cache_dir: str | os.PathLike | None = None,
) -> HfFiles:
    """The corpus, queries, qrels and negatives files of the dataset at ``path`` (see the module
    docstring), written on first use and read back from the cache after."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (data.hf.path)")
    ignore = list(ignore or [])
    source = _source(path, split, columns, ignore)
    key_of = {"version": VERSION, **source, "stamp": _stamp(path)}
    key = hashlib.sha256(json.dumps(key_of, sort_keys=True).encode()).hexdigest()[:20]
    root = hf_cache_dir(cache_dir)
    folder = root / key
    if not (folder / "manifest.json").is_file():
        interned, layout = intern_rows(path, split, columns, ignore)
        _write_folder(root, folder, interned, layout, source)
        _forget_older(root, key, source)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return HfFiles(
        corpus=str(folder / "corpus.jsonl"),
        queries=str(folder / "queries.jsonl"),
        qrels=str(folder / "qrels.trec"),
        negatives=str(folder / "negatives.jsonl") if manifest["counts"].get("negative_lists") is not None else None,
        manifest=manifest,
    )


def _write_folder(root: Path, folder: Path, interned: _Interned, layout: Layout, source: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        with atomic_write(tmp / "corpus.jsonl") as f:
            for docid, text in interned.passages.items():
                f.write(json.dumps({"_id": docid, "title": "", "text": text}, ensure_ascii=False) + "\n")
        with atomic_write(tmp / "queries.jsonl") as f:
            for qid, text in interned.queries.items():
                f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
        with atomic_write(tmp / "qrels.trec") as f:
            f.writelines(f"{qid} 0 {docid} 1\n" for qid, pos in interned.positives.items() for docid in pos)
        dropped = 0
        records = []
        for qid, pos in interned.positives.items():
            negs = {d: s for d, s in interned.negatives.get(qid, {}).items() if d not in pos}
            dropped += len(interned.negatives.get(qid, {})) - len(negs)
            records.append(NegativesRecord(qid, list(pos), list(negs), list(negs.values()), list(pos.values())))
        if layout.negatives:
            write_negatives(tmp / "negatives.jsonl", records)
        counts = {
            "rows": interned.rows,
            "queries": len(interned.queries),
            "passages": len(interned.passages),
            "qrels": sum(len(p) for p in interned.positives.values()),
            "negative_lists": sum(1 for r in records if r.negatives) if layout.negatives else None,
            "negatives": sum(len(r.negatives) for r in records),
            "negatives_that_are_positives_dropped": dropped,
            "scored_pairs": sum(s is not None for r in records for s in r.positive_scores + r.negative_scores),
        }
        manifest = {
            "source": source,
            "layout": layout.as_dict(),
            "counts": counts,
            "ids": f"first {ID_DIGITS} hex digits of the SHA-256 of the text's UTF-8 bytes",
            "version": VERSION,
        }
        write_json(tmp / "manifest.json", manifest)  # last: a folder with a manifest is complete
        usual_modes(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "manifest.json").is_file():  # not another process's complete copy
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "data.hf: %s -> %d queries, %d passages, %d qrels%s in %s (columns %s)",
        source["path"],
        counts["queries"],
        counts["passages"],
        counts["qrels"],
        f", {counts['negatives']} negatives" if layout.negatives else "",
        folder,
        layout.as_dict(),
    )


def _forget_older(root: Path, key: str, source: dict) -> None:
    """Delete the folders of earlier versions of the same input (same path, split and columns)."""
    for manifest in root.glob("*/manifest.json"):
        folder = manifest.parent
        if folder.name == key or not re.fullmatch(r"[0-9a-f]{20}", folder.name):
            continue  # this version, or a folder of another kind (only the names this module gives go)
        try:
            if json.loads(manifest.read_text(encoding="utf-8")).get("source") == source:
                shutil.rmtree(folder, ignore_errors=True)
                log.info("data.hf: removed the files of an earlier version of %s (%s)", source["path"], folder)
        except (OSError, ValueError):
            continue


def hf_node(value: Any) -> dict | None:
    """The ``data.hf`` settings as a plain dict when a path is set, else None; ``data.hf=PATH`` is
    short for ``data.hf.path=PATH`` (the other settings at their defaults)."""
    if value is None:
        return None
    if isinstance(value, str):
        return {"path": value} if value.strip() else None
    if hasattr(value, "items"):
        node = {k: v for k, v in value.items()}
        return node if node.get("path") else None
    raise ConfigError(f"data.hf={value}: expected settings, e.g. data.hf.path=PATH (data.hf.split, data.hf.columns)")


def materialise_node(node: dict) -> HfFiles:
    """:func:`materialise` with the settings of a ``data.hf`` node."""
    columns = node.get("columns") or {}
    columns = {k: (v if isinstance(v, str) else list(v)) for k, v in columns.items()}
    return materialise(
        str(node["path"]),
        split=str(node.get("split") or "train"),
        columns=columns,
        ignore=list(node.get("ignore") or []),
        cache_dir=node.get("cache_dir"),
    )


def hf_paths(hf, corpus: str, queries: str, qrels: str, negatives):
    """``(corpus, queries, qrels, negatives)``: the files of the ``data.hf`` node ``hf`` (its
    negatives only when it has some), or the given ones when ``hf`` sets no path."""
    node = hf_node(hf)
    if node is None:
        return corpus, queries, qrels, negatives
    files = materialise_node(node)
    return files.corpus, files.queries, files.qrels, files.negatives or negatives
