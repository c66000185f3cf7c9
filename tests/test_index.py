"""DenseIndex on real FAISS: exact search against numpy, approximate kinds, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from dr.retrieval.index import DOCID_FILE, INDEX_FILE, DenseIndex
from dr.data.io import DataError


def _data(n: int = 200, dim: int = 16, n_queries: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    docs = rng.standard_normal((n, dim)).astype(np.float32)
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
    docids = [f"doc{i}" for i in range(n)]
    return docs, queries, docids


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_top_k_equals_brute_force_numpy():
    docs, queries, docids = _data()
    k = 10
    index = DenseIndex.build(docs, docids, kind="flat", use_gpu=False)
    assert len(index) == 200
    scores, got = index.search(queries, k)
    full = queries.astype(np.float64) @ docs.astype(np.float64).T
    order = np.argsort(-full, axis=1, kind="stable")[:, :k]
    assert scores.shape == (7, k)
    np.testing.assert_allclose(scores, np.take_along_axis(full, order, axis=1), rtol=1e-5, atol=1e-5)
    assert got == [[docids[j] for j in row] for row in order]
    # Scores come sorted from best to worst.
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_flat_search_in_small_chunks_gives_the_same_result():
    docs, queries, docids = _data()
    index = DenseIndex.build(docs, docids, kind="flat", use_gpu=False)
    scores, got = index.search(queries, 5)
    chunked_scores, chunked = index.search(queries, 5, batch_size=2)
    np.testing.assert_array_equal(scores, chunked_scores)
    assert got == chunked


def test_ivf_with_all_lists_probed_finds_copies_exactly():
    docs, _, docids = _data(n=400)
    docs = _unit(docs)  # unit vectors: a copy's own inner product (1) is the strict maximum
    index = DenseIndex.build(docs, docids, kind="ivf", use_gpu=False, nlist=4, nprobe=4)
    assert index.index.nlist == 4 and index.index.nprobe == 4
    picks = [0, 17, 123, 399]
    scores, got = index.search(docs[picks], 3)
    assert [row[0] for row in got] == [docids[i] for i in picks]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_ivf_default_nlist_rule():
    docs, _, docids = _data(n=400)
    index = DenseIndex.build(docs, docids, kind="ivf", use_gpu=False)
    # min(sqrt(400) = 20, 400 // 39 = 10)
    assert index.index.nlist == 10
    assert index.index.nprobe == 32


def test_hnsw_finds_copies_exactly():
    docs, _, docids = _data(n=300)
    docs = _unit(docs)
    index = DenseIndex.build(docs, docids, kind="hnsw", use_gpu=False, hnsw_m=16, ef_search=64)
    assert index.index.hnsw.efSearch == 64
    picks = [0, 5, 150, 299]
    scores, got = index.search(docs[picks], 1)
    assert [row[0] for row in got] == [docids[i] for i in picks]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_unknown_kind_and_shape_mismatch_are_rejected():
    docs, _, docids = _data(n=10)
    with pytest.raises(ValueError, match="index_kind=.*expected one of"):
        DenseIndex.build(docs, docids, kind="lsh", use_gpu=False)
    with pytest.raises(ValueError, match="shape"):
        DenseIndex.build(docs, docids[:-1], use_gpu=False)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_save_load_round_trip(tmp_path, kind):
    docs, queries, docids = _data(n=120)
    index = DenseIndex.build(docs, docids, kind=kind, use_gpu=False)
    index.save(tmp_path / "idx")
    assert (tmp_path / "idx" / INDEX_FILE).is_file()
    assert (tmp_path / "idx" / DOCID_FILE).read_text().splitlines() == docids
    loaded = DenseIndex.load(tmp_path / "idx", use_gpu=False)
    assert loaded.docids == docids and len(loaded) == 120
    before, before_ids = index.search(queries, 8)
    after, after_ids = loaded.search(queries, 8)
    np.testing.assert_array_equal(before, after)
    assert before_ids == after_ids


def test_load_rejects_a_docid_file_that_disagrees_with_the_index(tmp_path):
    docs, _, docids = _data(n=20)
    DenseIndex.build(docs, docids, use_gpu=False).save(tmp_path)
    docid_file = tmp_path / DOCID_FILE
    lines = docid_file.read_text().splitlines()
    docid_file.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError) as err:
        DenseIndex.load(tmp_path, use_gpu=False)
    message = str(err.value)
    assert str(docid_file) in message
    assert "19 docids" in message and "20 vectors" in message


def test_load_names_a_missing_file(tmp_path):
    docs, _, docids = _data(n=20)
    DenseIndex.build(docs, docids, use_gpu=False).save(tmp_path)
    (tmp_path / DOCID_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / DOCID_FILE)):
        DenseIndex.load(tmp_path, use_gpu=False)


def test_search_run_shape():
    docs = np.eye(4, dtype=np.float32)
    docids = ["a", "b", "c", "d"]
    index = DenseIndex.build(docs, docids, use_gpu=False)
    queries = np.array([[0.0, 2.0, 1.0, 0.0], [3.0, 0.0, 0.0, 0.5]], dtype=np.float32)
    run = index.search_run(["q1", "q2"], queries, k=2)
    assert run == {"q1": {"b": 2.0, "c": 1.0}, "q2": {"a": 3.0, "d": 0.5}}
    assert all(isinstance(s, float) for hits in run.values() for s in hits.values())
    assert list(run["q1"]) == ["b", "c"]  # best first


def test_k_larger_than_the_index_is_cut():
    docs = np.eye(3, dtype=np.float32)
    index = DenseIndex.build(docs, ["a", "b", "c"], use_gpu=False)
    scores, got = index.search(np.array([[1.0, 0.5, 0.25]], dtype=np.float32), k=10)
    assert scores.shape == (1, 3)
    assert got == [["a", "b", "c"]]
    np.testing.assert_allclose(scores[0], [1.0, 0.5, 0.25])
    assert index.search_run(["q"], np.array([[0.0, 0.0, 1.0]], dtype=np.float32), k=100)["q"].keys() == {"a", "b", "c"}


def test_docid_count_must_match_vectors():
    import faiss

    flat = faiss.IndexFlatIP(4)
    flat.add(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="4 vectors but 3 docids"):
        DenseIndex(flat, ["a", "b", "c"])


# ---------------------------------------------------------------------- the auto choice under a memory budget
from dr.retrieval.index import choose_index, index_bytes  # noqa: E402


def _clustered(n=3000, dim=128, n_queries=50, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim))
    docs = _unit((centres[rng.integers(50, size=n)] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32))
    queries = _unit(
        docs[rng.integers(n, size=n_queries)] + 0.1 * rng.standard_normal((n_queries, dim)).astype(np.float32)
    )
    return docs, queries, [f"doc{i}" for i in range(n)]


def _recall(index, docs, queries, k=10):
    exact = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :k]
    _, got = index.search(queries, k)
    return np.mean([len({f"doc{j}" for j in row} & set(ids)) / k for row, ids in zip(exact, got)])


def test_auto_picks_flat_when_it_fits():
    assert choose_index(5000, 128, memory_budget_gb=1.0) == ("flat", {})
    # MS MARCO (8.8M x 384): 13.5 GB flat; under 8 GiB too big for HNSW's build, so IVF-PQ.
    assert index_bytes("flat", 8_841_823, 384) > 8 * 2**30
    assert choose_index(8_841_823, 384, memory_budget_gb=8.0)[0] == "ivfpq"
    # HNSW only for CPU search of corpora up to hnsw_max_vectors.
    assert choose_index(3000, 128, 1.3e6 / 2**30)[0] == "hnsw"
    assert choose_index(3000, 128, 1.3e6 / 2**30, hnsw_max_vectors=1000)[0] == "ivfpq"
    assert choose_index(3000, 128, 1.3e6 / 2**30, on_gpu=True)[0] == "ivfpq"


@pytest.mark.parametrize("budget_bytes, hnsw_max, expected", [(1.3e6, 1_000_000, "hnsw"), (0.38e6, 1_000_000, "ivfpq")])
def test_auto_under_a_small_budget_picks_an_approximate_index_that_still_finds_the_neighbours(
    budget_bytes, hnsw_max, expected
):
    docs, queries, docids = _clustered()
    assert index_bytes("flat", *docs.shape) > budget_bytes
    index = DenseIndex.build(
        docs,
        docids,
        kind="auto",
        use_gpu=False,
        memory_budget_gb=budget_bytes / 2**30,
        hnsw_max_vectors=hnsw_max,
        nprobe=16,
    )
    assert index.kind == expected
    pq_m = index.index.pq.M if index.kind == "ivfpq" else 48
    assert index_bytes(index.kind, *docs.shape, pq_m=pq_m, hnsw_storage="sq8") <= budget_bytes
    assert _recall(index, docs, queries) >= 0.7  # 0.80 (IVF-PQ, 32 bytes) here; a broken index gives ~0


def test_ivfpq_round_trips_through_save_and_load(tmp_path):
    docs, queries, docids = _clustered(n=2000, dim=64)
    index = DenseIndex.build(docs, docids, kind="ivfpq", pq_m=16, nprobe=8, use_gpu=False)
    index.save(tmp_path / "idx")
    loaded = DenseIndex.load(tmp_path / "idx", use_gpu=False)
    assert loaded.kind == "ivfpq" and len(loaded) == 2000
    assert loaded.search(queries, 5)[1] == index.search(queries, 5)[1]


def test_no_index_fits_a_tiny_budget():
    with pytest.raises(ValueError, match="raise index_memory_gb"):
        choose_index(1_000_000, 384, memory_budget_gb=0.001)
