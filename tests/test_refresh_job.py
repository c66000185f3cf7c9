"""The refresh job (dr/refresh/job.py) run directly on the live tiny encoder: the miners that need
teacher scores, the teacher's corpus statistics and the teacher scores it writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl

from dr.data import read_qrels, read_queries
from dr.data.negatives import read_negatives
from dr.refresh.job import RefreshJob, RefreshSetup, run_job


def _setup(data: dict, miner: dict, teacher: dict | None, n_queries: int = 6, **kwargs) -> RefreshSetup:
    qrels = read_qrels(data["train_qrels"])
    queries = read_queries(data["train_queries"])
    qids = sorted(q for q in qrels if q in queries)[:n_queries]
    return RefreshSetup(
        corpus=data["corpus"],
        qids=qids,
        queries={q: queries[q] for q in qids},
        positives={q: sorted(qrels[q]) for q in qids},
        miner=miner,
        top_k=20,
        teacher=teacher,
        **kwargs,
    )


def _run(setup: RefreshSetup, encoder, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    manifest = run_job(setup, RefreshJob(version=1, snapshot_step=0, version_dir=str(out)), encoder=encoder)
    return manifest


@pytest.fixture(scope="module")
def encoder(tiny_bert):
    from dr.models import BiEncoder

    return BiEncoder.from_pretrained(tiny_bert, query_max_length=16, passage_max_length=32).eval()


def test_a_denoise_refresh_scores_its_candidates_with_the_refresh_teacher(
    encoder, tiny_cross_encoder, scifact_slice, tmp_path
):
    """Issue 23 item 8: the refresh candidates carry no teacher scores; with refresh.teacher set the
    job scores them before mining, so RocketQA's filter runs instead of failing every refresh."""
    miner = {"_target_": "dr.miners.DenoiseMiner", "num_negatives": 4, "threshold": 0.9, "sampling": "top"}
    teacher = {"_target_": "dr.teachers.CrossEncoderTeacher", "model": tiny_cross_encoder, "max_length": 48}
    manifest = _run(_setup(scifact_slice, miner, teacher), encoder, tmp_path / "v1")
    records = read_negatives(tmp_path / "v1" / "negatives.jsonl")
    assert manifest["queries"] == 6 and all(len(r.negatives) == 4 for r in records.values())


def _other_corpus(data: dict, out: Path) -> str:
    """The slice's documents cut to their first 25 words, without titles: not SciFact's statistics
    (document frequencies, average length)."""
    import json

    path = out / "corpus.jsonl"
    with open(data["corpus"]) as src, open(path, "w") as dst:
        for line in src:
            doc = json.loads(line)
            dst.write(json.dumps({"_id": doc["_id"], "title": "", "text": " ".join(doc["text"].split()[:25])}) + "\n")
    return str(path)


def test_the_refresh_fusion_teacher_uses_the_runs_corpus(encoder, tiny_bert, scifact_slice, tmp_path, compose_config):
    """Issue 23 item 3: conf/teacher/fusion.yaml names scifact:corpus; the refresh job must give the
    teacher the run's corpus (as dr-score and dr-mine do), so its BM25 uses that corpus's statistics."""
    from omegaconf import OmegaConf

    from dr.cli.score import run as score
    from dr.data import read_teacher_scores

    corpus = _other_corpus(scifact_slice, tmp_path)
    cfg = compose_config(
        "train",
        [
            "refresh=async",
            "miner@refresh.miner=topk",
            "+teacher@refresh.teacher=fusion",
            f"refresh.teacher.model={tiny_bert}",
            "refresh.teacher.query_max_length=16",
            "refresh.teacher.passage_max_length=32",
        ],
    )
    assert cfg.refresh.teacher.corpus == "scifact:corpus"  # what the shipped teacher config says
    miner = {"_target_": "dr.miners.TopKMiner", "num_negatives": 4}
    setup = _setup({**scifact_slice, "corpus": corpus}, miner, OmegaConf.to_container(cfg.refresh.teacher))
    _run(setup, encoder, tmp_path / "v1")
    refreshed = read_negatives(tmp_path / "v1" / "negatives.jsonl")

    score_cfg = compose_config(
        "score",
        [
            "teacher=fusion",
            f"teacher.model={tiny_bert}",
            "teacher.query_max_length=16",
            "teacher.passage_max_length=32",
            f"negatives={tmp_path / 'v1' / 'negatives.jsonl'}",
            f"corpus={corpus}",
            f"queries={scifact_slice['train_queries']}",
            f"output={tmp_path / 'teacher.tsv'}",
            "show_progress=false",
        ],
    )
    expected = read_teacher_scores(score(score_cfg, tmp_path)).scores
    gaps = [
        abs(s - expected[r.qid][d])
        for r in refreshed.values()
        for d, s in zip([*r.positives, *r.negatives], [*r.positive_scores, *r.negative_scores])
    ]
    assert len(gaps) == sum(len(r.positives) + len(r.negatives) for r in refreshed.values()) > 0
    assert max(gaps) < 1e-5, f"max gap {max(gaps):.4f} over {len(gaps)} pairs"


