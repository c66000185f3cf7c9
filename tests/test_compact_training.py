"""data.compact=true: training reads negatives and teacher files into arrays and draws the same batches."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from omegaconf import open_dict

from dr.config import ConfigError
from dr.data import read_corpus, read_qrels, read_queries, write_clusters
from dr.data.negatives import NegativesRecord, write_negatives
from dr.data.teacher_scores import write_teacher_scores
from dr.training import RetrievalDataModule
from dr.training.compact_data import FileNegatives, WithTeacherNegatives
from dr.validate import validate_config


class BatchRecorder(pl.Callback):
    """Writes every training batch's ids, texts and teacher scores to a JSON file."""

    def __init__(self, path: str):
        self.path, self.batches = Path(path), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        def listed(t):
            return t.reshape(-1).tolist() if t is not None else None

        self.batches.append(
            {
                "qids": batch["qids"],
                "queries": batch["queries"],
                "docids": batch["docids"],
                "passages": batch["passages"],
                "neg_index": batch["neg_index"].tolist(),
                "teacher_pos": listed(batch.get("teacher_pos")),
                "teacher_neg": listed(batch.get("teacher_neg")),
                "negatives_type": type(trainer.datamodule.train_dataset.negatives).__name__,
            }
        )
        self.path.write_text(json.dumps(self.batches))


def _files(data: dict, out: Path) -> tuple[Path, Path, Path]:
    """A negatives file (random candidates with positives and an unknown id among them), a teacher file
    (pairs against random documents, overlapping the candidates; extra positives outside the qrels; a few
    queries with one pair; an unknown id) and 4 TAS clusters."""
    queries, qrels = read_queries(data["train_queries"]), read_qrels(data["train_qrels"])
    docids = list(read_corpus(data["corpus"])["docid"])
    qids = [q for q in queries if q in qrels]
    rng = np.random.default_rng(7)
    records, rows = [], []
    for n, q in enumerate(qids):
        judged = sorted(qrels[q])
        others = [str(d) for d in rng.choice([d for d in docids if d not in qrels[q]], size=12, replace=False)]
        negs = others[:8] + judged[:1] + ["no-such-doc"]
        records.append(NegativesRecord(q, judged[:1], negs, [float(s) for s in rng.normal(size=len(negs))], [9.0]))
        positives = [judged[0]] + (
            [others[11]] if n % 3 == 0 else []
        )  # the teacher adds a positive to every third query
        teacher_negs = others[6:10] + (["no-such-doc"] if n % 5 == 0 else [])  # 2 shared with the negatives file
        if n % 7 == 0:
            teacher_negs = teacher_negs[:1]  # one pair: left out under min_teacher_pairs=2
        for pos in positives:
            for neg in teacher_negs:
                rows.append((float(rng.uniform(5, 10)), float(rng.uniform(0, 8)), q, pos, neg))
    write_negatives(out / "negatives.jsonl", records)
    write_teacher_scores(out / "teacher.tsv", rows)
    clusters = write_clusters(out / "clusters.txt", [qids[i::4] for i in range(4)])
    return out / "negatives.jsonl", out / "teacher.tsv", clusters


def _batches(cfg_train, out: Path, overrides: list[str]) -> list[dict]:
    from dr.training import train

    cfg = cfg_train(
        "encoder.passage_max_length=24",
        "data.val_fraction=0",
        "data.num_negatives=2",
        "test.enabled=false",
        "export.enabled=false",
        *overrides,
        out=out,
        max_steps=3,
    )
    with open_dict(cfg):
        cfg.callbacks.recorder = {"_target_": "test_compact_training.BatchRecorder", "path": str(out / "batches.json")}
    assert train(cfg)["train/global_step"] == 3
    return json.loads((out / "batches.json").read_text())


