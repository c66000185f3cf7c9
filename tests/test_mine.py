"""dr-mine end to end on a small SciFact slice with a tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
    overrides = [
        f"model={tiny_bert}",
        f"corpus={scifact_slice['corpus']}",
        f"queries={scifact_slice['train_queries']}",
        f"qrels={scifact_slice['train_qrels']}",
        f"miner={miner}",
        "miner.num_negatives=4" if miner != "margin_simans" else "miner.miners.1.num_negatives=4",
        "top_k=50",
        "chunk_size=16",
        f"output={out}",
        f"embeddings_cache={cache}",
        "encoder.passage_max_length=48",
    ]
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


def test_mine_reads_the_passages_from_a_saved_index(tiny_bert, scifact_slice, tmp_path):
    """``passage_index=`` (a dr-train export's index/): the same negatives as encoding the corpus, and a
    wrong index is refused in one line."""
    from dr.config import ConfigError
    from dr.models import BiEncoder
    from dr.retrieval import DenseIndex, build_index

    corpus = read_corpus(scifact_slice["corpus"])
    encoder = BiEncoder.from_pretrained(tiny_bert, passage_max_length=48)
    build_index(encoder, corpus, batch_size=64).save(tmp_path / "index")
    base = [
        f"model={tiny_bert}",
        f"corpus={scifact_slice['corpus']}",
        f"queries={scifact_slice['train_queries']}",
        f"qrels={scifact_slice['train_qrels']}",
        "miner=pool",
        "top_k=30",
        "backend=torch",
        "encoder.passage_max_length=48",
    ]
    mine(_cfg([*base, f"output={tmp_path / 'encoded.jsonl'}"]), tmp_path)
    mine(_cfg([*base, f"output={tmp_path / 'read.jsonl'}", f"passage_index={tmp_path / 'index'}"]), tmp_path)
    assert (tmp_path / "read.jsonl").read_text() == (tmp_path / "encoded.jsonl").read_text()

    build_index(encoder, corpus.select(range(10)), batch_size=64).save(tmp_path / "part")
    with pytest.raises(ConfigError, match=r"passage_index=.*part .*expected a flat index of exactly the corpus"):
        mine(_cfg([*base, f"passage_index={tmp_path / 'part'}"]), tmp_path)

    # any row order: the vectors come back in the corpus's order
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5, 8)).astype(np.float32)
    shuffled = DenseIndex.build(vectors[::-1].copy(), ["e", "d", "c", "b", "a"], kind="flat")
    assert np.array_equal(shuffled.vectors_of(["a", "b", "c", "d", "e"], "test"), vectors)


def test_mine_from_a_run_file(scifact_slice, tmp_path):
    corpus = read_corpus(scifact_slice["corpus"])
    queries = read_queries(scifact_slice["train_queries"])
    bm25 = BM25(passage_texts(corpus), list(corpus["docid"]))
    qids = list(queries)
    run_path = tmp_path / "bm25.run"
    write_run(bm25.search_run(qids, [queries[q] for q in qids], 30), run_path)
    out = tmp_path / "neg.jsonl"
    overrides = [
        f"run_file={run_path}",
        f"corpus={scifact_slice['corpus']}",
        f"queries={scifact_slice['train_queries']}",
        f"qrels={scifact_slice['train_qrels']}",
        "miner=margin",
        "miner.num_negatives=5",
        "miner.range_min=3",
        f"output={out}",
    ]
    mine(_cfg(overrides), tmp_path)
    _check_file(out, scifact_slice, 5)
    run = {q: list(bm25.search_run([q], [queries[q]], 30)[q]) for q in qids[:5]}
    for qid, record in list(read_negatives(out).items())[:5]:
        ranks = [run[qid].index(d) for d in record.negatives]
        assert all(r >= 3 for r in ranks)  # the rank window [3, ...)


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_killed_mine_leaves_no_partial_file(tiny_bert, scifact_slice, tmp_path):
    """Kill dr-mine at several moments: the negatives file is either absent or complete."""
    out = tmp_path / "neg.jsonl"
    args = [
        str(Path(sys.executable).parent / "dr-mine"),
        f"model={tiny_bert}",
        f"corpus={scifact_slice['corpus']}",
        f"queries={scifact_slice['train_queries']}",
        f"qrels={scifact_slice['train_qrels']}",
        "miner.num_negatives=3",
        "chunk_size=4",
        f"output={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    for delay in (3.0, 6.0, 9.0):
        proc = subprocess.Popen(
            args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():
            _check_file(out, scifact_slice, 3)
            break
    finished = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    _check_file(out, scifact_slice, 3)


def _base(tiny_bert, data, out, *extra):
    return [
        f"model={tiny_bert}",
        f"corpus={data['corpus']}",
        f"queries={data['train_queries']}",
        f"qrels={data['train_qrels']}",
        "top_k=20",
        "chunk_size=16",
        f"output={out}",
        "encoder.passage_max_length=48",
        *extra,
    ]


def _pool_and_cross_encoder(tiny_bert, tiny_cross_encoder, scifact_slice, tmp_path):
    """The tiny model's scored pool (``miner=pool``), the train queries, the corpus texts by docid
    and the tiny cross-encoder teacher: what the denoising tests score the pool with by hand."""
    from dr.teachers import CrossEncoderTeacher

    mine(_cfg(_base(tiny_bert, scifact_slice, tmp_path / "pool.jsonl", "miner=pool")), tmp_path)
    corpus = read_corpus(scifact_slice["corpus"])
    text = dict(zip(corpus["docid"], passage_texts(corpus, list(range(len(corpus))))))
    return (
        read_negatives(tmp_path / "pool.jsonl"),
        read_queries(scifact_slice["train_queries"]),
        text,
        CrossEncoderTeacher(model=tiny_cross_encoder, max_length=256),
    )


def test_mine_denoise_with_a_teacher(tiny_bert, tiny_cross_encoder, scifact_slice, tmp_path):
    """teacher=cross_encoder scores every candidate and positive before mining, so miner=denoise runs:
    it keeps exactly the candidates the cross-encoder scores below the threshold (or a margin under the positives)."""
    pool, queries, text, teacher = _pool_and_cross_encoder(tiny_bert, tiny_cross_encoder, scifact_slice, tmp_path)
    groups = {q: r.negatives + r.positives for q, r in pool.items()}
    scored = teacher.score_groups([queries[q] for q in groups], [[text[d] for d in g] for g in groups.values()])
    t = {q: dict(zip(g, s.tolist())) for (q, g), s in zip(groups.items(), scored)}
    threshold = float(np.median([t[q][d] for q, r in pool.items() for d in r.negatives]))

    teacher_args = [
        "teacher=cross_encoder",
        f"teacher.model={tiny_cross_encoder}",
        "miner=denoise",
        "miner.num_negatives=null",
        "miner.sampling=top",
    ]
    # the threshold is a probability of relevance: the teacher's logits are mapped with a sigmoid (monotone)
    probability = float(1 / (1 + np.exp(-threshold)))
    stats = mine(
        _cfg(
            _base(
                tiny_bert, scifact_slice, tmp_path / "denoised.jsonl", *teacher_args, f"miner.threshold={probability!r}"
            )
        ),
        tmp_path,
    )
    assert stats["teacher"] == "CrossEncoderTeacher"
    denoised = read_negatives(tmp_path / "denoised.jsonl")
    kept = dropped = 0
    for qid, record in pool.items():
        clear = [d for d in record.negatives if abs(t[qid][d] - threshold) > 1e-4]  # away from float noise
        expected = {d for d in clear if t[qid][d] < threshold}
        got = set(denoised[qid].negatives)
        assert expected <= got and not (got & (set(clear) - expected)), qid
        kept, dropped = kept + len(got), dropped + len(record.negatives) - len(got)
    assert kept and dropped  # the filter did something both ways
    # RocketQA's margin form: keep t <= min over positives of t_pos - margin (the positives' teacher scores are filled
    # too)
    mine(
        _cfg(
            _base(
                tiny_bert,
                scifact_slice,
                tmp_path / "margin.jsonl",
                *teacher_args,
                "miner.threshold=null",
                "miner.margin=0.0",
            )
        ),
        tmp_path,
    )
    for qid, record in read_negatives(tmp_path / "margin.jsonl").items():
        floor = min(t[qid][p] for p in pool[qid].positives)
        assert all(t[qid][d] <= floor + 1e-4 for d in record.negatives), qid


def test_denoise_threshold_is_a_probability_of_relevance(tiny_bert, tiny_cross_encoder, scifact_slice, tmp_path):
    """Issue 23 item 2: RocketQA's threshold (0.1) is on a 0-1 scale; a single-logit cross-encoder's
    scores are mapped onto it with a sigmoid, so a candidate with sigmoid(logit) >= 0.1 is never kept."""
    pool, queries, text, teacher = _pool_and_cross_encoder(tiny_bert, tiny_cross_encoder, scifact_slice, tmp_path)
    scored = teacher.score_groups([queries[q] for q in pool], [[text[d] for d in r.negatives] for r in pool.values()])
    probability = {q: dict(zip(r.negatives, 1 / (1 + np.exp(-s)))) for (q, r), s in zip(pool.items(), scored)}
    teacher_args = [
        "teacher=cross_encoder",
        f"teacher.model={tiny_cross_encoder}",
        "miner=denoise",
        "miner.num_negatives=null",
        "miner.sampling=top",
        "miner.threshold=0.1",
    ]
    mine(_cfg(_base(tiny_bert, scifact_slice, tmp_path / "denoised.jsonl", *teacher_args)), tmp_path)
    kept = [probability[q][d] for q, r in read_negatives(tmp_path / "denoised.jsonl").items() for d in r.negatives]
    above = [p for p in kept if p >= 0.1]
    assert not above, f"{len(above)} of {len(kept)} kept candidates have P(relevant) >= 0.1 (max {max(above):.3f})"
    # the teacher's own mapping: sigmoid(logit) = 0.4 is dropped at 0.1, 0.05 kept
    from dr.miners import DenoiseMiner
    from dr.miners.base import Candidates

    logits = np.log([0.4 / 0.6, 0.05 / 0.95])
    assert teacher.to_probability(logits) == pytest.approx([0.4, 0.05])
    candidates = Candidates.from_lists([[1, 2]], [[0.9, 0.8]], [[99]], teacher_scores=[logits.tolist()])
    miner = DenoiseMiner(threshold=0.1, teacher_probability=teacher.to_probability)
    assert miner.passes(candidates).tolist() == [[False, True]]


def test_denoise_threshold_refuses_a_teacher_without_probabilities(tiny_bert, scifact_slice, tmp_path):
    """The fusion teacher's scores are min-max normalised per query, not probabilities: a threshold on them would be a
    relative cut."""
    from dr.config import ConfigError

    args = ["teacher=fusion", f"teacher.model={tiny_bert}", "miner=denoise", "miner.threshold=0.1"]
    with pytest.raises(
        ConfigError, match=r"^miner\.threshold=0\.1: expected a teacher whose scores map to a probability"
    ):
        mine(_cfg(_base(tiny_bert, scifact_slice, tmp_path / "denoised.jsonl", *args)), tmp_path)
    assert not (tmp_path / "denoised.jsonl").exists()


def test_mine_reports_the_kernels_scale_and_effective_sample_size(tiny_bert, scifact_slice, tmp_path):
    """score_scale=auto is 20 (1/0.05) for a cosine encoder and 1 for a run file; the stats give each
    SimANS kernel's effective sample size 1/Σp² (mean over queries), checked by hand on BM25 scores."""
    args = _base(
        tiny_bert,
        scifact_slice,
        tmp_path / "neg.jsonl",
        "miner=simans",
        "miner.num_negatives=4",
        "encoder.similarity=cos",
    )
    auto = mine(_cfg(args), tmp_path)
    assert auto["score_scale"] == {"simans": 20.0} and 1.0 <= auto["effective_sample_size"]["simans"] <= 20.0
    assert json.loads((tmp_path / "neg.jsonl.stats.json").read_text()) == auto

    corpus, queries = read_corpus(scifact_slice["corpus"]), read_queries(scifact_slice["train_queries"])
    qrels = read_qrels(scifact_slice["train_qrels"])
    bm25 = BM25(passage_texts(corpus), list(corpus["docid"]))
    qids = [q for q in queries if q in qrels]
    run = bm25.search_run(qids, [queries[q] for q in qids], 30)
    write_run(run, tmp_path / "bm25.run")
    by_hand = []
    for q in qids:  # the kernel's pool: non-positive candidates; s_pos: the best retrieved positive
        s_pos = max((s for d, s in run[q].items() if d in qrels[q]), default=None)
        if s_pos is not None:
            w = np.exp(-0.5 * (np.array([s for d, s in run[q].items() if d not in qrels[q]]) - s_pos) ** 2)
            by_hand.append(1.0 / ((w / w.sum()) ** 2).sum())
    common = [
        f"run_file={tmp_path / 'bm25.run'}",
        f"corpus={scifact_slice['corpus']}",
        f"queries={scifact_slice['train_queries']}",
        f"qrels={scifact_slice['train_qrels']}",
        "miner=simans",
        "miner.num_negatives=4",
        f"output={tmp_path / 'run.jsonl'}",
    ]
    from_run = mine(_cfg(common), tmp_path)
    assert from_run["score_scale"] == {"simans": 1.0}
    assert from_run["effective_sample_size"]["simans"] == pytest.approx(np.mean(by_hand), rel=1e-4)
    flat = mine(_cfg(common + ["score_scale=0.001"]), tmp_path)  # BM25 points x 0.001: a flat kernel, ESS ~ pool size
    assert np.mean(by_hand) < 0.8 * flat["effective_sample_size"]["simans"]
