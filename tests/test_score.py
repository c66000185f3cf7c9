"""Teacher-score files and dr-score: round trip, bad lines, scores equal direct model calls,
an interrupted run resumes without losing or duplicating a line."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer, BertForSequenceClassification

from dr.cli import config_dir
from dr.data import passage_texts, read_corpus, read_qrels, read_queries
from dr.data.io import DataError
from dr.data.negatives import NegativesRecord, read_negatives, write_negatives
from dr.cli.score import run as score
from dr.teachers.scoring import pairs_from_negatives, pairs_from_triples, score_to_file
from dr.data.teacher_scores import read_teacher_scores, write_teacher_scores
from dr.teachers import CrossEncoderTeacher, FusionTeacher

ROWS = [(12.5, 3.25, "q1", "d1", "d7"), (12.5, -1.0, "q1", "d1", "d9"), (0.125, 0.5, "q2", "d3", "d4")]


@pytest.mark.parametrize("name", ["t.tsv", "t.tsv.gz"])
def test_teacher_file_round_trip(tmp_path, name):
    path = tmp_path / name
    assert write_teacher_scores(path, ROWS) == 3
    if name.endswith(".gz"):
        assert gzip.open(path, "rt").readline().startswith("12.5\t3.25\tq1")
    t = read_teacher_scores(path)
    assert len(t) == 3 and t.pairs["q1"] == [("d1", "d7"), ("d1", "d9")]
    assert t.score("q1", "d9") == -1.0 and t.score("q2", "d4") == 0.5 and np.isnan(t.score("q2", "d1"))


@pytest.mark.parametrize(
    "line,what",
    [
        ("1.0\t2.0\tq1\td1\n", "found 4 fields"),
        ("high\t2.0\tq1\td1\td2\n", "not numbers"),
        ("1.0\tnan\tq1\td1\td2\n", "non-finite"),
        ("1.0\t2.0\tq1\t\td2\n", "empty id"),
    ],
)
def test_malformed_teacher_line_names_file_and_line(tmp_path, line, what):
    path = tmp_path / "bad.tsv"
    path.write_text("1.0\t0.5\tq0\td0\td1\n" + line)
    with pytest.raises(DataError, match=what) as err:
        read_teacher_scores(path)
    assert err.value.line == 2 and str(path) in str(err.value)


def test_triples_file_reading_and_errors(tmp_path):
    path = tmp_path / "triples.tsv"
    path.write_text("q1\td1\td7\nq2\td3\td4\nq1\td1\td9\nq1\td1\td7\n")
    groups = pairs_from_triples(str(path))
    assert [(g.qid, g.pairs) for g in groups] == [("q1", [("d1", "d7"), ("d1", "d9")]), ("q2", [("d3", "d4")])]
    assert groups[0].docids == ["d1", "d7", "d9"]
    path.write_text("q1\td1\td7\nq2 d3 d4\n")
    with pytest.raises(DataError, match="line 2.*expected 3 tab-separated fields"):
        pairs_from_triples(str(path))


# ------------------------------------------------------------------ dr-score with a real cross-encoder
@pytest.fixture(scope="module")
def negatives_file(scifact_slice, tmp_path_factory):
    """6 train queries, their positives and 3 other judged documents as negatives."""
    qrels = read_qrels(scifact_slice["train_qrels"])
    qids = sorted(qrels)[:6]
    others = sorted({d for q in sorted(qrels)[6:] for d in qrels[q]})
    records = [NegativesRecord(q, sorted(qrels[q]), others[3 * i : 3 * i + 3], [None] * 3) for i, q in enumerate(qids)]
    path = tmp_path_factory.mktemp("neg") / "negatives.jsonl"
    write_negatives(path, records)
    return str(path)


def _score_cfg(overrides):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("score", overrides=overrides)


def _direct(model_dir, query, passage, max_length):
    model = BertForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        return (
            model(**tok(query, passage, return_tensors="pt", truncation=True, max_length=max_length))
            .logits[0, 0]
            .item()
        )


def test_dr_score_writes_the_models_scores(tiny_cross_encoder, scifact_slice, negatives_file, tmp_path):
    out = tmp_path / "teacher.tsv"
    cfg = _score_cfg(
        [
            f"negatives={negatives_file}",
            f"corpus={scifact_slice['corpus']}",
            f"queries={scifact_slice['train_queries']}",
            f"teacher.model={tiny_cross_encoder}",
            "teacher.max_length=64",
            "teacher.batch_size=4",
            f"output={out}",
            f"negatives_output={tmp_path / 'scored.jsonl'}",
            "chunk_size=4",
            "show_progress=false",
        ]
    )
    assert score(cfg, tmp_path) == out
    teacher = read_teacher_scores(out)
    records = read_negatives(negatives_file)
    assert len(teacher) == sum(len(r.positives) * len(r.negatives) for r in records.values())
    corpus = read_corpus(scifact_slice["corpus"])
    row_of = {d: i for i, d in enumerate(corpus["docid"])}
    queries = read_queries(scifact_slice["train_queries"])
    for qid, pairs in list(teacher.pairs.items())[:3]:
        for docid in {pairs[0][0], pairs[0][1]}:
            text = passage_texts(corpus, [row_of[docid]])[0]
            assert teacher.score(qid, docid) == pytest.approx(
                _direct(tiny_cross_encoder, queries[qid], text, 64), abs=1e-4
            )
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.progress.json"))
    scored = read_negatives(tmp_path / "scored.jsonl")
    for qid, r in scored.items():
        assert r.negative_scores == pytest.approx([teacher.score(qid, d) for d in r.negatives])
        assert r.positive_scores == pytest.approx([teacher.score(qid, d) for d in r.positives])


class Interrupt(Exception):
    pass


def test_interrupted_scoring_resumes_without_duplicates(tiny_cross_encoder, scifact_slice, negatives_file, tmp_path):
    groups = pairs_from_negatives(negatives_file)
    corpus = read_corpus(scifact_slice["corpus"])
    texts = dict(zip(corpus["docid"], passage_texts(corpus)))
    queries = read_queries(scifact_slice["train_queries"])
    teacher = CrossEncoderTeacher(tiny_cross_encoder, max_length=64, batch_size=8)
    run = dict(
        teacher=teacher,
        groups=groups,
        query_text=queries.__getitem__,
        passage_text=texts.__getitem__,
        chunk_size=2,
        fingerprint="same inputs",
        show_progress=False,
    )

    reference = tmp_path / "reference.tsv"
    score_to_file(output=reference, **run)

    def stop_after_two_chunks(done, lines):
        if done >= 4:
            raise Interrupt

    out = tmp_path / "resumed.tsv"
    with pytest.raises(Interrupt):
        score_to_file(output=out, on_chunk=stop_after_two_chunks, **run)
    assert not out.exists()
    progress = json.loads((tmp_path / "resumed.tsv.progress.json").read_text())
    assert progress["queries_done"] == 4
    # A kill in the middle of the next chunk's write leaves a half-written line behind.
    with open(tmp_path / "resumed.tsv.partial", "a") as f:
        f.write("0.123\t0.4")

    seen = []
    n = score_to_file(output=out, on_chunk=lambda done, lines: seen.append(done), **run)
    assert seen == [6]  # only the last chunk was scored again
    assert out.read_text() == reference.read_text()
    assert n == len(out.read_text().splitlines()) == sum(len(g.pairs) for g in groups)
    assert not (tmp_path / "resumed.tsv.partial").exists() and not (tmp_path / "resumed.tsv.progress.json").exists()

    # Changed inputs (another fingerprint): the stale partial file is not reused.
    with pytest.raises(Interrupt):
        score_to_file(output=tmp_path / "other.tsv", on_chunk=stop_after_two_chunks, **run)
    seen.clear()
    score_to_file(
        output=tmp_path / "other.tsv.gz",
        on_chunk=lambda done, lines: seen.append(done),
        **{**run, "fingerprint": "other"},
    )
    assert seen == [2, 4, 6]
    assert gzip.open(tmp_path / "other.tsv.gz", "rt").read() == reference.read_text()


def test_dr_score_fusion_teacher_on_triples(tiny_bert, scifact_slice, negatives_file, tmp_path):
    records = read_negatives(negatives_file)
    triples = tmp_path / "triples.tsv"
    triples.write_text("".join(f"{q}\t{r.positives[0]}\t{n}\n" for q, r in records.items() for n in r.negatives))
    out = tmp_path / "fusion.tsv"
    cfg = _score_cfg(
        [
            "teacher=fusion",
            f"triples={triples}",
            f"corpus={scifact_slice['corpus']}",
            f"queries={scifact_slice['train_queries']}",
            f"teacher.model={tiny_bert}",
            f"output={out}",
            "show_progress=false",
        ]
    )
    score(cfg, tmp_path)
    teacher = read_teacher_scores(out)
    assert len(teacher) == sum(len(r.negatives) for r in records.values())
    corpus = read_corpus(scifact_slice["corpus"])
    texts = dict(zip(corpus["docid"], passage_texts(corpus)))
    queries = read_queries(scifact_slice["train_queries"])
    direct = FusionTeacher(corpus=scifact_slice["corpus"], model=tiny_bert)
    for qid, r in records.items():  # normalised over the query's candidates: its positive and 3 negatives
        cands = [r.positives[0], *r.negatives]
        expected = direct.score_groups([queries[qid]], [[texts[d] for d in cands]])[0]
        assert [teacher.score(qid, d) for d in cands] == pytest.approx(expected, abs=1e-6)
        assert all(0.0 <= v <= 1.0 for v in expected)


def test_dr_score_rejects_unknown_ids(tiny_cross_encoder, scifact_slice, tmp_path):
    triples = tmp_path / "triples.tsv"
    triples.write_text("nosuchquery\tx\ty\n")
    cfg = _score_cfg(
        [
            f"triples={triples}",
            f"corpus={scifact_slice['corpus']}",
            f"queries={scifact_slice['train_queries']}",
            f"teacher.model={tiny_cross_encoder}",
            "on_missing=error",
        ]
    )
    with pytest.raises(ValueError, match=f"{triples}: expected every id to exist; 1 qids are not in .*nosuchquery"):
        score(cfg, tmp_path)
    with pytest.raises(ValueError, match="exactly one input"):
        score(_score_cfg([]), tmp_path)
