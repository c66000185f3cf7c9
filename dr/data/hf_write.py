"""Negatives written as texts for sentence-transformers or FlagEmbedding (``dr-mine output_format=...``).

``columns="st"``: sentence-transformers' n-tuple, one row per (query, positive):
``{"query", "positive", "negative_1", ..., "negative_n", "scores": [positive score, negative scores...]}``
(what ``mine_hard_negatives(output_format="n-tuple", output_scores=True)`` writes). An n-tuple has a
fixed width: ``n`` is ``num_negatives`` (default: the longest list), each query keeps its first ``n``
negatives and a query with fewer is left out (counted), as ST does. ``columns="flagembedding"``:
``{"query", "pos": [...], "neg": [...], "pos_scores", "neg_scores"}``, one row per query, every
list whole. Scores are written when every row has them (a ``null`` would stop either trainer).

Containers: ``jsonl`` (one object per line), ``parquet``, or ``hf`` (a ``datasets`` folder,
``Dataset.save_to_disk``). Every one is written beside its final place and renamed into it complete.
Texts are the passages as dr encodes them (``title text``). :mod:`dr.data.hf` reads all of these back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from dr.config import ConfigError
from dr.data.io import DataError, atomic_write, naming, refuse_symlink, usual_modes
from dr.data.negatives import NegativesRecord

OUTPUT_FORMATS = ("negatives", "jsonl", "parquet", "hf")
OUTPUT_COLUMNS = ("st", "flagembedding")


def text_rows(
    records: list[NegativesRecord],
    query_text: Callable[[str], str],
    passage_text: Callable[[str], str],
    columns: str = "st",
    num_negatives: int | None = None,
) -> tuple[list[dict], dict]:
    """The rows of ``records`` in the ``columns`` convention, and counts (rows, queries written, left out)."""
    if columns not in OUTPUT_COLUMNS:
        raise ConfigError(f"output_columns={columns}: expected one of {', '.join(OUTPUT_COLUMNS)}")
    kept = [r for r in records if r.positives]
    if columns == "st":
        n = num_negatives if num_negatives is not None else max((len(r.negatives) for r in kept), default=0)
        kept = [r for r in kept if len(r.negatives) >= n]
    else:
        n = None
    scored = bool(kept) and all(_scored(r, n) for r in kept)
    rows: list[dict] = []
    for r in kept:
        query = query_text(r.qid)
        if columns == "flagembedding":
            row = {
                "query": query,
                "pos": [passage_text(d) for d in r.positives],
                "neg": [passage_text(d) for d in r.negatives],
            }
            if scored:
                row["pos_scores"], row["neg_scores"] = (
                    list(r.positive_scores),
                    list(r.negative_scores[: len(r.negatives)]),
                )
            rows.append(row)
            continue
        negatives = [passage_text(d) for d in r.negatives[:n]]
        for j, positive in enumerate(r.positives):
            row = {"query": query, "positive": passage_text(positive)}
            row.update({f"negative_{i}": text for i, text in enumerate(negatives, start=1)})
            if scored:
                row["scores"] = [r.positive_scores[j], *r.negative_scores[:n]]
            rows.append(row)
    counts = {
        "rows": len(rows),
        "queries": len(kept),
        "queries_left_out": len(records) - len(kept),
        "negatives_per_row": n,
        "scores": scored,
    }
    return rows, counts


def _scored(record: NegativesRecord, n: int | None) -> bool:
    """Every positive and every written negative of ``record`` has a score."""
    negatives = len(record.negatives[:n]) if n is not None else len(record.negatives)
    scores = [*record.positive_scores, *record.negative_scores[:negatives]]
    return len(scores) == len(record.positives) + negatives and all(s is not None for s in scores)


def _features(columns: str, rows: list[dict]):
    import datasets

    text, texts, numbers = (
        datasets.Value("string"),
        datasets.Sequence(datasets.Value("string")),
        datasets.Sequence(datasets.Value("float64")),
    )
    names = list(rows[0]) if rows else (["query", "positive"] if columns == "st" else ["query", "pos", "neg"])
    kinds = {"pos": texts, "neg": texts, "scores": numbers, "pos_scores": numbers, "neg_scores": numbers}
    return datasets.Features({name: kinds.get(name, text) for name in names})


def write_text_dataset(path: str | os.PathLike, rows: list[dict], fmt: str, columns: str) -> Path:
    """Write ``rows`` (:func:`text_rows`) to ``path`` as ``fmt`` (``jsonl``, ``parquet`` or ``hf``)."""
    path = Path(path)
    if fmt == "jsonl":
        with atomic_write(path) as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path
    import datasets

    table = datasets.Dataset.from_list(rows, features=_features(columns, rows))
    if fmt == "parquet":
        with atomic_write(path, "wb") as f:
            table.to_parquet(f)
        return path
    if fmt != "hf":
        raise ConfigError(f"output_format={fmt}: expected one of {', '.join(OUTPUT_FORMATS)}")
    _check_folder_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        table.save_to_disk(str(tmp / "dataset"))
        usual_modes(tmp)
        _swap_in(tmp / "dataset", path, tmp)
    except BaseException as e:
        if not (tmp / "previous").exists():  # else the swap could not put the previous folder back: it stays there
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.filename and str(e.filename).startswith(str(tmp)):
            raise naming(e, path) from e
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return path


def _check_folder_target(path: Path) -> None:
    """``path`` may be written: absent, or a ``datasets`` folder (``state.json``) that it replaces."""
    refuse_symlink(path)
    if path.exists() and not (path.is_dir() and (path / "state.json").is_file()):
        raise DataError(
            path, None, "exists and is not a datasets folder (no state.json); expected a new path for output_format=hf"
        )


def _swap_in(new: Path, out: Path, side: Path) -> None:
    """Rename ``new`` to ``out``; an existing ``out`` is moved into ``side`` first and put back if that fails."""
    if not out.exists():
        os.replace(new, out)
        return
    os.replace(out, side / "previous")
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(side / "previous", out)
        raise
