"""The query batch sampler and the contrastive batches it feeds."""

from __future__ import annotations

from dr.retrieval import BM25Negatives
from dr.sampling import QueryBatchSampler
from dr.training import RetrievalDataModule


def test_sampler_covers_each_query_once_per_epoch_and_reshuffles():
    sampler = QueryBatchSampler(100, batch_size=8, seed=1, drop_last=True)
    epoch0 = [i for batch in sampler for i, e in batch]
    assert len(epoch0) == 96 and len(set(epoch0)) == 96
    sampler.set_epoch(1)
    epoch1 = [i for batch in sampler for i, e in batch]
    assert epoch0 != epoch1
    sampler.set_epoch(0)
    assert [i for batch in sampler for i, e in batch] == epoch0  # deterministic per (seed, epoch)


def test_ddp_ranks_draw_disjoint_queries_within_each_global_step():
    ranks = [QueryBatchSampler(50, batch_size=4, seed=3, rank=r, world_size=3) for r in range(3)]
    assert len({len(s) for s in ranks}) == 1 and len(ranks[0]) == 50 // 12
    for step_batches in zip(*ranks):
        ids = [i for batch in step_batches for i, _ in batch]
        assert len(ids) == 12 and len(set(ids)) == 12
    every = [i for s in ranks for batch in s for i, _ in batch]
    assert len(every) == len(set(every))


def test_resume_skips_the_batches_already_trained_on():
    full = list(QueryBatchSampler(64, batch_size=8, seed=5))
    resumed = QueryBatchSampler(64, batch_size=8, seed=5)
    resumed.skip = 3
    assert list(resumed) == full[3:]
    assert list(resumed) == full  # the skip applies once


def test_collate_masks_other_positives_of_the_query(scifact_slice):
    dm = RetrievalDataModule(scifact_slice["corpus"], scifact_slice["train_queries"], scifact_slice["train_qrels"],
                             negatives=BM25Negatives(0, 20), num_negatives=1, batch_size=4)
    dm.setup("fit")
    ds = dm.train_dataset
    multi = [i for i, q in enumerate(ds.qids) if len(ds.positives[q]) > 1]
    assert multi, "the slice should hold a query with several positives"
    examples = [ds[(multi[0], 0)], ds[(multi[0], 0)]] + [ds[(i, 0)] for i in range(2)]
    batch = dm.collate_train(examples)
    # Two copies of the same query: each one's positive is the other's target, so it is masked.
    # (The mask marks every known positive, the target included; the loss never masks the target.)
    assert batch["exclude"][0, 1] and batch["exclude"][1, 0]
    n = len(examples)
    for i, ex in enumerate(examples):
        positives = set(ds.positives[ex["qid"]])
        assert ex["positive"] in positives
        assert not set(ex["negatives"]) & positives
        for j, passage in enumerate(batch["passages"]):
            if j != batch["target"][i]:
                docid = (examples[j]["positive"] if j < n else examples[(j - n)]["negatives"][0])
                assert bool(batch["exclude"][i, j]) == (docid in positives)


def test_negatives_are_redrawn_each_epoch_from_the_rank_window(scifact_slice):
    dm = RetrievalDataModule(scifact_slice["corpus"], scifact_slice["train_queries"], scifact_slice["train_qrels"],
                             negatives=BM25Negatives(10, 50), num_negatives=1, batch_size=4)
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
    dm = RetrievalDataModule(scifact_slice["corpus"], scifact_slice["train_queries"], scifact_slice["train_qrels"], **common)
    dm.setup("fit")
    assert qids[0] in dm.train_dataset.qids and len(dm.train_dataset.qids) > 2
    i = dm.train_dataset.qids.index(qids[0])
    batch = dm.collate_train([dm.train_dataset[(i, 0)]])
    neg = batch["docids"][int(batch["neg_index"][0, 0])]
    expected = {r[4]: r[1] for r in rows if r[2] == qids[0]}
    assert batch["teacher_pos"].tolist() == [5.0] and batch["teacher_neg"][0, 0].item() == expected[neg]

    dm2 = RetrievalDataModule(scifact_slice["corpus"], scifact_slice["train_queries"], scifact_slice["train_qrels"], min_teacher_pairs=2, **common)
    dm2.setup("fit")
    assert dm2.train_dataset.qids == [qids[0]]
