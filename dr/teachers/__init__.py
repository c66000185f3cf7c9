"""Teachers: frozen scorers of (query, passage) texts for distillation, and teacher scoring.

In-batch teachers (``inbatch_teacher=``) return the ``[B, P]`` matrix of a batch; every teacher also
scores per-query candidate lists (``score_groups``), which :func:`score_to_file` (``dr-score``)
writes as a teacher-score file.
"""

from dr.teachers.base import Teacher
from dr.teachers.biencoder import BiEncoderTeacher
from dr.teachers.colbert import ColBERTTeacher
from dr.teachers.cross_encoder import CrossEncoderTeacher
from dr.teachers.fusion import FusionTeacher, fuse, fusion_search, normalize_scores
from dr.teachers.scoring import QueryPairs, annotate_negatives, pairs_from_negatives, pairs_from_triples, score_to_file

__all__ = [
    "BiEncoderTeacher",
    "ColBERTTeacher",
    "CrossEncoderTeacher",
    "FusionTeacher",
    "QueryPairs",
    "Teacher",
    "annotate_negatives",
    "fuse",
    "fusion_search",
    "normalize_scores",
    "pairs_from_negatives",
    "pairs_from_triples",
    "score_to_file",
]
