"""Teacher scoring (``dr-score``): score (query, positive, negative) triples with a teacher; write a teacher-score file.

Input: a negatives file (:mod:`dr.data.negatives`; every positive is paired with every negative of its
query, or with the first ``max_negatives``) or a triples file (TSV ``qid<TAB>pos_pid<TAB>neg_pid``).
Output: the Margin-MSE TSV of :mod:`dr.data.teacher_scores` (``pos_score neg_score qid pos_pid neg_pid``, one
line per pair), and optionally the negatives file again with the teacher's scores in its
``score`` / ``positive_scores`` fields (for ``data.teacher_from_negatives=true``).

The teacher (``teacher=`` group) is any :class:`dr.teachers.Teacher`: a cross-encoder
(``teacher=cross_encoder teacher.model=NAME_OR_FOLDER``) or the offline BM25 + dense fusion
(``teacher=fusion``). Each query's candidates (its positives and negatives) are scored together,
so fusion normalises over them.

Resumable: queries are scored in chunks; each chunk's lines are appended to ``<output>.partial``,
flushed and fsynced, and only then is ``<output>.progress.json`` (queries done, byte length of the
partial file, a fingerprint of the inputs and teacher) replaced atomically. A restarted run with
the same inputs truncates the partial file to the recorded length (dropping any half-written
chunk) and continues after the last recorded query; when all are done the partial file is renamed
(or gzipped) to the output and the progress file removed. So no line is lost, duplicated or kept
half-written, whenever the run is killed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from dr.data.io import DataError, atomic_write, naming, numbered_lines, open_nofollow, write_json
from dr.data.negatives import read_negatives, write_negatives
from dr.data.teacher_scores import format_teacher_line, read_teacher_scores

log = logging.getLogger(__name__)


@dataclass
class QueryPairs:
    """One query's (positive, negative) pairs, in output order."""

    qid: str
    pairs: list[tuple[str, str]]

    @property
    def docids(self) -> list[str]:
        """The query's candidates: every docid of its pairs, once, in first-seen order."""
        return list(dict.fromkeys(d for pair in self.pairs for d in pair))


def pairs_from_negatives(
    path: str, max_negatives: int | None = None, positives: dict[str, list[str]] | None = None
) -> list[QueryPairs]:
    """Positives × negatives of every record of a negatives file (plus ``positives`` from qrels)."""
    out, skipped = [], 0
    for qid, record in read_negatives(path).items():
        pos = list(dict.fromkeys([*record.positives, *(positives or {}).get(qid, [])]))
        negs = [n for n in record.negatives if n not in set(pos)]
        negs = list(dict.fromkeys(negs))[: max_negatives if max_negatives else None]
        if not pos or not negs:
            skipped += 1
            continue
        out.append(QueryPairs(qid, [(p, n) for p in pos for n in negs]))
    if skipped:
        log.warning("%s: %d queries without a positive or a negative were skipped", path, skipped)
    return out


def pairs_from_triples(path: str) -> list[QueryPairs]:
    """Read TSV ``qid pos_pid neg_pid`` triples, grouped by query (first-seen order, no duplicates)."""
    expected = "expected 3 tab-separated fields: qid, pos_pid, neg_pid"
    groups: dict[str, dict[tuple[str, str], None]] = {}
    with numbered_lines(path) as lines:
        for line_no, line in lines:
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split("\t")]
            if len(parts) != 3 or not all(parts):
                raise DataError(path, line_no, f"found {len(parts)} fields {parts!r}; {expected}")
            groups.setdefault(parts[0], {})[(parts[1], parts[2])] = None
    return [QueryPairs(q, list(p)) for q, p in groups.items()]


