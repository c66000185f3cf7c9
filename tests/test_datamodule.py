"""The query batch sampler and the contrastive batches it feeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dr.retrieval import BM25Negatives
from dr.sampling import QueryBatchSampler
from dr.training import RetrievalDataModule


def test_sampler_covers_each_query_once_per_epoch_and_reshuffles():
    sampler = QueryBatchSampler(100, batch_size=8, seed=1, drop_last=True)
    epoch0 = [i for batch in sampler for i, *_ in batch]
    assert len(epoch0) == 96 and len(set(epoch0)) == 96
    sampler.set_epoch(1)
    epoch1 = [i for batch in sampler for i, *_ in batch]
    assert epoch0 != epoch1
    sampler.set_epoch(0)
    assert [i for batch in sampler for i, *_ in batch] == epoch0  # deterministic per (seed, epoch)


def test_ddp_ranks_draw_disjoint_queries_within_each_global_step():
    ranks = [QueryBatchSampler(50, batch_size=4, seed=3, rank=r, world_size=3) for r in range(3)]
    assert len({len(s) for s in ranks}) == 1 and len(ranks[0]) == 50 // 12
    for step_batches in zip(*ranks):
        ids = [i for batch in step_batches for i, *_ in batch]
        assert len(ids) == 12 and len(set(ids)) == 12
    every = [i for s in ranks for batch in s for i, *_ in batch]
    assert len(every) == len(set(every))


def test_resume_skips_the_batches_already_trained_on():
    full = list(QueryBatchSampler(64, batch_size=8, seed=5))
    resumed = QueryBatchSampler(64, batch_size=8, seed=5)
    resumed.skip = 3
    assert list(resumed) == full[3:]
    assert list(resumed) == full  # the skip applies once


def test_collate_masks_other_positives_of_the_query(scifact_slice):
    dm = RetrievalDataModule(
        scifact_slice["corpus"],
        scifact_slice["train_queries"],
        scifact_slice["train_qrels"],
        negatives=BM25Negatives(0, 20),
        num_negatives=1,
        batch_size=4,
    )
    dm.setup("fit")
    ds = dm.train_dataset
    multi = [i for i, q in enumerate(ds.qids) if len(ds.positives[q]) > 1]
    assert multi, "the slice should hold a query with several positives"
    first = ds[(multi[0], 0)]
    # the query again, at the first later occurrence that draws another of its positives
    again = next(ex for k in range(1, 50) if (ex := ds[(multi[0], 0, k)])["positive"] != first["positive"])
    examples = [first, again] + [ds[(i, 0)] for i in range(2)]
    batch = dm.collate_train(examples)
    # Two occurrences of the same query: each one's positive is the other's target, so it is masked.
    # (The mask marks every known positive, the target included; the loss never masks the target.)
    assert batch["exclude"][0, batch["target"][1]] and batch["exclude"][1, batch["target"][0]]
    for i, ex in enumerate(examples):
        positives = set(ds.positives[ex["qid"]])
        assert ex["positive"] in positives and batch["docids"][batch["target"][i]] == ex["positive"]
        assert not set(ex["negatives"]) & positives
        for j, docid in enumerate(batch["docids"]):
            if j != batch["target"][i]:
                assert bool(batch["exclude"][i, j]) == (docid in positives)
    assert len(set(batch["docids"])) == len(batch["docids"]) == len(batch["passages"])  # each passage once


def test_negatives_are_redrawn_each_epoch_from_the_rank_window(scifact_slice):
    dm = RetrievalDataModule(
        scifact_slice["corpus"],
        scifact_slice["train_queries"],
        scifact_slice["train_qrels"],
        negatives=BM25Negatives(10, 50),
        num_negatives=1,
        batch_size=4,
    )
    dm.setup("fit")
    ds = dm.train_dataset
    draws = {tuple(ds[(0, epoch)]["negatives"]) for epoch in range(20)}
    assert len(draws) > 5
    assert all(d[0] in ds.negatives[ds.qids[0]] for d in draws)
    assert len(ds.negatives[ds.qids[0]]) <= 40


def test_teacher_file_adds_scores_and_min_teacher_pairs_filters_queries(scifact_slice, tmp_path):
    from dr.data import read_qrels
    from dr.data.teacher_scores import write_teacher_scores

    qrels = read_qrels(scifact_slice["train_qrels"])
    qids = sorted(qrels)
    docs = sorted({d for q in qids for d in qrels[q]})
    # the first query gets 3 pairs, the second 1, the rest none
    rows = []
    for qid, n in ((qids[0], 3), (qids[1], 1)):
        pos = sorted(qrels[qid])[0]
        negs = [d for d in docs if d not in qrels[qid]][:n]
        rows += [(5.0, 1.0 + k, qid, pos, neg) for k, neg in enumerate(negs)]
    teacher = tmp_path / "teacher.tsv"
    write_teacher_scores(teacher, rows)
    common = dict(negatives=None, num_negatives=1, batch_size=1, teacher_scores=str(teacher))
    dm = RetrievalDataModule(
        scifact_slice["corpus"], scifact_slice["train_queries"], scifact_slice["train_qrels"], **common
    )
    dm.setup("fit")
    assert qids[0] in dm.train_dataset.qids and len(dm.train_dataset.qids) > 2
    i = dm.train_dataset.qids.index(qids[0])
    batch = dm.collate_train([dm.train_dataset[(i, 0)]])
    neg = batch["docids"][int(batch["neg_index"][0, 0])]
    expected = {r[4]: r[1] for r in rows if r[2] == qids[0]}
    assert batch["teacher_pos"].tolist() == [5.0] and batch["teacher_neg"][0, 0].item() == expected[neg]

    dm2 = RetrievalDataModule(
        scifact_slice["corpus"],
        scifact_slice["train_queries"],
        scifact_slice["train_qrels"],
        min_teacher_pairs=2,
        **common,
    )
    dm2.setup("fit")
    assert dm2.train_dataset.qids == [qids[0]]


# ---------------------------------------------------------------------- one fresh draw per load
def _synthetic_dataset(num_queries: int, num_candidates: int, seed: int = 3):
    from dr.training.datamodule import ContrastiveDataset

    qids = [f"q{i}" for i in range(num_queries)]
    positives = {q: [f"{q}-p0", f"{q}-p1"] for q in qids}
    negatives = {q: [f"{q}-n{j}" for j in range(num_candidates)] for q in qids}
    return ContrastiveDataset(qids, qids, positives, negatives, None, num_negatives=1, seed=seed)


def test_a_query_drawn_again_in_an_epoch_gets_a_fresh_pair():
    """TAS draws clusters with replacement, so a query can come back in the same epoch: each
    occurrence draws its own (positive, negative) pair, reproducibly and resumably."""
    from dr.sampling import TASBatchSampler

    ds = _synthetic_dataset(200, 50)  # 2 positives x 50 candidates: 100 possible pairs
    sampler = TASBatchSampler(ds.qids, [ds.qids[i : i + 20] for i in range(0, 200, 20)], batch_size=16, seed=1)
    draws, repeats, same = [], 0, 0
    for epoch in range(4):
        sampler.set_epoch(epoch)
        first: dict[str, tuple] = {}
        for batch in sampler:
            for key in batch:
                ex = ds[key]
                pair = (ex["positive"], tuple(ex["negatives"]))
                draws.append(pair)
                if ex["qid"] in first:
                    repeats += 1
                    same += pair == first[ex["qid"]]
                else:
                    first[ex["qid"]] = pair
                    assert key[2] == 0 and ds[key[:2]] == ex  # a first occurrence keeps the (seed, epoch, query) key
    assert repeats > 200  # 12 batches of 16 from 10 clusters of 20: many queries come back
    assert same / repeats < 0.05  # independent draws repeat a pair with probability 1/100 (before: always)
    # reproducible, and a resumed epoch draws exactly what the uninterrupted one drew
    sampler.set_epoch(3)
    full = [ds[key] for batch in sampler for key in batch]
    assert full == [ds[key] for batch in sampler for key in batch]
    sampler.skip = 5
    assert [ds[key] for batch in sampler for key in batch] == full[5 * 16 :]


def test_random_batches_keep_their_draws():
    """Plain random batches hold each query once an epoch: their draws are those of the (seed, epoch, query) key."""
    ds = _synthetic_dataset(64, 30)
    sampler = QueryBatchSampler(64, batch_size=8, seed=2)
    keys = [key for batch in sampler for key in batch]
    assert {k[2] for k in keys} == {0}
    assert [ds[k] for k in keys] == [ds[k[:2]] for k in keys]


def test_too_few_candidates_give_fewer_distinct_negatives(scifact_slice, tmp_path):
    """A query with 2 candidates and num_negatives=4 gets both once (no duplicate in the InfoNCE
    denominator); the collated batch pads its row of neg_index with -1 and the loss counts each passage once."""
    import math

    import torch

    from dr.data import NegativesRecord, read_corpus, read_qrels, write_negatives
    from dr.sampling import sample_negatives
    from dr.losses import InfoNCELoss

    rng = np.random.default_rng(0)
    assert sorted(sample_negatives(["a", "b"], 4, rng)) == ["a", "b"]
    qrels = read_qrels(scifact_slice["train_qrels"])
    docids = list(read_corpus(scifact_slice["corpus"])["docid"])
    qids = sorted(qrels)
    others = [d for d in docids if not any(d in qrels[q] for q in qids[:4])]
    records = [
        NegativesRecord(q, sorted(qrels[q]), others[10 * k : 10 * k + (2 if k == 0 else 10)])
        for k, q in enumerate(qids[:4])
    ]
    write_negatives(tmp_path / "neg.jsonl", records)
    dm = RetrievalDataModule(
        scifact_slice["corpus"],
        scifact_slice["train_queries"],
        scifact_slice["train_qrels"],
        negatives=str(tmp_path / "neg.jsonl"),
        num_negatives=4,
        batch_size=4,
    )
    dm.setup("fit")
    ds = dm.train_dataset
    rows = [ds.qids.index(q) for q in qids[:4]]
    for epoch in range(10):
        examples = [ds[(i, epoch)] for i in rows]
        assert sorted(examples[0]["negatives"]) == sorted(records[0].negatives)  # both, once each
        assert all(len(ex["negatives"]) == len(set(ex["negatives"])) == 4 for ex in examples[1:])
    batch = dm.collate_train(examples)
    assert batch["neg_index"][0].tolist()[2:] == [-1, -1] and (batch["neg_index"][1:] >= 0).all()
    assert len(batch["passages"]) == 4 + 2 + 3 * 4
    # InfoNCE over the batch = the hand-computed softmax with every passage once
    g = torch.Generator().manual_seed(0)
    q, d = torch.randn(4, 8, generator=g), torch.randn(len(batch["docids"]), 8, generator=g)
    loss = InfoNCELoss(temperature=1.0)(q, d, batch["target"], batch["exclude"]).item()
    s = (q @ d.T).tolist()
    by_hand = [
        -s[i][i] + math.log(sum(math.exp(v) for j, v in enumerate(s[i]) if j == i or not batch["exclude"][i, j]))
        for i in range(4)
    ]
    assert loss == pytest.approx(sum(by_hand) / 4, rel=1e-6)


def test_val_seed_fixes_the_held_out_queries_across_seeds(scifact_slice):
    def held_out(seed, val_seed=None):
        dm = RetrievalDataModule(
            scifact_slice["corpus"],
            scifact_slice["train_queries"],
            scifact_slice["train_qrels"],
            negatives=None,
            val_fraction=0.25,
            seed=seed,
            val_seed=val_seed,
        )
        dm.setup("fit")
        assert not set(dm.val_queries) & set(dm.train_dataset.qids)
        return sorted(dm.val_queries)

    draws = {tuple(held_out(seed)) for seed in range(6)}
    assert len(draws) > 1  # without val_seed the split follows the training seed
    fixed = held_out(1, val_seed=0)
    assert fixed == held_out(2, val_seed=0) == held_out(0)


# ---------------------------------------------------------------------- duplicate passages (issue 23 item 7)
def _qids_and_free_docids(scifact_slice, n: int):
    from dr.data import read_corpus, read_qrels

    qrels = read_qrels(scifact_slice["train_qrels"])
    qids = sorted(qrels)[:n]
    judged = {d for j in qrels.values() for d in j}
    free = [d for d in read_corpus(scifact_slice["corpus"])["docid"] if d not in judged]
    return qrels, qids, free


def test_a_negatives_row_with_repeated_ids_never_draws_one_twice(scifact_slice, tmp_path):
    """A row ['a', 'a', 'b', 'c'] read as is repeats 'a' in about 1 of 10 draws of 2 negatives."""
    from dr.data import NegativesRecord, write_negatives

    qrels, qids, free = _qids_and_free_docids(scifact_slice, 1)
    a, b, c = free[:3]
    write_negatives(tmp_path / "neg.jsonl", [NegativesRecord(qids[0], sorted(qrels[qids[0]]), [a, a, b, c])])
    dm = RetrievalDataModule(
        scifact_slice["corpus"],
        scifact_slice["train_queries"],
        scifact_slice["train_qrels"],
        negatives=str(tmp_path / "neg.jsonl"),
        num_negatives=2,
        batch_size=1,
    )
    dm.setup("fit")
    i = dm.train_dataset.qids.index(qids[0])
    draws = [dm.train_dataset[(i, epoch)]["negatives"] for epoch in range(200)]
    repeated = sum(len(set(d)) < len(d) for d in draws)
    assert repeated == 0, f"{repeated} of 200 draws repeat a negative"


def test_two_queries_sharing_a_negative_count_it_once_in_infonce(scifact_slice, tmp_path):
    """The shared negative is one passage of the batch: encoded once, once in every denominator
    (DPR Eq. 2 sums over the batch's distinct passages); each query keeps its own positive."""
    import math

    import torch

    from dr.data import NegativesRecord, write_negatives
    from dr.losses import InfoNCELoss

    qrels, qids, free = _qids_and_free_docids(scifact_slice, 2)
    shared = free[0]
    write_negatives(tmp_path / "neg.jsonl", [NegativesRecord(q, sorted(qrels[q]), [shared]) for q in qids])
    dm = RetrievalDataModule(
        scifact_slice["corpus"],
        scifact_slice["train_queries"],
        scifact_slice["train_qrels"],
        negatives=str(tmp_path / "neg.jsonl"),
        num_negatives=1,
        batch_size=2,
    )
    dm.setup("fit")
    ds = dm.train_dataset
    examples = [ds[(ds.qids.index(q), 0)] for q in qids]
    batch = dm.collate_train(examples)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, generator=g)
    distinct = [examples[0]["positive"], examples[1]["positive"], shared]
    emb = dict(zip(distinct, torch.randn(3, 8, generator=g)))
    d = torch.stack([emb[docid] for docid in batch["docids"]])  # the batch's passages, whatever their layout
    loss = InfoNCELoss(temperature=1.0)(q, d, batch["target"], batch["exclude"]).item()
    by_hand = []
    for i, ex in enumerate(examples):
        s = {docid: float(q[i] @ emb[docid]) for docid in distinct}
        denominator = [v for docid, v in s.items() if docid == ex["positive"] or docid not in ds.positives[ex["qid"]]]
        by_hand.append(-s[ex["positive"]] + math.log(sum(math.exp(v) for v in denominator)))
    assert loss == pytest.approx(sum(by_hand) / 2, rel=1e-6), (loss, sum(by_hand) / 2)
    assert len(batch["passages"]) == 3 and batch["docids"][int(batch["neg_index"][0, 0])] == shared
    assert batch["neg_index"][0, 0] == batch["neg_index"][1, 0]


