"""Dense retrieval end to end: encode a corpus and queries, index with FAISS, search."""

from __future__ import annotations

import numpy as np

from dr.data import passage_texts
from dr.models.encoder import BiEncoder
from dr.retrieval.index import DenseIndex


def encode_corpus(
    encoder: BiEncoder, corpus, batch_size: int = 64, bf16: bool = False, show_progress: bool = True
) -> np.ndarray:
    """Embeddings ``[N, dim]`` of every passage of a corpus table, in row order."""
    return encoder.encode_passages(passage_texts(corpus), batch_size=batch_size, bf16=bf16, show_progress=show_progress)


def build_index(
    encoder: BiEncoder,
    corpus,
    index_kind: str = "flat",
    batch_size: int = 64,
    bf16: bool = False,
    show_progress: bool = True,
    **index_args,
) -> DenseIndex:
    """Encode the corpus in memory and index it (``index_args`` go to :meth:`DenseIndex.build`)."""
    embeddings = encode_corpus(encoder, corpus, batch_size=batch_size, bf16=bf16, show_progress=show_progress)
    return DenseIndex.build(embeddings, list(corpus["docid"]), kind=index_kind, **index_args)


def search_queries(
    encoder: BiEncoder,
    index: DenseIndex,
    queries: dict[str, str],
    k: int = 1000,
    batch_size: int = 64,
    bf16: bool = False,
    show_progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Encode ``queries`` ``{qid: text}`` and return the top-k run ``{qid: {docid: score}}``."""
    qids = list(queries)
    q = encoder.encode_queries(
        [queries[i] for i in qids], batch_size=batch_size, bf16=bf16, show_progress=show_progress
    )
    return index.search_run(qids, q, k)


def dense_retrieve(
    encoder: BiEncoder,
    corpus,
    queries: dict[str, str],
    k: int = 1000,
    batch_size: int = 64,
    bf16: bool = False,
    show_progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Encode the corpus into a flat index and search ``queries``."""
    index = build_index(encoder, corpus, batch_size=batch_size, bf16=bf16, show_progress=show_progress)
    return search_queries(encoder, index, queries, k=k, batch_size=batch_size, bf16=bf16, show_progress=show_progress)
