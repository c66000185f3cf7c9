"""Data: readers and writers of every file format, and the I/O helpers they share.

Corpora and queries (:mod:`.corpus`), TREC qrels and runs (:mod:`.trec`), negatives files
(:mod:`.negatives`), teacher-score files (:mod:`.teacher_scores`), query-cluster files
(:mod:`.clusters`); referential checks of ids (:mod:`.checks`); atomic writes and
:class:`DataError` (:mod:`.io`). Nothing here imports a model, an index or Lightning: this is the
bottom layer.
"""

from dr.data.checks import ON_MISSING, check_ids
from dr.data.clusters import read_clusters, write_clusters
from dr.data.corpus import BUNDLED, IRDS_PREFIX, bundled, passage_texts, read_corpus, read_queries, resolve_path
from dr.data.io import DataError, atomic_write, open_text, write_json
from dr.data.negatives import NegativesRecord, read_negatives, write_negatives
from dr.data.subset import write_subset
from dr.data.teacher_scores import TeacherScores, format_teacher_line, read_teacher_scores, write_teacher_scores
from dr.data.trec import read_positives, read_qrels, read_run, write_run

__all__ = [
    "BUNDLED", "IRDS_PREFIX", "DataError", "NegativesRecord", "ON_MISSING", "TeacherScores",
    "atomic_write", "check_ids", "bundled", "format_teacher_line", "open_text", "passage_texts", "read_clusters",
    "read_corpus", "read_negatives", "read_positives", "read_qrels", "read_queries", "read_run",
    "read_teacher_scores", "resolve_path", "write_clusters", "write_json", "write_negatives",
    "write_run", "write_subset", "write_teacher_scores",
]
