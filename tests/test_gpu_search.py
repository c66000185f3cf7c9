"""GPU search fallback (dr.retrieval.gpu): the torch exact-search path, run on the CPU, against FAISS flat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dr.retrieval.gpu import TorchFlatSearch, search_backend
from dr.retrieval.index import DenseIndex


def _data(n=3000, dim=24, q=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)).astype(np.float32), rng.standard_normal((q, dim)).astype(np.float32)


@pytest.mark.parametrize("chunk_size", [3000, 257, 10])
def test_torch_search_returns_the_top_k_of_faiss_flat(chunk_size):
    docs, queries = _data()
    docids = [f"d{i}" for i in range(len(docs))]
    faiss_scores, faiss_ids = DenseIndex.build(docs, docids, kind="flat", use_gpu=False).search(queries, 20)
    torch_search = TorchFlatSearch(docs, device="cpu", chunk_size=chunk_size)
    scores, rows = torch_search.search(queries, 20)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    assert [[docids[r] for r in row] for row in rows] == faiss_ids
    np.testing.assert_allclose(scores, faiss_scores, rtol=1e-5, atol=1e-5)


def test_torch_search_in_float16_keeps_the_top_k():
    # What runs on a GPU: the corpus and queries in fp16. Checked on the CPU where fp16 matmul exists.
    docs, queries = _data(n=500, dim=32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    exact = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :10]
    try:
        _, rows = TorchFlatSearch(docs, device="cpu", dtype=torch.float16, chunk_size=128).search(queries, 10)
    except RuntimeError as e:  # an old CPU kernel set without half matmul
        pytest.skip(f"no float16 matmul on this CPU: {e}")
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), exact.tolist())])
    assert overlap >= 0.95


def test_k_larger_than_the_corpus_is_cut():
    docs, queries = _data(n=5, dim=4, q=2)
    scores, rows = TorchFlatSearch(docs, device="cpu", chunk_size=2).search(queries, 10)
    assert rows.shape == (2, 5) and sorted(rows[0].tolist()) == [0, 1, 2, 3, 4]


def test_the_backend_here_is_the_cpu():
    # This machine has neither faiss-gpu nor CUDA: every index stays on the CPU.
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine")
    assert search_backend() == "cpu"
    docs, _ = _data(n=50, dim=8)
    assert not DenseIndex.build(docs, [str(i) for i in range(50)]).on_gpu
