"""Referential checks (dr/data/checks.py): ids that qrels, negatives and teacher-score files name but the
corpus or the queries lack are counted, named and dropped (``on_missing=warn``) or refused (``error``),
in training, dr-mine, dr-score and dr-eval."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dr.cli import config_dir
from dr.cli.evaluate import _known_qrels
from dr.cli.mine import run as mine
from dr.config import ConfigError
from dr.data import (
    DataError,
    check_ids,
    passage_texts,
    read_corpus,
    read_negatives,
    read_qrels,
    read_queries,
    write_run,
)
from dr.retrieval.bm25 import BM25
from dr.training import RetrievalDataModule
from dr.validate import validate_config


def test_check_ids_counts_names_the_first_few_and_chooses(caplog):
    known = {"a", "b"}
    assert check_ids(["a", "b", "a"], known, source="f.qrels", what="docids", where="corpus.jsonl") == set()
    ids = ["a", "x1", "x2", "x1", "x3", "x4", "x5", "x6"]
    with caplog.at_level(logging.WARNING):
        assert check_ids(ids, known, source="f.qrels", what="docids", where="corpus.jsonl") == {
            f"x{i}" for i in range(1, 7)
        }
    assert (
        "f.qrels: 6 docids are not in corpus.jsonl (e.g. x1, x2, x3, x4, x5, ...); they are dropped "
        "(data.on_missing=warn)" in caplog.text
    )
    with pytest.raises(DataError) as e:
        check_ids(
            ids, known, source="f.qrels", what="docids", where="corpus.jsonl", on_missing="error", key="on_missing"
        )
    assert str(e.value) == (
        "f.qrels: expected every id to exist; 6 docids are not in corpus.jsonl (e.g. x1, x2, x3, x4, x5, ...). "
        "Set on_missing=warn to drop them"
    )
    with pytest.raises(ConfigError, match="data.on_missing=drop: expected one of warn, error"):
        check_ids(ids, known, source="f", what="docids", where="c", on_missing="drop")


@pytest.fixture
def broken(scifact_slice, tmp_path) -> dict[str, str]:
    """The slice plus a qrels file, a negatives file and a teacher file that each name a docid and a
    qid that do not exist."""
    qrels = read_qrels(scifact_slice["train_qrels"])
    qids = list(qrels)
    docids = list(read_corpus(scifact_slice["corpus"])["docid"])
    q0, q1 = qids[0], qids[1]
    d0 = next(iter(qrels[q0]))
    lines = Path(scifact_slice["train_qrels"]).read_text()
    (tmp_path / "bad.qrels").write_text(lines + f"{q1} 0 ghost-doc 1\nghost-query 0 {d0} 1\n")
    neg = [d for d in docids if d not in qrels[q0]][:3]
    (tmp_path / "neg.jsonl").write_text(
        f'{{"qid": "{q0}", "positives": ["{d0}"], "negatives": [{{"docid": "{neg[0]}", "score": 1.0}}, '
        f'{{"docid": "ghost-neg", "score": 0.5}}]}}\n'
        f'{{"qid": "ghost-query", "positives": ["{d0}"], "negatives": [{{"docid": "{neg[1]}", "score": 1.0}}]}}\n'
    )
    (tmp_path / "teacher.tsv").write_text(
        f"9.0\t1.0\t{q0}\t{d0}\t{neg[2]}\n9.0\t2.0\t{q0}\t{d0}\tghost-t\n9.0\t1.0\tghost-query\t{d0}\t{neg[2]}\n"
    )
    return {
        **scifact_slice,
        "bad_qrels": str(tmp_path / "bad.qrels"),
        "negatives": str(tmp_path / "neg.jsonl"),
        "teacher": str(tmp_path / "teacher.tsv"),
        "q0": q0,
        "q1": q1,
        "neg": neg,
    }


def _datamodule(data: dict, **kwargs) -> RetrievalDataModule:
    return RetrievalDataModule(
        data["corpus"],
        data["train_queries"],
        data["bad_qrels"],
        negatives=data["negatives"],
        teacher_scores=data["teacher"],
        num_negatives=1,
        batch_size=4,
        **kwargs,
    )


def test_training_warns_with_counts_and_drops(broken, caplog):
    dm = _datamodule(broken)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    for source, what in [
        ("bad_qrels", "qids"),
        ("bad_qrels", "judged docids"),
        ("negatives", "qids"),
        ("negatives", "docids"),
        ("teacher", "qids"),
        ("teacher", "docids"),
    ]:
        assert f"{broken[source]}: 1 {what} are not in" in caplog.text, (source, what)
    assert "ghost-doc" in caplog.text and "ghost-neg" in caplog.text and "ghost-t" in caplog.text
    ds = dm.train_dataset
    assert "ghost-query" not in ds.qids and "ghost-doc" not in ds.positives[broken["q1"]]
    assert ds.negatives[broken["q0"]][0] == broken["neg"][0] and "ghost-neg" not in ds.negatives[broken["q0"]]
    assert dm.teacher.pairs[broken["q0"]] == [
        (ds.positives[broken["q0"]][0], broken["neg"][2])
    ]  # ghost-t's pair dropped
    assert "ghost-query" not in dm.teacher.pairs


@pytest.mark.parametrize("source", ["bad_qrels", "negatives", "teacher"])
def test_training_on_missing_error_names_the_file(broken, scifact_slice, source):
    data = {**broken, **{k: v for k, v in scifact_slice.items() if k == "train_qrels"}}
    good = {"bad_qrels": scifact_slice["train_qrels"], "negatives": None, "teacher": None}
    data.update({k: v for k, v in good.items() if k != source})
    dm = RetrievalDataModule(
        data["corpus"],
        data["train_queries"],
        data["bad_qrels"],
        negatives=data["negatives"],
        teacher_scores=data["teacher"],
        num_negatives=1,
        batch_size=4,
        on_missing="error",
    )
    with pytest.raises(
        DataError, match=rf"^{broken[source]}: expected every id to exist; 1 qids are not in .*ghost-query"
    ):
        dm.setup("fit")


def _mine_cfg(overrides):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return validate_config(compose("mine", overrides=overrides))


def test_dr_mine_qrels_docid_not_in_the_corpus(broken, tmp_path, caplog):
    corpus = read_corpus(broken["corpus"])
    queries = read_queries(broken["train_queries"])
    run_path = tmp_path / "bm25.run"
    write_run(
        BM25(passage_texts(corpus), list(corpus["docid"])).search_run(list(queries), list(queries.values()), 20),
        run_path,
    )
    common = [
        f"run_file={run_path}",
        f"corpus={broken['corpus']}",
        f"queries={broken['train_queries']}",
        f"qrels={broken['bad_qrels']}",
        "miner=topk",
        "miner.num_negatives=3",
        f"output={tmp_path / 'mined.jsonl'}",
    ]
    with pytest.raises(DataError, match=r"1 qids are not in .*ghost-query.*Set on_missing=warn"):
        mine(_mine_cfg(common + ["on_missing=error"]), tmp_path)
    assert not (tmp_path / "mined.jsonl").exists()
    with caplog.at_level(logging.WARNING):
        mine(_mine_cfg(common), tmp_path)
    assert f"{broken['bad_qrels']}: 1 judged docids are not in {broken['corpus']} (e.g. ghost-doc)" in caplog.text
    records = read_negatives(tmp_path / "mined.jsonl")
    assert "ghost-doc" not in records[broken["q1"]].positives and "ghost-query" not in records
    with pytest.raises(ConfigError, match="on_missing=maybe: expected one of warn, error"):
        _mine_cfg(common + ["on_missing=maybe"])


def test_dr_eval_drops_or_refuses_unknown_judgments(broken):
    qrels = read_qrels(broken["bad_qrels"])
    queries = read_queries(broken["train_queries"])
    docids = set(read_corpus(broken["corpus"])["docid"])
    kept = _known_qrels(qrels, broken["bad_qrels"], queries, "queries", docids, "corpus", "warn")
    assert "ghost-query" not in kept and "ghost-doc" not in kept[broken["q1"]]
    assert sum(map(len, kept.values())) == sum(map(len, qrels.values())) - 2
    with pytest.raises(DataError, match="1 qids are not in queries"):
        _known_qrels(qrels, broken["bad_qrels"], queries, "queries", docids, "corpus", "error")