@pytest.mark.parametrize("setting", ["random", "tas_balanced"])
def test_compact_training_draws_the_same_batches(setting, cfg_train, scifact_slice, tmp_path):
    negatives, teacher, clusters = _files(scifact_slice, tmp_path)
    if setting == "random":  # negatives file + teacher file, uniform pairs
        overrides = ["sampler=random", f"data.negatives={negatives}", f"data.teacher_scores={teacher}"]
    else:  # TAS-Balanced: clusters, margin-balanced pairs, min_teacher_pairs=2, teacher negatives only
        overrides = [
            "sampler=tas_balanced",
            f"data.batch_sampler.clusters={clusters}",
            "data.negatives=null",
            f"data.teacher_scores={teacher}",
        ]
    dicts = _batches(cfg_train, tmp_path / "dicts", [*overrides, "data.compact=false"])
    compact = _batches(cfg_train, tmp_path / "compact", [*overrides, "data.compact=true"])
    assert {b["negatives_type"] for b in dicts} == {"dict"}
    assert {b["negatives_type"] for b in compact} == {"WithTeacherNegatives"}
    assert len(dicts) == len(compact) == 3
    for a, b in zip(dicts, compact):
        for key in ("qids", "queries", "docids", "passages", "neg_index"):
            assert a[key] == b[key], key
        for key in ("teacher_pos", "teacher_neg"):  # NaN: unscored; both paths hand float32 to the batch
            assert a[key] == pytest.approx(b[key], rel=1e-6, nan_ok=True), key
    scored = [v for b in compact for v in b["teacher_neg"]]
    assert any(not math.isnan(v) for v in scored)
    if setting == "random":
        assert any(math.isnan(v) for v in scored)  # negatives-file candidates the teacher never scored


def test_compact_datamodule_matches_the_dictionaries(scifact_slice, tmp_path):
    """Every query's positives, candidates, file scores and teacher pairs, compact vs dictionaries."""
    negatives, teacher, _ = _files(scifact_slice, tmp_path)
    made = {}
    for compact in (False, True):
        dm = RetrievalDataModule(
            scifact_slice["corpus"],
            scifact_slice["train_queries"],
            scifact_slice["train_qrels"],
            negatives=str(negatives),
            teacher_scores=str(teacher),
            num_negatives=2,
            batch_size=4,
            min_teacher_pairs=2,
            compact=compact,
        )
        dm.setup("fit")
        made[compact] = dm.train_dataset
    d, c = made[False], made[True]
    assert isinstance(c.negatives, WithTeacherNegatives) and isinstance(c.negatives.base, FileNegatives)
    assert c.qids == d.qids and len(d.qids) < 64  # min_teacher_pairs left queries out
    assert c.positives == d.positives
    assert any(
        len(d.positives[q]) > len(read_qrels(scifact_slice["train_qrels"])[q]) for q in d.qids
    )  # teacher positives
    assert set(c.negatives) == set(d.negatives) and all(c.negatives[q] == d.negatives[q] for q in d.negatives)
    assert all(c.scores[q] == pytest.approx(d.scores[q]) for q in d.scores) and set(c.scores) == set(d.scores)
    for q in d.qids:
        assert c.teacher.pairs[q] == d.teacher.pairs[q]
        assert all(
            c.teacher.score(q, x) == pytest.approx(d.teacher.score(q, x), rel=1e-6, nan_ok=True) for x in d.negatives[q]
        )
    assert not any("no-such-doc" in c.negatives[q] for q in c.negatives)
    copy = pickle.loads(pickle.dumps(c))  # DataLoader workers started by spawn get a pickled copy
    assert (
        all(copy.negatives[q] == d.negatives[q] for q in d.qids)
        and copy.teacher.pairs[d.qids[0]] == d.teacher.pairs[d.qids[0]]
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data.teacher_from_negatives=true"],
            "data.compact=true, data.teacher_from_negatives=true: expected data.compact=false",
        ),
        (
            ["data.teacher_pair_filter=true"],
            "data.compact=true, data.teacher_pair_filter=true: expected data.compact=false",
        ),
        (
            ["data.teacher_scores=[a.tsv,b.tsv]"],
            "data.compact=true, data.teacher_scores=['a.tsv', 'b.tsv']: expected one teacher-score file",
        ),
        (["data.compact=maybe"], None),
    ],
)
def test_compact_refuses_what_it_does_not_support(overrides, message, cfg_train):
    cfg = cfg_train("data.compact=true", *overrides)
    with pytest.raises(ConfigError, match=message and message.replace("[", r"\[").replace("]", r"\]")) as raised:
        validate_config(cfg)
    assert "\n" not in str(raised.value)
    validate_config(cfg_train("data.compact=false", *overrides)) if message else None


def test_compact_datamodule_refuses_at_setup(scifact_slice, tmp_path):
    _, teacher, _ = _files(scifact_slice, tmp_path)
    dm = RetrievalDataModule(
        scifact_slice["corpus"],
        scifact_slice["train_queries"],
        scifact_slice["train_qrels"],
        negatives=None,
        teacher_scores=[str(teacher), str(teacher)],
        compact=True,
    )
    with pytest.raises(ConfigError, match="expected one teacher-score file"):
        dm.setup("fit")
