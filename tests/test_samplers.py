"""TAS batches and TAS-Balanced pair choice (dr/samplers.py): composition, distributions, resume, DDP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from scipy.stats import chisquare

from dr.data import read_clusters, write_clusters
from dr.miners.candidates import student_score_scale
from dr.sampling import BalancedMarginPairSampler, TASBatchSampler, margin_bins, tas_batch_sampler
from dr.data.teacher_scores import TeacherScores

# 200 training queries in clusters of very different sizes; the cluster file also names
# queries that are not training queries (q900+), and one cluster has none of them.
QIDS = [f"q{i}" for i in range(200)]
SIZES = [3, 10, 17, 40, 130]
CLUSTERS = []
_start = 0
for _size in SIZES:
    CLUSTERS.append(QIDS[_start : _start + _size] + [f"q{900 + _start}"])
    _start += _size
CLUSTERS.append(["q999", "q998"])  # no training query: dropped


def _cluster_of(sampler: TASBatchSampler) -> np.ndarray:
    owner = np.full(len(QIDS), -1)
    for c, members in enumerate(sampler.clusters):
        owner[members] = c
    return owner


def test_tas_clusters_are_restricted_to_training_queries():
    sampler = TASBatchSampler(QIDS, CLUSTERS, batch_size=16, seed=0)
    assert [len(c) for c in sampler.clusters] == SIZES  # unknown ids removed, empty cluster dropped
    assert sorted(np.concatenate(sampler.clusters).tolist()) == list(range(200))
    assert len(sampler) == 200 // 16


def test_every_tas_batch_comes_from_one_cluster_unless_that_cluster_is_too_small():
    sampler = TASBatchSampler(QIDS, CLUSTERS, batch_size=16, seed=1)
    owner = _cluster_of(sampler)
    seen_filled = seen_single = 0
    for epoch in range(20):
        for batch in sampler.global_batches(epoch):
            assert len(batch) == 16 and len(set(batch.tolist())) == 16  # no query twice
            first = owner[batch[0]]
            size = len(sampler.clusters[first])
            if size >= 16:
                assert set(owner[batch]) == {first}
                seen_single += 1
            else:  # the whole small cluster, then queries from other clusters
                assert set(sampler.clusters[first].tolist()) == set(batch[:size].tolist())
                assert first not in set(owner[batch[size:]])
                seen_filled += 1
    assert seen_single and seen_filled


def test_tas_picks_clusters_uniformly_whatever_their_size():
    """The first cluster of a batch is uniform over clusters (chi-square), not proportional to size."""
    sampler = TASBatchSampler(QIDS, CLUSTERS, batch_size=8, seed=2)
    owner = _cluster_of(sampler)
    firsts = [owner[b[0]] for epoch in range(200) for b in sampler.global_batches(epoch)]
    observed = np.bincount(firsts, minlength=len(SIZES))
    assert chisquare(observed).pvalue > 1e-3
    by_size = np.array(SIZES) / sum(SIZES) * len(firsts)
    assert chisquare(observed, by_size).pvalue < 1e-6  # the test has power


def test_tas_with_several_clusters_per_batch():
    sampler = TASBatchSampler(QIDS, CLUSTERS, batch_size=16, seed=3, clusters_per_batch=2)
    owner = _cluster_of(sampler)
    for batch in sampler.global_batches(0):
        first = owner[batch[0]]
        if len(sampler.clusters[first]) >= 8:
            assert set(owner[batch[:8]]) == {first}


def test_tas_batches_are_a_pure_function_of_seed_and_epoch():
    a = TASBatchSampler(QIDS, CLUSTERS, batch_size=16, seed=4)
    b = TASBatchSampler(QIDS, CLUSTERS, batch_size=16, seed=4)
    for epoch in (0, 3):
        assert all(np.array_equal(x, y) for x, y in zip(a.global_batches(epoch), b.global_batches(epoch)))
    assert not all(np.array_equal(x, y) for x, y in zip(a.global_batches(0), a.global_batches(1)))
    # inherited resume: skipping k batches yields the rest of the same epoch
    full = list(a)
    a.skip = 5
    assert list(a) == full[5:]


def test_tas_ranks_take_disjoint_slices_of_the_global_batch():
    ranks = [TASBatchSampler(QIDS, CLUSTERS, batch_size=4, seed=5, rank=r, world_size=3) for r in range(3)]
    owner = _cluster_of(ranks[0])
    assert len({len(s) for s in ranks}) == 1 and len(ranks[0]) == 200 // 12
    for step, per_rank in enumerate(zip(*ranks)):
        ids = [i for batch in per_rank for i, *_ in batch]
        assert len(ids) == 12 and len(set(ids)) == 12
        assert ids == ranks[0].global_batches(0)[step].tolist()
        if len(ranks[0].clusters[owner[ids[0]]]) >= 12:
            assert len(set(owner[ids])) == 1  # the global batch, not each rank's, is one cluster


def test_tas_factory_reads_a_cluster_file_and_rejects_foreign_clusters(tmp_path):
    path = write_clusters(tmp_path / "clusters.txt", CLUSTERS)
    sampler = tas_batch_sampler(qids=QIDS, batch_size=16, seed=0, clusters=str(path))
    assert [len(c) for c in sampler.clusters] == SIZES
    with pytest.raises(ValueError, match="no training query is in any cluster"):
        tas_batch_sampler(qids=["x1", "x2"], batch_size=1, seed=0, clusters=str(path))


# ---------------------------------------------------------------------- balanced margins
def test_margin_bins_hand_computed():
    # 10 bins of width 1 over [0, 10]: edges 0..9; the maximum joins the last bin.
    assert margin_bins(np.arange(11.0)).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9]
    assert margin_bins(np.array([-2.0, -1.9, 0.0, 2.0])).tolist() == [0, 0, 5, 9]
    assert margin_bins(np.array([3.0, 3.0, 3.0])).tolist() == [0, 0, 0]  # no spread: one bin
    rng = np.random.default_rng(0)
    m = rng.normal(size=500)
    reference = np.digitize(m, np.arange(m.min(), m.max(), (m.max() - m.min()) / 10)) - 1
    assert np.array_equal(margin_bins(m), np.clip(reference, 0, 9))


def _teacher(
    qid: str, pos_scores: dict[str, float], neg_scores: dict[str, float], with_pairs: bool = True
) -> TeacherScores:
    teacher = TeacherScores()
    if with_pairs:
        for p, sp in pos_scores.items():
            for n, sn in neg_scores.items():
                teacher.add(qid, p, n, sp, sn)
    else:
        teacher.scores[qid].update(pos_scores)
        teacher.scores[qid].update(neg_scores)
    return teacher


# One positive scored 10; negatives chosen so that margins 10 - t_neg land very unevenly in the
# 10 bins over [0, 9]: 200 pairs in bin 0, 20 in bin 4, 1 in bin 8, 1 in bin 9 (the extremes set the range).
UNEVEN = {
    **{f"n0_{i}": 10.0 - 0.004 * i for i in range(200)},
    **{f"n4_{i}": 10.0 - 4.2 - 0.01 * i for i in range(20)},
    "n8": 10.0 - 7.5,
    "n9": 10.0 - 9.0,
}


def test_balanced_sampler_picks_bins_uniformly_even_when_very_uneven():
    sampler = BalancedMarginPairSampler()
    negatives = list(UNEVEN)
    teacher = _teacher("q", {"p": 10.0}, UNEVEN)
    entry = sampler.pairs_of("q", ["p"], negatives, teacher)
    assert sorted(len(b) for b in entry.bins) == [1, 1, 20, 200]
    bin_of = dict(zip(entry.neg, entry.bin_of.tolist()))
    rng = np.random.default_rng(123)
    n = 4000
    draws = [sampler("q", ["p"], negatives, teacher, 1, rng) for _ in range(n)]
    assert all(p == "p" and len(neg) == 1 for p, neg in draws)
    observed = np.bincount([bin_of[neg[0]] for _, neg in draws], minlength=10)
    assert observed[[1, 2, 3, 5, 6, 7]].sum() == 0  # empty bins are never chosen
    nonempty = observed[[0, 4, 8, 9]]
    assert chisquare(nonempty).pvalue > 1e-3  # uniform over the 4 non-empty bins
    assert chisquare(nonempty, np.array([200, 20, 1, 1]) / 222 * n).pvalue < 1e-6  # not proportional to pairs
    # and uniform inside a bin
    inside = np.bincount([int(neg[0][3:]) for _, neg in draws if neg[0].startswith("n4_")], minlength=20)
    assert chisquare(inside).pvalue > 1e-3


def test_balanced_sampler_uses_file_pairs_that_are_still_candidates():
    teacher = TeacherScores()
    teacher.add("q", "p1", "a", 5.0, 1.0)
    teacher.add("q", "p1", "b", 5.0, 4.0)
    teacher.add("q", "p2", "gone", 5.0, 0.0)  # its negative is not a candidate any more
    teacher.scores["q"]["c"] = 0.5  # scored, but in no file pair: not a pair of this query
    sampler = BalancedMarginPairSampler()
    rng = np.random.default_rng(0)
    drawn = {
        (p, tuple(n)) for p, n in (sampler("q", ["p1", "p2"], ["a", "b", "c"], teacher, 1, rng) for _ in range(200))
    }
    assert drawn == {("p1", ("a",)), ("p1", ("b",))}


def test_balanced_sampler_pairs_positives_and_negatives_without_file_pairs():
    teacher = _teacher("q", {"p1": 10.0, "p2": 5.0}, {"a": 0.0, "b": 5.0}, with_pairs=False)
    entry = BalancedMarginPairSampler().pairs_of("q", ["p1", "p2", "p3"], ["a", "b", "unscored"], teacher)
    assert sorted(zip(entry.pos, entry.neg)) == [("p1", "a"), ("p1", "b"), ("p2", "a"), ("p2", "b")]
    # margins 10, 5, 5, 0 over [0, 10]: edges 0, 1, ..., 9
    margins = {("p1", "a"): 10.0, ("p1", "b"): 5.0, ("p2", "a"): 5.0, ("p2", "b"): 0.0}
    expected = margin_bins(np.array([margins[p] for p in zip(entry.pos, entry.neg)]))
    assert entry.bin_of.tolist() == expected.tolist() and sorted(expected.tolist()) == [0, 5, 5, 9]


def test_balanced_sampler_fallbacks():
    sampler = BalancedMarginPairSampler()
    rng = np.random.default_rng(0)
    # no teacher, or nothing scored: uniform positive and negatives
    assert sampler("q", ["p"], ["a", "b", "c"], None, 2, rng)[0] == "p"
    teacher = TeacherScores()
    teacher.scores["other"]["x"] = 1.0
    p, negs = sampler("q", ["p"], ["a", "b", "c"], teacher, 2, rng)
    assert p == "p" and len(set(negs)) == 2
    # a single scored pair: that pair
    teacher.add("q", "p", "b", 3.0, 1.0)
    assert {tuple(sampler("q", ["p"], ["a", "b", "c"], teacher, 1, rng)[1]) for _ in range(20)} == {("b",)}


def test_balanced_sampler_rebuilds_bins_when_the_candidates_change():
    teacher = _teacher("q", {"p": 10.0}, {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}, with_pairs=False)
    sampler = BalancedMarginPairSampler()
    rng = np.random.default_rng(0)
    old = ["a", "b"]
    assert {sampler("q", ["p"], old, teacher, 1, rng)[1][0] for _ in range(50)} == {"a", "b"}
    new = ["c", "d"]  # an index refresh swaps the candidate list
    assert {sampler("q", ["p"], new, teacher, 1, rng)[1][0] for _ in range(50)} == {"c", "d"}
    positives = ["p"]
    entry = sampler.pairs_of("q", positives, new, teacher)
    assert sampler.pairs_of("q", positives, new, teacher) is entry  # cached while the lists are the same


def test_balanced_sampler_with_several_negatives():
    teacher = TeacherScores()
    for n, s in {"a": 1.0, "b": 2.0, "c": 3.0}.items():
        teacher.add("q", "p1", n, 5.0, s)
    teacher.add("q", "p2", "d", 4.0, 0.0)
    sampler = BalancedMarginPairSampler()
    rng = np.random.default_rng(1)
    for _ in range(50):
        p, negs = sampler("q", ["p1", "p2"], ["a", "b", "c", "d", "e"], teacher, 3, rng)
        assert len(negs) == 3 and len(set(negs)) == 3
        if p == "p1":
            assert set(negs) == {"a", "b", "c"}  # every pair with the same positive first
        else:
            assert negs[0] == "d" and set(negs[1:]) <= {"a", "b", "c", "e"}  # then uniform fill


# ---------------------------------------------------------------------- resume through Lightning
class _Recorder(pl.Callback):
    def __init__(self):
        self.batches = []
        self.negatives = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches.append((tuple(batch["qids"]), tuple(batch["docids"])))
        # each query's negatives by column (the batch holds each distinct passage once)
        self.negatives.append([[batch["docids"][j] for j in row if j >= 0] for row in batch["neg_index"].tolist()])


def _slice_clusters_and_teacher(data: dict, out: Path) -> tuple[Path, Path]:
    from dr.data import read_qrels
    from dr.data.teacher_scores import write_teacher_scores

    qrels = read_qrels(data["train_qrels"])
    docids = [json.loads(line)["_id"] for line in open(data["corpus"])]
    qids = sorted(qrels)
    rng = np.random.default_rng(0)
    rows = []
    for qid in qids:
        positive = sorted(qrels[qid])[0]
        for neg in rng.choice([d for d in docids if d not in qrels[qid]], size=12, replace=False):
            rows.append((10.0, float(rng.normal(5, 3)), qid, positive, str(neg)))
    teacher = out / "teacher.tsv"
    write_teacher_scores(teacher, rows)
    clusters = write_clusters(out / "clusters.txt", [qids[i::5] for i in range(5)])
    return clusters, teacher


def _fit(
    tiny_bert: str,
    data: dict,
    clusters: Path,
    teacher: Path,
    out: Path,
    max_steps: int,
    ckpt_path=None,
    save_every=None,
):
    from hydra import compose, initialize_config_dir
    import hydra

    from dr.cli import config_dir

    overrides = [
        f"paths.output_dir={out}",
        f"encoder.name_or_path={tiny_bert}",
        "encoder.pooling=cls",
        "encoder.query_max_length=16",
        "encoder.passage_max_length=24",
        f"data.corpus={data['corpus']}",
        f"data.train_queries={data['train_queries']}",
        f"data.train_qrels={data['train_qrels']}",
        "data.batch_size=8",
        "data.val_fraction=0",
        "data.negatives=null",
        f"data.teacher_scores={teacher}",
        "sampler=tas_balanced",
        f"data.batch_sampler.clusters={clusters}",
        "optimizer.lr=1e-3",
        "scheduler.num_warmup_steps=1",
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    pl.seed_everything(0)
    module = hydra.utils.instantiate(cfg.module)
    datamodule = hydra.utils.instantiate(cfg.data, output_dir=str(out))
    recorder = _Recorder()
    callbacks = [recorder]
    if save_every:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(
                dirpath=out / "checkpoints",
                every_n_train_steps=save_every,
                save_top_k=-1,
                filename="step{step:06d}",
                auto_insert_metric_name=False,
            )
        )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=callbacks,
        default_root_dir=str(out),
        enable_checkpointing=bool(save_every),
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return recorder.batches


def test_resumed_run_draws_the_same_tas_balanced_batches(tiny_bert, scifact_slice, tmp_path):
    """N steps, checkpoint, M more steps (across an epoch boundary) = N + M straight steps."""
    clusters, teacher = _slice_clusters_and_teacher(scifact_slice, tmp_path)
    straight = _fit(tiny_bert, scifact_slice, clusters, teacher, tmp_path / "straight", max_steps=10)
    assert len(straight) == 10  # 64 queries / 8 = 8 batches per epoch: steps 9-10 are epoch 1
    _fit(tiny_bert, scifact_slice, clusters, teacher, tmp_path / "first", max_steps=3, save_every=3)
    ckpt = tmp_path / "first" / "checkpoints" / "step000003.ckpt"
    assert ckpt.is_file()
    resumed = _fit(tiny_bert, scifact_slice, clusters, teacher, tmp_path / "resumed", max_steps=10, ckpt_path=str(ckpt))
    assert resumed == straight[3:]
    # the batches are TAS batches: each global batch within one cluster (every cluster here holds >= 8)
    owner = {q: i for i, line in enumerate(read_clusters(clusters)) for q in line}
    assert all(len({owner[q] for q in qids}) == 1 for qids, _ in straight)


# ---------------------------------------------------------------------- real DDP (gloo, 2 processes)
def _ddp_worker(
    rank: int, world_size: int, port: int, tiny_bert: str, queries: str, qids: list[str], out: str, result_dir: str
):
    import torch.distributed as dist

    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool (as DataLoader workers)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        # clusters made at set-up (rank 0 encodes and writes, rank 1 reads after the barrier)
        sampler = tas_batch_sampler(
            qids=qids,
            batch_size=4,
            seed=7,
            rank=rank,
            world_size=world_size,
            clusters=None,
            model=tiny_bert,
            queries=queries,
            num_clusters=3,
            output_dir=out,
            encode_batch_size=64,
        )
        mine = [[i for i, *_ in batch] for batch in sampler]
        gathered = [None] * world_size
        dist.all_gather_object(gathered, {"batches": mine, "clusters": [c.tolist() for c in sampler.clusters]})
        if rank == 0:
            Path(result_dir, "ddp.json").write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_draw_disjoint_queries_with_real_gloo_processes(tiny_bert, scifact_slice, tmp_path):
    import socket

    import torch.multiprocessing as mp

    from dr.data import read_qrels

    qids = sorted(read_qrels(scifact_slice["train_qrels"]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the workers start in a second instead of re-importing torch and transformers
    mp.start_processes(
        _ddp_worker,
        args=(2, port, tiny_bert, scifact_slice["train_queries"], qids, str(tmp_path / "run"), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    gathered = json.loads((tmp_path / "ddp.json").read_text())
    assert gathered[0]["clusters"] == gathered[1]["clusters"]  # the same clusters on both ranks
    assert len(read_clusters(tmp_path / "run" / "clusters.txt")) == len(gathered[0]["clusters"])
    rank0, rank1 = gathered[0]["batches"], gathered[1]["batches"]
    assert len(rank0) == len(rank1) == len(qids) // 8
    for a, b in zip(rank0, rank1):
        assert len(a) == len(b) == 4 and not set(a) & set(b)


# ---------------------------------------------------------------------- SimANS redrawn at every load
def _pool(n: int = 30, seed: int = 0) -> dict[str, float]:
    """n candidate cosines in [0.7, 0.9], best first: on logits (x 20) the kernel spans e^-2 .. 1."""
    return {f"n{j}": float(s) for j, s in enumerate(-np.sort(-np.random.default_rng(seed).uniform(0.7, 0.9, n)))}


def test_simans_pair_sampler_redraws_with_the_kernel_at_every_load():
    """Every load of a query draws its negative from the stored pool with p ∝ exp(-a·(z - z_pos - b)²),
    z = score_scale · cos (chi-square over 6,000 loads, one per epoch)."""
    from dr.sampling import SimANSPairSampler
    from dr.training.datamodule import ContrastiveDataset

    pool, s_pos, a, b, scale = _pool(), 0.8, 0.5, 0.25, 20.0
    sampler = SimANSPairSampler(a=a, b=b, score_scale=scale)
    ds = ContrastiveDataset(
        ["q"], ["text"], {"q": ["p"]}, {"q": list(pool)}, None, num_negatives=1, seed=0, pair_sampler=sampler
    )
    ds.scores = {"q": {**pool, "p": s_pos}}
    n = 6000
    drawn = [ds[(0, epoch)]["negatives"] for epoch in range(n)]
    assert all(len(d) == 1 for d in drawn)
    observed = np.array([sum(d[0] == name for d in drawn) for name in pool])
    s = np.array(list(pool.values()))
    z = scale * (s - s_pos)
    expected = np.exp(-a * (z - b) ** 2)
    expected = n * expected / expected.sum()
    assert expected.min() > 20 and chisquare(observed, expected).pvalue > 1e-3
    assert np.allclose(sampler.probabilities(s, s_pos) * n, expected)
    # power: the same kernel on raw cosines (a = 0.5 on [-1, 1] scores) is nearly uniform, a different law
    flat = np.exp(-a * (s - s_pos - b) ** 2)
    assert flat.max() / flat.min() < 1.1  # within 10%
    assert chisquare(observed, n * flat / flat.sum()).pvalue < 1e-6
    # several negatives: distinct, every load
    ds.num_negatives = 4
    assert all(len(set(ds[(0, e)]["negatives"])) == 4 for e in range(50))


def test_simans_pair_sampler_fallbacks_and_laplace():
    from dr.sampling import SimANSPairSampler

    pool = _pool(10)
    rng = np.random.default_rng(0)
    sampler = SimANSPairSampler(kernel="laplace", tau=3.0, score_scale=20.0)
    # s_pos unknown: the last (lowest-ranked) candidates, as the reference
    assert sampler("q", ["p"], list(pool), None, 2, rng, scores=pool)[1] == ["n8", "n9"]
    # no scored candidate: uniform, distinct
    p, negs = sampler("q2", ["p"], ["x", "y", "z"], None, 2, rng, scores={})
    assert p == "p" and len(set(negs)) == 2 and set(negs) <= {"x", "y", "z"}
    # the Laplace kernel's probabilities on logits
    s = np.array(list(pool.values()))
    expected = np.exp(-3.0 * np.abs(20.0 * (s - 0.8)))
    assert np.allclose(sampler.probabilities(s, 0.8), expected / expected.sum())


def _pool_file(data: dict, path: Path, with_positive_scores: bool = True) -> Path:
    """A negatives file as `dr-mine miner=pool` writes it: 20 scored candidates per query and the positives' scores."""
    from dr.data import read_qrels
    from dr.data.negatives import NegativesRecord, write_negatives

    qrels = read_qrels(data["train_qrels"])
    docids = [json.loads(line)["_id"] for line in open(data["corpus"])]
    rng = np.random.default_rng(1)
    records = []
    for qid in sorted(qrels):
        negs = [str(d) for d in rng.choice([d for d in docids if d not in qrels[qid]], size=20, replace=False)]
        scores = sorted(rng.uniform(0.6, 0.9, size=20).tolist(), reverse=True)
        pos = sorted(qrels[qid])
        records.append(NegativesRecord(qid, pos, negs, scores, [0.85] * len(pos) if with_positive_scores else []))
    write_negatives(path, records)
    return path


