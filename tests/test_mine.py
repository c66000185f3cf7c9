"""dr-mine end to end on a small SciFact slice with a tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dr.retrieval.bm25 import BM25
from dr.cli import config_dir
from dr.data import passage_texts, read_corpus, read_qrels, read_queries, write_run
from dr.cli.mine import run as mine
from dr.data.negatives import read_negatives


def _cfg(overrides):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("mine", overrides=overrides)


def _check_file(path: Path, data: dict, num_negatives: int) -> None:
    records = read_negatives(path)
    qrels = read_qrels(data["train_qrels"])
    corpus_ids = set(read_corpus(data["corpus"])["docid"])
    assert set(records) == {q for q in read_queries(data["train_queries"]) if q in qrels}
    for qid, record in records.items():
        assert not set(record.negatives) & set(qrels[qid]), qid
        assert set(record.negatives) <= corpus_ids
        assert len(record.negatives) == len(set(record.negatives)) <= num_negatives
        assert sorted(record.positives) == sorted(d for d, g in qrels[qid].items() if g >= 1)


@pytest.mark.parametrize("miner", ["simans", "margin_simans", "topk"])
def test_mine_with_an_encoder(miner, tiny_bert, scifact_slice, tmp_path):
    out = tmp_path / "neg.jsonl"
    cache = tmp_path / "emb.npy"
    overrides = [f"model={tiny_bert}", f"corpus={scifact_slice['corpus']}", f"queries={scifact_slice['train_queries']}",
                 f"qrels={scifact_slice['train_qrels']}", f"miner={miner}", "miner.num_negatives=4" if miner != "margin_simans" else "miner.miners.1.num_negatives=4",
                 "top_k=50", "chunk_size=16", f"output={out}", f"embeddings_cache={cache}", "encoder.passage_max_length=48"]
    stats = mine(_cfg(overrides), tmp_path)
    _check_file(out, scifact_slice, 4)
    assert (tmp_path / "neg.jsonl.scores.png").stat().st_size > 0
    assert json.loads((tmp_path / "neg.jsonl.stats.json").read_text()) == stats
    assert 0.0 <= stats["positive_retrieved_in_top_k"] <= 1.0
    record = next(iter(read_negatives(out).values()))
    assert all(s is not None for s in record.positive_scores)  # exact q·d+ from the encoder
    # The embeddings cache is reused (same model and corpus): same seed, same file.
    first = out.read_text()
    mine(_cfg(overrides), tmp_path)
    assert out.read_text() == first


def test_mine_from_a_run_file(scifact_slice, tmp_path):
    corpus = read_corpus(scifact_slice["corpus"])
    queries = read_queries(scifact_slice["train_queries"])
    bm25 = BM25(passage_texts(corpus), list(corpus["docid"]))
    qids = list(queries)
    run_path = tmp_path / "bm25.run"
    write_run(bm25.search_run(qids, [queries[q] for q in qids], 30), run_path)
    out = tmp_path / "neg.jsonl"
    overrides = [f"run_file={run_path}", f"corpus={scifact_slice['corpus']}", f"queries={scifact_slice['train_queries']}",
                 f"qrels={scifact_slice['train_qrels']}", "miner=margin", "miner.num_negatives=5", "miner.range_min=3", f"output={out}"]
    mine(_cfg(overrides), tmp_path)
    _check_file(out, scifact_slice, 5)
    run = {q: list(bm25.search_run([q], [queries[q]], 30)[q]) for q in qids[:5]}
    for qid, record in list(read_negatives(out).items())[:5]:
        ranks = [run[qid].index(d) for d in record.negatives]
        assert all(r >= 3 for r in ranks)  # the rank window [3, ...)


def test_killed_mine_leaves_no_partial_file(tiny_bert, scifact_slice, tmp_path):
    """Kill dr-mine at several moments: the negatives file is either absent or complete."""
    out = tmp_path / "neg.jsonl"
    args = [str(Path(sys.executable).parent / "dr-mine"), f"model={tiny_bert}", f"corpus={scifact_slice['corpus']}",
            f"queries={scifact_slice['train_queries']}", f"qrels={scifact_slice['train_qrels']}", "miner.num_negatives=3",
            "chunk_size=4", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}"]
    for delay in (3.0, 6.0, 9.0):
        proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():
            _check_file(out, scifact_slice, 3)
            break
    finished = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    _check_file(out, scifact_slice, 3)
