"""Data: readers and writers of every file format, and the I/O helpers they share.

Corpora and queries (:mod:`.corpus`), TREC qrels and runs (:mod:`.trec`), negatives files
(:mod:`.negatives`), teacher-score files (:mod:`.teacher_scores`), query-cluster files
(:mod:`.clusters`); training data as texts in sentence-transformers' or FlagEmbedding's columns
(Hugging Face ``datasets``, parquet, JSONL), read into those files (:mod:`.hf`) and written
(:mod:`.hf_write`); referential checks of ids (:mod:`.checks`); atomic writes and
:class:`DataError` (:mod:`.io`). Nothing here imports a model, an index or Lightning: this is the
bottom layer.
"""

from dr.data.beir import beir_folder
from dr.data.checks import ON_MISSING, check_ids
from dr.data.clusters import read_clusters, write_clusters
from dr.data.compact import NegativesTable, TeacherTriples, read_negatives_compact, read_teacher_triples
from dr.data.corpus import BUNDLED, IRDS_PREFIX, bundled, passage_texts, read_corpus, read_queries, resolve_path
from dr.data.io import DataError, atomic_write, open_text, write_json
from dr.data.negatives import NegativesRecord, iter_negatives, read_negatives, write_negatives
from dr.data.subset import write_subset
from dr.data.teacher_scores import (
    TeacherScores,
    drop_teacher_inversions,
    format_teacher_line,
    iter_teacher_scores,
    read_teacher_scores,
    write_teacher_scores,
)
from dr.data.trec import read_positives, read_qrels, read_run, write_run

__all__ = [
    "BUNDLED",
    "IRDS_PREFIX",
    "DataError",
    "NegativesRecord",
    "ON_MISSING",
    "TeacherScores",
    "atomic_write",
    "beir_folder",
    "check_ids",
    "bundled",
    "format_teacher_line",
    "open_text",
    "passage_texts",
    "read_clusters",
    "read_corpus",
    "read_negatives",
    "read_positives",
    "read_qrels",
    "read_queries",
    "read_run",
    "drop_teacher_inversions",
    "read_teacher_scores",
    "resolve_path",
    "write_clusters",
    "write_json",
    "write_negatives",
    "write_run",
    "write_subset",
    "write_teacher_scores",
    "NegativesTable",
    "TeacherTriples",
    "iter_negatives",
    "iter_teacher_scores",
    "read_negatives_compact",
    "read_teacher_triples",
]
