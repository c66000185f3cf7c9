"""Reading the training files in their plain form: teacher-score files and a negatives file, with
the ids the corpus or the queries lack dropped (or refused, ``data.on_missing``).

:mod:`dr.training.compact_data` reads the same files into arrays (``data.compact=true``).
"""

from __future__ import annotations

from typing import Callable

from dr.data import NegativesRecord, TeacherScores, read_negatives, read_teacher_scores, resolve_path
from dr.training.compact_data import record_scores

# unknown(ids, source, what) -> the ids to drop (RetrievalDataModule._unknown)
Unknown = Callable[..., set]


def read_teacher_files(paths: str | list[str] | None, unknown: Unknown) -> TeacherScores:
    """The teacher scores of every file in ``paths``, without unknown qids and docids."""
    teacher = TeacherScores()
    for path in [paths] if isinstance(paths, str) else list(paths or []):
        part = read_teacher_scores(resolve_path(path))
        bad_q = unknown(part.pairs, path, "qids")
        bad_d = unknown((d for pairs in part.pairs.values() for pair in pairs for d in pair), path, "docids")
        teacher.update(part.without(bad_q, bad_d))
    return teacher


def negatives_from_file(
    path: str,
    positives: dict[str, list[str]],
    row_of: dict[str, int],
    unknown: Unknown,
    teacher: TeacherScores | None = None,
    swap: bool = False,
) -> tuple[dict[str, list[str]], dict[str, dict[str, float]]]:
    """The file's negative candidates per query (known docids, never a positive) and its scores.

    ``teacher``: given when the file's scores are teacher scores (``data.teacher_from_negatives``);
    they are merged into the teacher's at set-up and replace the query's in a ``swap`` (a refreshed
    file's teacher scores are normalised over its own list, the fusion teacher's min-max: one
    normalisation per query list).
    """
    records: dict[str, NegativesRecord] = read_negatives(path)
    bad_q = unknown(records, path, "qids")
    unknown((d for r in records.values() for d in (*r.positives, *r.negatives)), path, "docids")
    negatives, file_scores = {}, {}
    for qid, record in records.items():
        if qid in bad_q:
            continue
        pos = set(positives.get(qid, [])) | set(record.positives)
        negatives[qid] = [d for d in record.negatives if d in row_of and d not in pos]
        file_scores[qid] = record_scores(record)
        if teacher is not None:
            scored = record_scores(record)
            if swap and scored:
                teacher.scores[qid] = scored
            else:
                teacher.scores[qid].update(scored)
    return negatives, file_scores
