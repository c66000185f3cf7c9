"""Teachers: score fusion on hand-made scores, BM25 of text pairs, and the in-batch teachers' shapes
and values against direct model calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from dr.retrieval.bm25 import BM25
from dr.data import passage_texts, read_corpus, read_queries
from dr.teachers.fusion import fuse, normalize_scores
from dr.teachers import BiEncoderTeacher, ColBERTTeacher, CrossEncoderTeacher, FusionTeacher


def test_normalize_minmax_and_zscore_by_hand():
    s = np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    assert normalize_scores(s, "minmax").tolist() == [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]
    z = normalize_scores(np.array([1.0, 3.0, 2.0]), "zscore")
    std = np.sqrt(2 / 3)
    assert z == pytest.approx([-1 / std, 1 / std, 0.0])
    masked = normalize_scores(np.array([1.0, 3.0, 100.0]), "minmax", mask=np.array([True, True, False]))
    assert masked[:2].tolist() == [0.0, 1.0] and np.isnan(masked[2])
    with pytest.raises(ValueError, match="normalization"):
        normalize_scores(s, "rank")


def test_fuse_is_the_weighted_sum_of_normalised_scores():
    bm25 = np.array([[10.0, 0.0, 5.0]])
    dense = np.array([[0.2, 0.6, 0.4]])
    # minmax: bm25 -> (1, 0, 0.5), dense -> (0, 1, 0.5)
    assert fuse([bm25, dense], [0.5, 0.5])[0] == pytest.approx([0.5, 0.5, 0.5])
    assert fuse([bm25, dense], [0.8, 0.2])[0] == pytest.approx([0.8, 0.2, 0.5])


@pytest.fixture(scope="module")
def corpus_texts(scifact_slice):
    corpus = read_corpus(scifact_slice["corpus"])
    return list(corpus["docid"]), passage_texts(corpus)


def test_bm25_score_texts_matches_bm25s(corpus_texts, scifact_slice):
    docids, texts = corpus_texts
    queries = list(read_queries(scifact_slice["train_queries"]).values())[:5]
    index = BM25(texts, docids)
    rows, scores = index.search(queries, 10)
    mine = index.score_texts(queries, texts)
    for i in range(len(queries)):
        assert mine[i, rows[i]] == pytest.approx(scores[i], rel=1e-4)
    assert index.score_texts(["zzzunknownword"], texts[:3]).tolist() == [[0.0, 0.0, 0.0]]
    for i, query in enumerate(queries):  # BM25.corpus_scores: the same scores for every corpus row
        assert index.corpus_scores(query)[rows[i]] == pytest.approx(scores[i], rel=1e-6)
        assert index.corpus_scores(query) == pytest.approx(mine[i], rel=1e-4, abs=1e-6)
    assert not index.corpus_scores("zzzunknownword").any()


def test_fusion_search_over_the_whole_corpus_ranks_by_fused_scores(corpus_texts, scifact_slice):
    from dr.teachers.fusion import fusion_search

    docids, texts = corpus_texts
    queries = list(read_queries(scifact_slice["train_queries"]).values())[:3]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(texts), 8)).astype(np.float32)
    q_emb = rng.normal(size=(len(queries), 8)).astype(np.float32)
    index = BM25(texts, docids)
    run = fusion_search(index, emb, q_emb, ["a", "b", "c"], queries, depth=len(texts), k=5, normalization="minmax")
    for i, qid in enumerate(["a", "b", "c"]):
        fused = fuse([index.corpus_scores(queries[i]), emb @ q_emb[i]], [0.5, 0.5], "minmax")
        top = np.argsort(-fused, kind="stable")[:5]
        assert list(run[qid]) == [docids[j] for j in top]
        assert list(run[qid].values()) == pytest.approx(fused[top].tolist(), abs=1e-6)


def test_fusion_teacher_equals_fusion_of_its_parts(tiny_bert, scifact_slice, corpus_texts):
    _, texts = corpus_texts
    queries = list(read_queries(scifact_slice["train_queries"]).values())[:3]
    passages = texts[:6]
    teacher = FusionTeacher(
        corpus=scifact_slice["corpus"], model=tiny_bert, bm25_weight=0.3, dense_weight=0.7, normalization="zscore"
    )
    matrix = teacher(queries, passages).numpy()
    assert matrix.shape == (3, 6)
    bm25 = BM25(texts).score_texts(queries, passages)
    dense = BiEncoderTeacher(tiny_bert).scores(queries, passages)
    expected = 0.3 * normalize_scores(bm25, "zscore") + 0.7 * normalize_scores(dense, "zscore")
    assert matrix == pytest.approx(expected, abs=1e-5)
    groups = teacher.score_groups(queries[:2], [passages[:4], passages[2:5]])
    dense = BiEncoderTeacher(tiny_bert).scores(queries[:2], passages)
    assert groups[0] == pytest.approx(fuse([bm25[0, :4], dense[0, :4]], [0.3, 0.7], "zscore"), abs=1e-5)
    assert groups[1] == pytest.approx(fuse([bm25[1, 2:5], dense[1, 2:5]], [0.3, 0.7], "zscore"), abs=1e-5)


def test_biencoder_teacher_is_frozen_q_dot_d(tiny_bert):
    from dr.models.encoder import BiEncoder

    teacher = BiEncoderTeacher(tiny_bert, query_max_length=16, passage_max_length=32)
    q, p = ["a query", "another query"], ["passage one", "passage two here", "three"]
    out = teacher(q, p)
    enc = BiEncoder.from_pretrained(tiny_bert, query_max_length=16, passage_max_length=32)
    expected = enc.encode_queries(q, show_progress=False) @ enc.encode_passages(p, show_progress=False).T
    assert out.shape == (2, 3) and out.numpy() == pytest.approx(expected, abs=1e-5)
    assert list(teacher.state_dict()) == []  # nothing of the teacher goes into a checkpoint


def test_cross_encoder_teacher_scores_every_pair(tiny_cross_encoder):
    teacher = CrossEncoderTeacher(tiny_cross_encoder, max_length=64, batch_size=3)
    q, p = ["what causes x", "is y true"], ["x is caused by z", "y", "an unrelated passage about cells"]
    out = teacher(q, p)
    model = BertForSequenceClassification.from_pretrained(tiny_cross_encoder).eval()
    tok = AutoTokenizer.from_pretrained(tiny_cross_encoder)
    with torch.no_grad():
        direct = [
            [model(**tok(a, b, return_tensors="pt", truncation=True, max_length=64)).logits[0, 0].item() for b in p]
            for a in q
        ]
    assert out.shape == (2, 3) and out.numpy() == pytest.approx(np.array(direct), abs=1e-4)


def test_colbert_teacher_maxsim_by_hand(tiny_bert):
    teacher = ColBERTTeacher(tiny_bert, query_max_length=16, passage_max_length=16)
    q, p = ["short query", "a somewhat longer query here"], ["one passage", "a second, longer passage text"]
    out = teacher(q, p)
    for i, query in enumerate(q):
        qe, _ = teacher.token_embeddings([query], 16)  # unpadded: every token is real
        for j, passage in enumerate(p):
            de, _ = teacher.token_embeddings([passage], 16)
            expected = (qe[0] @ de[0].T).max(dim=1).values.sum().item()
            assert out[i, j].item() == pytest.approx(expected, abs=1e-4)


def _teachers(tiny_bert, tiny_cross_encoder, corpus):
    """A fresh instance of every in-batch teacher (fresh: the bi-encoder caches passage embeddings)."""
    return {
        "biencoder": BiEncoderTeacher(tiny_bert, query_max_length=16, passage_max_length=32),
        "cross_encoder": CrossEncoderTeacher(tiny_cross_encoder, max_length=64),
        "colbert": ColBERTTeacher(tiny_bert, query_max_length=16, passage_max_length=32),
        "fusion": FusionTeacher(corpus=corpus, model=tiny_bert, query_max_length=16, passage_max_length=32),
    }


def test_inbatch_teachers_ignore_the_training_steps_bf16_autocast(
    tiny_bert, tiny_cross_encoder, scifact_slice, corpus_texts
):
    """Issue 23 item 1: the training step runs under autocast (``trainer.precision=bf16-mixed``);
    the teacher matrix must still be the fp32 one unless the teacher itself asks for bf16."""
    _, texts = corpus_texts
    queries = list(read_queries(scifact_slice["train_queries"]).values())[:3]
    passages = texts[:5]
    fp32 = {
        name: t(queries, passages)
        for name, t in _teachers(tiny_bert, tiny_cross_encoder, scifact_slice["corpus"]).items()
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = {
            name: t(queries, passages)
            for name, t in _teachers(tiny_bert, tiny_cross_encoder, scifact_slice["corpus"]).items()
        }
    errors = {name: float((mixed[name] - fp32[name]).abs().max()) for name in fp32}
    assert all(e <= 1e-6 for e in errors.values()), errors
    # a teacher asked for bf16 still gets it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = ColBERTTeacher(tiny_bert, query_max_length=16, passage_max_length=32, bf16=True)(queries, passages)
    assert float((bf16 - fp32["colbert"]).abs().max()) > 1e-6
