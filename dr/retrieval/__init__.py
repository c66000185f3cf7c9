"""Retrieval: BM25, the FAISS index (flat, IVF, HNSW; sharded; on the GPU when there is one),
dense search and the encoding cache."""

from dr.retrieval.bm25 import BM25, BM25Negatives, bm25_negatives
from dr.retrieval.index import DenseIndex, gpu_available
from dr.retrieval.search import build_index, dense_retrieve, encode_corpus, search_queries

__all__ = [
    "BM25",
    "BM25Negatives",
    "DenseIndex",
    "bm25_negatives",
    "build_index",
    "dense_retrieve",
    "encode_corpus",
    "gpu_available",
    "search_queries",
]