def test_teacher_scores_of_swapped_negatives_files_keep_one_normalisation_per_query(scifact_slice, tmp_path):
    """Issue 23 item 9: with data.teacher_from_negatives=true each refreshed file carries a teacher's
    scores normalised over that file's list (here min-max, as the fusion teacher). After a swap
    every KD margin of a query must come from that one list, not mix it with an earlier list's."""
    from dr.data import NegativesRecord, write_negatives
    from dr.data.teacher_scores import write_teacher_scores
    from dr.teachers import normalize_scores

    qrels, qids, free = _qids_and_free_docids(scifact_slice, 4)
    rng = np.random.default_rng(0)
    positive = {q: sorted(qrels[q])[0] for q in qids}

    def group(q: str, negatives: list[str]) -> dict[str, float]:
        """A stub teacher: raw scores min-max normalised over the query's list (positive + negatives)."""
        docids = [positive[q], *negatives]
        return dict(zip(docids, normalize_scores(rng.normal(size=len(docids)), "minmax").tolist()))

    lists = [{q: free[12 * k + 3 * v : 12 * k + 3 * v + 3] for k, q in enumerate(qids)} for v in range(4)]
    teacher_file = {q: group(q, lists[0][q]) for q in qids}  # the teacher-score file: list 0
    write_teacher_scores(
        tmp_path / "teacher.tsv",
        [(s[positive[q]], s[n], q, positive[q], n) for q, s in teacher_file.items() for n in lists[0][q]],
    )
    files = []
    for v in (1, 2, 3):
        scores = {q: group(q, lists[v][q]) for q in qids}
        records = [
            NegativesRecord(
                q, [positive[q]], lists[v][q], [scores[q][n] for n in lists[v][q]], [scores[q][positive[q]]]
            )
            for q in qids
        ]
        write_negatives(tmp_path / f"v{v}.jsonl", records)
        files.append(scores)
    dm = RetrievalDataModule(
        scifact_slice["corpus"],
        scifact_slice["train_queries"],
        scifact_slice["train_qrels"],
        negatives=str(tmp_path / "v1.jsonl"),
        num_negatives=20,
        batch_size=4,
        teacher_scores=str(tmp_path / "teacher.tsv"),
        teacher_from_negatives=True,
    )
    dm.setup("fit")
    for v in (2, 3):
        dm.set_negatives(str(tmp_path / f"v{v}.jsonl"), v - 1)
        latest = files[v - 1]
        batch = dm.collate_train([dm.train_dataset[(dm.train_dataset.qids.index(q), 0)] for q in qids])
        mixed = pairs = 0
        for i, q in enumerate(qids):
            for j, col in enumerate(batch["neg_index"][i].tolist()):
                margin = float(batch["teacher_pos"][i] - batch["teacher_neg"][i, j])
                if col < 0 or math.isnan(margin):
                    continue
                pairs += 1
                d = batch["docids"][col]
                mixed += d not in latest[q] or abs(margin - (latest[q][positive[q]] - latest[q][d])) > 1e-6
        assert pairs and not mixed, f"after swap {v - 1}: {mixed} of {pairs} KD margins mix two lists' normalisations"
