"""Tests for dr.evaluate: reference TREC-DL figures, hand-computed measures, conventions, output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dr.data import read_qrels, read_queries, read_run
from dr.evaluation.evaluate import PRESETS, evaluate_run, format_table, parse_measures, per_query, write_metrics

DATA = Path(__file__).parent / "data"

# q1 ranking: d3 (grade 0), d1 (3), d5 (unjudged), d2 (1); d4 (2) and d9 (2) not retrieved.
# q2 ranking: x1, x2 (unjudged), e1 (1); e2 (2) not retrieved.
RUN = {
    "q1": {"d3": 0.9, "d1": 0.8, "d5": 0.7, "d2": 0.6},
    "q2": {"x1": 0.9, "x2": 0.8, "e1": 0.7},
}
QRELS = {
    "q1": {"d1": 3, "d2": 1, "d3": 0, "d4": 2, "d9": 2},
    "q2": {"e1": 1, "e2": 2},
}


def dcg(gains: list[int]) -> float:
    """trec_eval DCG: gain = grade, discount log2(rank + 1)."""
    return sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, 1))


def test_hand_computed_measures():
    ndcg_q1 = dcg([0, 3, 0, 1]) / dcg([3, 2, 2, 1, 0])
    ndcg_q2 = dcg([0, 0, 1]) / dcg([2, 1])
    expected = {
        "nDCG@10": (ndcg_q1 + ndcg_q2) / 2,
        "RR@10": (1 / 2 + 1 / 3) / 2,  # first grade >= 1 at rank 2 and rank 3
        "RR(rel=2)@10": (1 / 2 + 0) / 2,  # q2 has no grade >= 2 retrieved
        "R@100": (2 / 4 + 1 / 2) / 2,  # grade >= 1: q1 {d1, d2, d4, d9}, q2 {e1, e2}
        "R(rel=2)@100": (1 / 3 + 0) / 2,  # grade >= 2: q1 {d1, d4, d9}, q2 {e2}
        "P@2": (1 / 2 + 0) / 2,
    }
    got = evaluate_run(RUN, QRELS, list(expected))
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    # the same by hand: (3/log2(3) + 1/log2(5)) / (3 + 2/log2(3) + 2/log2(4) + 1/log2(5)) = 2.32347 / 5.69254
    assert (ndcg_q1, ndcg_q2) == (pytest.approx(0.408160, abs=1e-6), pytest.approx(0.190047, abs=1e-6))

    rows = per_query(RUN, QRELS, ["nDCG@10", "RR@10"])
    assert rows == {
        "q1": {"nDCG@10": pytest.approx(ndcg_q1), "RR@10": pytest.approx(0.5)},
        "q2": {"nDCG@10": pytest.approx(ndcg_q2), "RR@10": pytest.approx(1 / 3)},
    }


def test_relevance_threshold_matters():
    qrels = {"q": {"a": 1, "b": 2}}
    run = {"q": {"a": 1.0, "c": 0.5}}
    got = evaluate_run(run, qrels, ["R@10", "R(rel=2)@10", "AP", "AP(rel=2)"])
    assert got == {"R@10": 0.5, "R(rel=2)@10": 0.0, "AP": 0.5, "AP(rel=2)": 0.0}


def test_query_selection_convention(caplog):
    """Averaged over judged queries of the run: missing ones are skipped, empty rankings count 0."""
    qrels = {**QRELS, "q3": {"z": 1}}
    assert evaluate_run(RUN, qrels, ["R@100"]) == evaluate_run(RUN, QRELS, ["R@100"])
    assert "1 of 3 judged queries are missing" in caplog.text
    assert evaluate_run({**RUN, "q3": {}}, qrels, ["R@100"])["R@100"] == pytest.approx(1 / 3)
    assert evaluate_run({**RUN, "unjudged": {"d1": 1.0}}, QRELS, ["R@100"])["R@100"] == pytest.approx(0.5)
    assert math.isnan(evaluate_run({"other": {"d": 1.0}}, QRELS, ["R@100"])["R@100"])


def test_numpy_scores_accepted():
    run = {q: {d: np.float32(s) for d, s in docs.items()} for q, docs in RUN.items()}
    assert evaluate_run(run, QRELS, ["nDCG@10"]) == pytest.approx(evaluate_run(RUN, QRELS, ["nDCG@10"]))


def test_parse_measures():
    assert [str(m) for m in parse_measures(["nDCG@10", "AP(rel=2)"])] == ["nDCG@10", "AP(rel=2)"]
    with pytest.raises(ValueError, match="'Bogus@10'"):
        parse_measures(["nDCG@10", "Bogus@10"])
    with pytest.raises(ValueError, match="'nDCG@'"):
        evaluate_run(RUN, QRELS, ["nDCG@"])


@pytest.mark.parametrize("name, ndcg10", [("BM25", 0.5058), ("D_BERT_KD_TASB", 0.7210)])
def test_trec_dl_2019_reference_figures(name, ndcg10):
    """Published DL19 nDCG@10 of BM25 and TAS-B, from their run files and the official qrels."""
    qrels = read_qrels(DATA / "qrels.dl19.full.trec")
    run = read_run(DATA / f"{name}_dl19.run")
    metrics = evaluate_run(run, qrels, PRESETS["dl19"]["measures"])
    # The runs are only top-100, so AP and R@1000 are below the published (top-1000) figures.
    print(format_table({name: metrics}, title="DL19 (top-100 run files)"))
    assert abs(metrics["nDCG@10"] - ndcg10) < 5e-5
    assert 0 < metrics["AP(rel=2)"] < metrics["R(rel=2)@1000"] < 1


def test_presets():
    trec_dl = ["nDCG@10", "RR@10", "AP(rel=2)", "R(rel=2)@1000"]
    assert PRESETS["dl19"]["measures"] == PRESETS["dl20"]["measures"] == trec_dl
    assert PRESETS["scifact"]["measures"] == ["nDCG@10", "R@100"]
    for preset in PRESETS.values():
        parse_measures(preset["measures"])
    assert read_qrels(PRESETS["dl19"]["qrels"]) == read_qrels(DATA / "qrels.dl19.full.trec")
    assert len(read_queries(PRESETS["dl19"]["queries"])) == 43
    assert len(read_queries(PRESETS["scifact"]["queries"])) == 300
    assert PRESETS["dl20"]["qrels"].startswith("irds:")


def test_format_table():
    table = format_table({"bm25": {"nDCG@10": 0.50581, "R@100": 0.7}, "dense model": {"nDCG@10": 0.72}}, title="DL19")
    assert table.splitlines() == [
        "DL19",
        "             nDCG@10   R@100",
        "bm25          0.5058  0.7000",
        "dense model   0.7200       -",
    ]
    assert format_table({"nDCG@10": 0.5, "AP(rel=2)": 1 / 3}).splitlines() == [
        "nDCG@10  AP(rel=2)",
        " 0.5000     0.3333",
    ]


def test_write_metrics(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    write_metrics({"nDCG@10": np.float64(0.5), "AP(rel=2)": 0.25}, path)
    assert json.loads(path.read_text()) == {"nDCG@10": 0.5, "AP(rel=2)": 0.25}
