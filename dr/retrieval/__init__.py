"""Retrieval: BM25, the FAISS index, dense search, evaluation (ir-measures), export, and mining
candidates for the miners."""

from dr.retrieval.bm25 import BM25, BM25Negatives, bm25_negatives
from dr.retrieval.evaluate import PRESETS, evaluate_run, format_table, parse_measures, per_query, write_metrics
from dr.retrieval.export import export, read_dr_config
from dr.retrieval.index import DenseIndex, gpu_available
from dr.retrieval.search import build_index, dense_retrieve, encode_corpus, search_queries

__all__ = [
    "BM25", "BM25Negatives", "PRESETS", "DenseIndex", "bm25_negatives", "build_index", "dense_retrieve",
    "encode_corpus", "evaluate_run", "export", "format_table", "gpu_available", "parse_measures", "per_query",
    "read_dr_config", "search_queries", "write_metrics",
]
