"""dr-eval's retrievers for the pipeline's rows (issue #24): ``retriever=bm25``, ``retriever=fusion``
(from the model or from a saved flat index), ``embeddings_cache`` shared with dr-mine, and the
fusion teacher reading its passage vectors from a saved index instead of encoding them."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from dr.cli.evaluate import run as evaluate
from dr.data import passage_texts, read_corpus, read_qrels, read_queries, read_run
from dr.evaluation import evaluate_run
from dr.models import BiEncoder
from dr.retrieval import BM25, build_index
from dr.teachers import FusionTeacher, fusion_search


@pytest.fixture
def eval_cfg(compose_config, scifact_slice, tiny_bert):
    def _cfg(*overrides: str):
        return compose_config(
            "evaluate",
            [
                f"corpus={scifact_slice['corpus']}",
                f"queries={scifact_slice['test_queries']}",
                f"qrels={scifact_slice['test_qrels']}",
                "k=20",
                "batch_size=32",
                *overrides,
            ],
        )

    return _cfg


def _queries(data) -> dict[str, str]:
    qrels = read_qrels(data["test_qrels"])
    return {q: t for q, t in read_queries(data["test_queries"]).items() if q in qrels}


def test_bm25_retriever_needs_no_model(eval_cfg, scifact_slice, tmp_path):
    metrics = evaluate(eval_cfg("retriever=bm25"), tmp_path)
    corpus = read_corpus(scifact_slice["corpus"])
    queries = _queries(scifact_slice)
    expected = BM25(passage_texts(corpus), list(corpus["docid"])).search_run(list(queries), list(queries.values()), 20)
    assert read_run(tmp_path / "run.trec").keys() == expected.keys()
    assert metrics == pytest.approx(
        evaluate_run(expected, read_qrels(scifact_slice["test_qrels"]), ["nDCG@10", "R@100"])
    )


def test_fusion_retriever_from_the_model_and_from_its_index(eval_cfg, scifact_slice, tiny_bert, tmp_path):
    from dr.config import ConfigError

    encoder = BiEncoder.load(tiny_bert, device="cpu")
    corpus = read_corpus(scifact_slice["corpus"])
    queries = _queries(scifact_slice)
    emb = encoder.encode_passages(passage_texts(corpus), batch_size=32, show_progress=False)
    q_emb = encoder.encode_queries(list(queries.values()), batch_size=32, show_progress=False)
    bm25 = BM25(passage_texts(corpus), list(corpus["docid"]))
    expected = fusion_search(
        bm25, emb, q_emb, list(queries), list(queries.values()), depth=1000, k=20, normalization="minmax"
    )

    evaluate(eval_cfg("retriever=fusion", f"model={tiny_bert}"), tmp_path / "model")
    index_dir = tmp_path / "index"
    build_index(encoder, corpus, batch_size=32).save(index_dir)
    evaluate(eval_cfg("retriever=fusion", f"model={tiny_bert}", f"index={index_dir}"), tmp_path / "from_index")
    for folder in ("model", "from_index"):
        run = read_run(tmp_path / folder / "run.trec")
        assert list(run) == list(expected)
        for q in expected:
            assert set(run[q]) == set(expected[q])
            assert sorted(run[q].values()) == pytest.approx(sorted(expected[q].values()), abs=1e-5)
    with pytest.raises(ConfigError, match="retriever=dense_and_more: expected dense, bm25 or fusion"):
        evaluate(eval_cfg("retriever=dense_and_more"), tmp_path / "bad")


def test_embeddings_cache_is_written_once_and_read_by_dr_mine(
    eval_cfg, compose_config, scifact_slice, tiny_bert, tmp_path, caplog
):
    from dr.cli.mine import run as mine

    cache = tmp_path / "emb.npy"
    plain = evaluate(eval_cfg(f"model={tiny_bert}"), tmp_path / "plain")
    cached = evaluate(eval_cfg(f"model={tiny_bert}", f"embeddings_cache={cache}"), tmp_path / "cached")
    assert cache.is_file() and cached == pytest.approx(plain, abs=1e-6)
    written = cache.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="dr.miners.candidates"):
        again = evaluate(eval_cfg(f"model={tiny_bert}", f"embeddings_cache={cache}"), tmp_path / "again")
        mine(
            compose_config(
                "mine",
                [
                    f"model={tiny_bert}",
                    f"corpus={scifact_slice['corpus']}",
                    f"queries={scifact_slice['train_queries']}",
                    f"qrels={scifact_slice['train_qrels']}",
                    "miner=pool",
                    "top_k=10",
                    f"embeddings_cache={cache}",
                    f"output={tmp_path / 'pool.jsonl'}",
                ],
            ),
            tmp_path / "mine",
        )
    assert again == cached and cache.stat().st_mtime_ns == written
    assert sum("reusing corpus embeddings" in r.getMessage() for r in caplog.records) == 2


def test_fusion_teacher_reads_passage_vectors_from_a_saved_index(tiny_bert, scifact_slice, tmp_path):
    corpus = read_corpus(scifact_slice["corpus"])
    texts = passage_texts(corpus)
    index_dir = tmp_path / "index"
    build_index(
        BiEncoder.from_pretrained(tiny_bert, query_max_length=64, passage_max_length=128), corpus, batch_size=32
    ).save(index_dir)
    queries = list(read_queries(scifact_slice["train_queries"]).values())[:3]
    groups = [texts[:5], texts[3:9], texts[10:12]]
    encoded = FusionTeacher(corpus=scifact_slice["corpus"], model=tiny_bert).score_groups(queries, groups)
    teacher = FusionTeacher(corpus=scifact_slice["corpus"], model=tiny_bert, passage_index=str(index_dir))
    read = teacher.score_groups(queries, groups)
    for a, b in zip(read, encoded):
        assert a == pytest.approx(b, abs=1e-5)
    assert len(teacher.dense._cache) == len(set(texts))  # every passage came from the index, none was encoded
    wrong = tmp_path / "wrong"
    build_index(BiEncoder.from_pretrained(tiny_bert), corpus.select(range(10)), batch_size=32).save(wrong)
    with pytest.raises(ValueError, match="expected a flat index of exactly the corpus"):
        FusionTeacher(corpus=scifact_slice["corpus"], model=tiny_bert, passage_index=str(wrong)).score_groups(
            queries, groups
        )
    assert np.isfinite(np.concatenate(read)).all()
