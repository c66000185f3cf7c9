"""Quantised embeddings for search (dr/retrieval/quantized.py) on real FAISS, checked against
sentence-transformers' own quantize_embeddings and semantic_search_faiss, then through the real
dr-encode and dr-search console scripts on the SciFact slice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings, semantic_search_faiss

from dr.data import DataError, read_run
from dr.retrieval.quantized import QuantizedIndex, calibration_ranges

DR = Path(sys.executable).parent


def _data(n=2000, dim=64, queries=50, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:queries] + 0.5 * rng.standard_normal((queries, dim)).astype(np.float32)
    return x, q / np.linalg.norm(q, axis=1, keepdims=True), [f"d{i}" for i in range(n)]


def test_int8_codes_are_sentence_transformers_codes():
    x, _, ids = _data()
    ranges = calibration_ranges(x)
    np.testing.assert_array_equal(ranges, np.stack([x.min(0), x.max(0)]))
    index = QuantizedIndex.build(x, ids, "int8")
    codes = faiss.vector_to_array(index.index.codes).reshape(len(x), -1).astype(int) - 128  # what the index stores
    np.testing.assert_array_equal(codes, quantize_embeddings(x, "int8", ranges=ranges).astype(int))
    # calibration from chunks (shards) gives the same ranges
    np.testing.assert_array_equal(calibration_ranges([x[:700], x[700:]]), ranges)


def test_int8_scores_the_float_query_against_dequantised_passages():
    """FAISS de-quantises to start + (code + 0.5)·step: sentence-transformers' rescoring score
    (start + code·step) plus q·(step/2), a constant per query, so the ranking is the same."""
    x, q, ids = _data()
    ranges = calibration_ranges(x)
    step = (ranges[1] - ranges[0]) / 255
    codes = quantize_embeddings(x, "int8", ranges=ranges).astype(np.float64) + 128
    expected = q @ (ranges[0] + (codes + 0.5) * step).T
    scores, docids = QuantizedIndex.build(x, ids, "int8").search(q, 10)
    for i in range(len(q)):
        rows = [int(d[1:]) for d in docids[i]]
        np.testing.assert_allclose(scores[i], expected[i, rows], rtol=1e-4, atol=1e-4)
        assert rows == list(np.argsort(-expected[i], kind="stable")[:10]) or np.allclose(
            np.sort(expected[i])[::-1][:10], expected[i, rows], atol=1e-5
        )  # ties aside, the exact top 10
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    overlap = np.mean([len({int(d[1:]) for d in row} & set(t)) / 10 for row, t in zip(docids, truth)])
    assert overlap >= 0.95  # printed 0.986 on these vectors


def test_binary_rescoring_is_sentence_transformers_semantic_search_faiss():
    x, q, ids = _data()
    index = QuantizedIndex.build(x, ids, "binary", rescore="binary")
    np.testing.assert_array_equal(index.index.reconstruct_n(0, len(x)), quantize_embeddings(x, "ubinary"))
    scores, docids = index.search(q, 10, rescore_multiplier=2)
    results, _ = semantic_search_faiss(
        q,
        corpus_embeddings=quantize_embeddings(x, "ubinary"),
        corpus_precision="ubinary",
        top_k=10,
        rescore=True,
        rescore_multiplier=2,
        exact=True,
    )
    for i, hits in enumerate(results):
        assert [f"d{h['corpus_id']}" for h in hits] == docids[i]
        np.testing.assert_allclose([h["score"] for h in hits], scores[i], rtol=1e-5)


def test_binary_with_int8_rescoring_and_without():
    x, q, ids = _data()
    with_int8 = QuantizedIndex.build(x, ids, "binary", rescore="int8")
    hamming = faiss.IndexBinaryFlat(64)
    hamming.add(quantize_embeddings(x, "ubinary"))
    dist, rows = hamming.search(quantize_embeddings(q, "ubinary"), 40)
    ranges = calibration_ranges(x)
    step = (ranges[1] - ranges[0]) / 255
    deq = ranges[0] + (quantize_embeddings(x, "int8", ranges=ranges).astype(np.float64) + 128.5) * step
    scores, docids = with_int8.search(q, 10, rescore_multiplier=4)
    for i in range(len(q)):
        shortlist = q[i] @ deq[rows[i]].T
        best = rows[i][np.argsort(-shortlist, kind="stable")[:10]]
        assert [f"d{r}" for r in best] == docids[i]
    plain_scores, plain = QuantizedIndex.build(x, ids, "binary", rescore="none").search(q, 10)
    np.testing.assert_array_equal(plain_scores, 64 - 2 * dist[:, :10])  # the sign vectors' dot product
    assert with_int8.nbytes == 2000 * (8 + 64) and QuantizedIndex.build(x, ids, "binary").nbytes == 2000 * 8


@pytest.mark.parametrize("precision,rescore", [("int8", "none"), ("binary", "binary"), ("binary", "int8")])
def test_save_and_load_round_trip(precision, rescore, tmp_path):
    x, q, ids = _data(n=300)
    index = QuantizedIndex.build(x, ids, precision, rescore=rescore)
    index.save(tmp_path / "idx")
    loaded = QuantizedIndex.load(tmp_path / "idx")
    assert (loaded.precision, loaded.rescore, len(loaded)) == (precision, index.rescore, 300)
    s1, d1 = index.search(q, 5)
    s2, d2 = loaded.search(q, 5)
    assert d1 == d2 and np.array_equal(s1, s2)
    (tmp_path / "idx" / "docid").write_text("".join(f"d{i}\n" for i in range(299)))
    with pytest.raises(DataError, match="299 docids but the index holds 300 vectors"):
        QuantizedIndex.load(tmp_path / "idx")


def _cli(app: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(DR / app), *overrides], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_dr_encode_and_dr_search_with_each_precision(tiny_bert, scifact_slice, tmp_path):
    common = [f"model={tiny_bert}", "encoder.pooling=cls", "encoder.normalize=true", "encoder.passage_max_length=48"]
    queries = f"queries={scifact_slice['test_queries']}"
    for precision in ("float32", "binary"):
        done = _cli(
            "dr-encode",
            *common,
            f"corpus={scifact_slice['corpus']}",
            f"output={tmp_path / precision}",
            f"embedding_precision={precision}",
            "rescore_precision=int8",
            f"hydra.run.dir={tmp_path / 'e' / precision}",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "binary" / "quantization.json").read_text()) == {
        "precision": "binary",
        "rescore": "int8",
        "dim": 32,
    }
    runs = {}
    for name, index, extra in (
        ("float32", "float32", []),
        ("int8", "float32", ["embedding_precision=int8"]),
        ("binary", "binary", []),
    ):
        done = _cli(
            "dr-search",
            *common,
            f"index={tmp_path / index}",
            queries,
            "k=20",
            *extra,
            f"output={tmp_path / name}.run",
            f"hydra.run.dir={tmp_path / 's' / name}",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        runs[name] = read_run(tmp_path / f"{name}.run")
    assert set(runs["int8"]) == set(runs["float32"]) == set(runs["binary"]) and all(
        len(r) == 20 for r in runs["binary"].values()
    )
    # int8 scores are the float cosines up to the buckets' error (the tiny random model's cosines all
    # lie near 1, so its rankings are not compared)
    gaps = [
        abs(runs["int8"][q][d] - s)
        for q in runs["float32"]
        for d, s in runs["float32"][q].items()
        if d in runs["int8"][q]
    ]
    assert gaps and max(gaps) < 0.01
    # the binary index: 1 bit a dimension, beside its int8 copy for rescoring (1 byte a dimension)
    n = sum(1 for _ in open(scifact_slice["corpus"]))
    assert (tmp_path / "float32" / "index").stat().st_size >= n * 32 * 4
    assert (tmp_path / "binary" / "index").stat().st_size < n * 32 / 8 + 1024
    assert (tmp_path / "binary" / "rescore").stat().st_size < n * 32 + 1024

    # bad combinations: one line, exit 2
    done = _cli("dr-search", *common, f"index={tmp_path / 'binary'}", queries, "embedding_precision=int8", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("dr-search: error: embedding_precision=int8: ")
    done = _cli(
        "dr-encode",
        *common,
        f"corpus={scifact_slice['corpus']}",
        "embedding_precision=binary",
        "index_kind=hnsw",
        cwd=tmp_path,
    )
    assert (
        done.returncode == 2
        and "dr-encode: error: embedding_precision=binary, index_kind=hnsw: expected index_kind=flat" in done.stderr
    )


def test_bad_precision_is_refused(compose_config):
    from dr.config import ConfigError
    from dr.validate import validate_config

    with pytest.raises(ConfigError, match="embedding_precision=int4: expected one of"):
        validate_config(compose_config("encode", ["embedding_precision=int4"]))
    with pytest.raises(ConfigError, match="rescore_multiplier=0: expected a positive integer"):
        validate_config(compose_config("search", ["rescore_multiplier=0"]))