def test_simans_sampler_trains_with_the_students_scale(tiny_bert, scifact_slice, tmp_path, compose_config):
    """sampler=simans in a real Trainer: the negatives file's scores reach the sampler, its scale is
    1/temperature of the InfoNCE loss, and the batches' negatives are candidates of the file."""
    import hydra

    from dr.data.negatives import read_negatives

    path = _pool_file(scifact_slice, tmp_path / "pool.jsonl")
    cfg = compose_config(
        "train",
        [
            f"paths.output_dir={tmp_path}",
            f"encoder.name_or_path={tiny_bert}",
            "encoder.pooling=cls",
            "encoder.query_max_length=16",
            "encoder.passage_max_length=24",
            f"data.corpus={scifact_slice['corpus']}",
            f"data.train_queries={scifact_slice['train_queries']}",
            f"data.train_qrels={scifact_slice['train_qrels']}",
            "data.batch_size=8",
            "data.val_fraction=0",
            f"data.negatives={path}",
            "data.num_negatives=2",
            "sampler=simans",
            "loss.temperature=0.04",
        ],
    )
    module = hydra.utils.instantiate(cfg.module)
    # the student's scale, resolved once as dr.training.train does, and handed to the datamodule
    scale = student_score_scale(module.loss, module.encoder)
    datamodule = hydra.utils.instantiate(cfg.data, output_dir=str(tmp_path), score_scale=scale)
    recorder = _Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[recorder],
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=datamodule)
    assert datamodule.pair_sampler.score_scale == pytest.approx(25.0)  # 1 / 0.04
    records = read_negatives(path)
    assert datamodule.train_dataset.scores[records[next(iter(records))].qid]
    for (qids, _), negatives in zip(recorder.batches, recorder.negatives):
        for qid, negs in zip(qids, negatives):
            assert len(negs) == 2 and set(negs) <= set(records[qid].negatives)
    # the file's scores are the retriever's: reading them as teacher scores as well is refused
    with pytest.raises(ValueError, match="teacher_from_negatives"):
        hydra.utils.instantiate(cfg.data, teacher_from_negatives=True).setup("fit")


def test_simans_draws_vary_across_loads_on_a_scored_pool_only(scifact_slice, tmp_path):
    """Issue 23 item 4: on a scored pool (dr-mine miner=pool) SimANS redraws at every load; on BM25
    negatives (no positive score) every load takes the same lowest-ranked candidates, which config
    validation now refuses (tests/test_validate.py)."""
    from dr.retrieval import BM25Negatives
    from dr.sampling import SimANSPairSampler
    from dr.training import RetrievalDataModule

    def distinct_draws(negatives) -> int:
        dm = RetrievalDataModule(
            scifact_slice["corpus"],
            scifact_slice["train_queries"],
            scifact_slice["train_qrels"],
            negatives=negatives,
            num_negatives=1,
            batch_size=4,
            pair_sampler=SimANSPairSampler(score_scale=20.0),
        )
        dm.setup("fit")
        return len({tuple(dm.train_dataset[(0, epoch)]["negatives"]) for epoch in range(50)})

    assert distinct_draws(str(_pool_file(scifact_slice, tmp_path / "pool.jsonl"))) >= 10
    assert distinct_draws(BM25Negatives(0, 50)) == 1  # the degradation the validation refuses