def inputs_fingerprint(cfg: DictConfig, groups: list[QueryPairs]) -> str:
    source = cfg.negatives or cfg.triples
    stat = os.stat(source)
    return json.dumps(
        {
            "input": str(Path(source).resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "corpus": str(cfg.corpus),
            "queries": str(cfg.queries),
            "chunk_size": int(cfg.chunk_size),
            "max_negatives": cfg.get("max_negatives"),
            "groups": len(groups),
            "pairs": sum(len(g.pairs) for g in groups),
            "teacher": OmegaConf.to_container(cfg.teacher, resolve=True),
        },
        sort_keys=True,
    )


def score_to_file(
    teacher,
    groups: Sequence[QueryPairs],
    query_text: Callable[[str], str],
    passage_text: Callable[[str], str],
    output: str | os.PathLike,
    chunk_size: int = 256,
    fingerprint: str = "",
    on_chunk: Callable[[int, int], None] | None = None,
    show_progress: bool = True,
) -> int:
    """Score every pair of ``groups`` with ``teacher.score_groups`` and write the TSV resumably
    (see module docstring). ``on_chunk(queries_done, lines_written)`` is called after each chunk
    is durable. Returns the number of lines of the finished file."""
    output = Path(output)
    partial = output.with_name(output.name + ".partial")
    progress_file = output.with_name(output.name + ".progress.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    done, size, lines = 0, 0, 0
    if progress_file.is_file() and partial.is_file():
        state = _read_progress(progress_file)
        if state.get("fingerprint") == fingerprint and partial.stat().st_size >= state["bytes"]:
            done, size, lines = state["queries_done"], state["bytes"], state["lines"]
            log.info("resuming %s: %d of %d queries already scored (%d lines)", output, done, len(groups), lines)
        else:
            log.warning("%s: inputs or teacher changed since the interrupted run; starting again", progress_file)
    try:
        with open_nofollow(partial) as f:
            f.truncate(size)  # drops whatever was written after the last recorded chunk
            f.seek(size)
            bar = tqdm(
                total=len(groups), initial=done, desc="score", unit="query", disable=not show_progress, mininterval=2
            )
            for start in range(done, len(groups), chunk_size):
                chunk = groups[start : start + chunk_size]
                cands = [g.docids for g in chunk]
                scores = teacher.score_groups(
                    [query_text(g.qid) for g in chunk], [[passage_text(d) for d in c] for c in cands]
                )
                text = []
                for g, c, s in zip(chunk, cands, scores):
                    by_doc = dict(zip(c, np.asarray(s, dtype=np.float64).tolist()))
                    text += [format_teacher_line(by_doc[p], by_doc[n], g.qid, p, n) for p, n in g.pairs]
                f.write("".join(text).encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
                done, size, lines = start + len(chunk), f.tell(), lines + len(text)
                write_json(
                    progress_file, {"fingerprint": fingerprint, "queries_done": done, "bytes": size, "lines": lines}
                )
                bar.update(len(chunk))
                if on_chunk is not None:
                    on_chunk(done, lines)
            bar.close()
    except OSError as e:
        if e.filename is None:  # a write to the partial file failed (a full disk): say which file
            raise naming(e, partial) from e
        raise
    if output.suffix == ".gz":
        with atomic_write(output) as out, open(partial, encoding="utf-8") as src:
            for line in src:
                out.write(line)
        partial.unlink()
    else:
        os.replace(partial, output)
    progress_file.unlink(missing_ok=True)
    return lines


def _read_progress(progress_file: Path) -> dict:
    """The progress record of an interrupted ``dr-score``; a :class:`DataError` naming it when damaged."""
    try:
        state = json.loads(progress_file.read_text(encoding="utf-8"))
        if isinstance(state, dict) and all(isinstance(state.get(k), int) for k in ("queries_done", "bytes", "lines")):
            return state
    except (ValueError, UnicodeDecodeError):
        pass
    raise DataError(
        progress_file,
        None,
        "expected dr-score's progress record (JSON with queries_done, bytes, lines), "
        "got a damaged file; it is safe to delete it (with the .partial file next to it): scoring then starts again",
    )


def annotate_negatives(negatives_path: str, teacher_path: str | os.PathLike, output: str | os.PathLike) -> None:
    """Rewrite a negatives file with the teacher's scores (``null`` where a pair was not scored)."""
    teacher = read_teacher_scores(teacher_path)
    records = list(read_negatives(negatives_path).values())
    for r in records:
        scores = teacher.scores.get(r.qid, {})
        r.positive_scores = [scores.get(d) for d in r.positives]
        r.negative_scores = [scores.get(d) for d in r.negatives]
    write_negatives(output, records)