def test_refresh_teacher_keeps_the_kd_lists_full_and_the_students_scores_in_the_file(
    encoder, tiny_bert, scifact_slice, tmp_path
):
    """Issue 23 item 5: with a teacher-score file (data.teacher_scores) and refresh.teacher, the job
    scores the new candidates with the teacher into a file of its own; the swap puts those scores in
    the KD lists (one list per query), while the negatives file keeps the student's scores (what
    SimANS reads)."""
    import math

    from dr.data.teacher_scores import write_teacher_scores
    from dr.refresh.store import teacher_file
    from dr.training import RetrievalDataModule

    qrels = read_qrels(scifact_slice["train_qrels"])
    judged = {d for j in qrels.values() for d in j}
    free = [d for d in read_negatives_free(scifact_slice) if d not in judged]
    qids = sorted(qrels)
    rows = [
        (1.0, 0.5, q, sorted(qrels[q])[0], n) for k, q in enumerate(qids) for n in free[2 * k % 100 : 2 * k % 100 + 2]
    ]
    write_teacher_scores(tmp_path / "teacher.tsv", rows)
    dm = RetrievalDataModule(
        scifact_slice["corpus"],
        scifact_slice["train_queries"],
        scifact_slice["train_qrels"],
        teacher_scores=str(tmp_path / "teacher.tsv"),
        num_negatives=4,
        batch_size=4,
    )
    dm.setup("fit")
    ds = dm.train_dataset
    teacher = {
        "_target_": "dr.teachers.FusionTeacher",
        "corpus": "scifact:corpus",
        "model": tiny_bert,
        "query_max_length": 16,
        "passage_max_length": 32,
    }
    setup = RefreshSetup(
        corpus=scifact_slice["corpus"],
        qids=list(ds.qids),
        queries=dict(zip(ds.qids, ds.query_texts)),
        positives={q: list(ds.positives[q]) for q in ds.qids},
        top_k=20,
        teacher=teacher,
        miner={"_target_": "dr.miners.TopKMiner", "num_negatives": 4},
        teacher_into_negatives=False,
    )
    vdir = tmp_path / "v1"
    _run(setup, encoder, vdir)

    def coverage() -> float:
        batch = dm.collate_train([ds[(i, 0)] for i in range(len(ds))])
        present = batch["neg_index"] >= 0
        return float((~batch["teacher_neg"][present].isnan()).float().mean())

    dm.set_negatives(str(vdir / "negatives.jsonl"), 1)
    without = coverage()  # the refreshed candidates the teacher file does not score leave the KD lists
    dm.set_negatives(str(vdir / "negatives.jsonl"), 1, teacher_path=teacher_file(vdir))
    assert coverage() == 1.0, (
        f"KD pairs with a teacher score after the swap: {coverage():.3f} (without the job's teacher file {without:.3f})"
    )
    # the negatives file keeps the student's q·d (SimANS reads it); the teacher's scores are in their own file
    record = read_negatives(vdir / "negatives.jsonl")[ds.qids[0]]
    # the teacher's pairs are the new list's too (TAS-Balanced bins their margins)
    assert set(dm.teacher.pairs[ds.qids[0]]) == {(p, n) for p in record.positives for n in record.negatives}
    q = encoder.encode_queries([ds.query_texts[0]], show_progress=False)[0]
    d = encoder.encode_passages([dm.passage_text(record.negatives[0])], show_progress=False)[0]
    assert math.isclose(record.negative_scores[0], float(q @ d), rel_tol=1e-3, abs_tol=1e-4)


def read_negatives_free(data: dict) -> list[str]:
    from dr.data import read_corpus

    return list(read_corpus(data["corpus"])["docid"])


class KDCoverage(pl.Callback):
    """Records, per step, the negatives version and the fraction of the batch's KD pairs (present
    negatives) that have a teacher score (on the class: Hydra builds the instance)."""

    rows: list = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        present = batch["neg_index"] >= 0
        KDCoverage.rows.append(
            (int(batch["negatives_version"]), float((~batch["teacher_neg"][present].isnan()).float().mean()))
        )


def test_kd_lists_stay_full_after_each_swap_in_a_training_run(tiny_bert, scifact_slice, tmp_path, compose_config):
    """Issue 23 item 5 in a real Trainer (sync refresh every 2 steps, InfoNCE + KD on a teacher file,
    the fusion teacher in the refresh): after every swap each KD pair has a teacher score."""
    from conftest import merge_overrides, tiny_train_overrides
    from dr.data.teacher_scores import write_teacher_scores
    from dr.training import train

    qrels = read_qrels(scifact_slice["train_qrels"])
    judged = {d for j in qrels.values() for d in j}
    free = [d for d in read_negatives_free(scifact_slice) if d not in judged]
    rows = [
        (1.0, 0.5, q, sorted(qrels[q])[0], n)
        for k, q in enumerate(sorted(qrels))
        for n in free[2 * k % 100 : 2 * k % 100 + 4]
    ]
    write_teacher_scores(tmp_path / "teacher.tsv", rows)
    KDCoverage.rows = []
    overrides = merge_overrides(
        tiny_train_overrides(tiny_bert, scifact_slice, tmp_path / "run", max_steps=7),
        [
            "encoder.passage_max_length=32",
            "data.val_fraction=0",
            "test.enabled=false",
            "export.enabled=false",
            "loss=infonce_kd",
            f"data.teacher_scores={tmp_path / 'teacher.tsv'}",
            "data.num_negatives=4",
            "refresh=sync",
            "refresh.every_n_steps=2",
            "refresh.top_k=20",
            "miner@refresh.miner=topk",
            "refresh.miner.num_negatives=4",
            "+teacher@refresh.teacher=fusion",
            f"refresh.teacher.model={tiny_bert}",
            "refresh.teacher.query_max_length=16",
            "refresh.teacher.passage_max_length=32",
            "+callbacks.kd_coverage._target_=test_refresh_job.KDCoverage",
        ],
    )
    train(compose_config("train", overrides))
    by_version: dict[int, list[float]] = {}
    for version, scored in KDCoverage.rows:
        by_version.setdefault(version, []).append(scored)
    assert max(by_version) >= 2, by_version
    after = {v: min(s) for v, s in by_version.items() if v > 0}
    assert all(s == 1.0 for s in after.values()), (
        f"KD pairs with a teacher score per version (min over steps): {after}; before the first swap "
        f"{by_version.get(0)}"
    )
