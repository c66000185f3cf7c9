"""The refresh job (dr/refresh/job.py) run directly on the live tiny encoder: the miners that need
teacher scores, the teacher's corpus statistics and the teacher scores it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from dr.data import read_qrels, read_queries
from dr.data.negatives import read_negatives
from dr.refresh.job import RefreshJob, RefreshSetup, run_job


def _setup(data: dict, miner: dict, teacher: dict | None, n_queries: int = 6, **kwargs) -> RefreshSetup:
    qrels = read_qrels(data["train_qrels"])
    queries = read_queries(data["train_queries"])
    qids = sorted(q for q in qrels if q in queries)[:n_queries]
    return RefreshSetup(corpus=data["corpus"], qids=qids, queries={q: queries[q] for q in qids},
                        positives={q: sorted(qrels[q]) for q in qids}, miner=miner, top_k=20, teacher=teacher, **kwargs)


def _run(setup: RefreshSetup, encoder, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    manifest = run_job(setup, RefreshJob(version=1, snapshot_step=0, version_dir=str(out)), encoder=encoder)
    return manifest


@pytest.fixture(scope="module")
def encoder(tiny_bert):
    from dr.models import BiEncoder

    return BiEncoder.from_pretrained(tiny_bert, query_max_length=16, passage_max_length=32).eval()


def test_a_denoise_refresh_scores_its_candidates_with_the_refresh_teacher(encoder, tiny_cross_encoder, scifact_slice, tmp_path):
    """Issue 23 item 8: the refresh candidates carry no teacher scores; with refresh.teacher set the
    job scores them before mining, so RocketQA's filter runs instead of failing every refresh."""
    miner = {"_target_": "dr.miners.DenoiseMiner", "num_negatives": 4, "threshold": 0.9, "sampling": "top"}
    teacher = {"_target_": "dr.teachers.CrossEncoderTeacher", "model": tiny_cross_encoder, "max_length": 48}
    manifest = _run(_setup(scifact_slice, miner, teacher), encoder, tmp_path / "v1")
    records = read_negatives(tmp_path / "v1" / "negatives.jsonl")
    assert manifest["queries"] == 6 and all(len(r.negatives) == 4 for r in records.values())
