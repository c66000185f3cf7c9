"""Distillation losses against hand-computed values, and real training steps with teachers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dr.data import read_qrels, read_queries
from dr.data.teacher_scores import write_teacher_scores
from dr.losses import (
    DistillationLoss,
    InBatchKLLoss,
    InBatchMarginMSELoss,
    MarginMSELoss,
    inbatch_margin_mse,
    listwise_kl,
    margin_mse,
)

nan = float("nan")


# ------------------------------------------------------------------ Margin-MSE
def test_margin_mse_pairwise_value_and_gradient():
    s_pos = torch.tensor([1.0, 0.5], requires_grad=True)
    s_neg = torch.tensor([0.2, 0.7], requires_grad=True)
    # student margins (0.8, -0.2), teacher margins (2, -1): differences (-1.2, 0.8)
    loss = margin_mse(s_pos, s_neg, torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0]))
    assert loss.item() == pytest.approx((1.44 + 0.64) / 2)
    loss.backward()
    # d/ds_pos = 2·diff/2: the first margin is too small, so descent raises s_pos[0] and lowers s_neg[0]
    assert s_pos.grad.tolist() == pytest.approx([-1.2, 0.8])
    assert s_neg.grad.tolist() == pytest.approx([1.2, -0.8])


def test_margin_mse_multi_negative_skips_nan_and_missing():
    s_pos = torch.tensor([1.0, 2.0], requires_grad=True)
    s_neg = torch.tensor([[0.5, 0.0, 9.0], [1.0, 1.5, 0.0]], requires_grad=True)
    t_pos = torch.tensor([2.0, nan])  # query 1 unscored: all its pairs are skipped
    t_neg = torch.tensor([[1.0, nan, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss = margin_mse(s_pos, s_neg, t_pos, t_neg, mask)
    assert loss.item() == pytest.approx((0.5 - 1.0) ** 2)  # only (q0, neg0) is valid
    loss.backward()
    assert torch.isfinite(s_neg.grad).all() and torch.isfinite(s_pos.grad).all()
    assert s_neg.grad[0, 1] == 0 and s_neg.grad[0, 2] == 0 and s_pos.grad[1] == 0
    # one margin per negative, averaged: two valid negatives
    loss2 = margin_mse(torch.tensor([1.0]), torch.tensor([[0.5, 0.0]]), torch.tensor([2.0]), torch.tensor([[1.0, 1.0]]))
    assert loss2.item() == pytest.approx(((0.5 - 1.0) ** 2 + (1.0 - 1.0) ** 2) / 2)


def test_margin_mse_no_valid_pair_is_a_zero_with_a_graph():
    s_pos = torch.tensor([1.0], requires_grad=True)
    loss = margin_mse(s_pos, torch.tensor([[0.3]]), torch.tensor([nan]), torch.tensor([[1.0]]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert s_pos.grad.tolist() == [0.0]


def test_margin_mse_loss_module_on_embeddings():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    d = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.3, 0.6]])  # [pos0, pos1, neg0, neg1]
    neg_index = torch.tensor([[2], [3]])
    t_pos, t_neg = torch.tensor([4.0, 3.0]), torch.tensor([[1.0], [2.0]])
    loss = MarginMSELoss()(q, d, target=torch.arange(2), neg_index=neg_index, teacher_pos=t_pos, teacher_neg=t_neg)
    # q0: 0.9-0.5=0.4 vs 3 -> (-2.6)²; q1: 0.8-0.6=0.2 vs 1 -> (-0.8)²
    assert loss.item() == pytest.approx((2.6**2 + 0.8**2) / 2)
    scaled = MarginMSELoss(student_scale=10.0)(
        q, d, target=torch.arange(2), neg_index=neg_index, teacher_pos=t_pos, teacher_neg=t_neg
    )
    assert scaled.item() == pytest.approx((1.0**2 + 1.0**2) / 2)
    with pytest.raises(ValueError, match="teacher_scores"):
        MarginMSELoss()(q, d, target=torch.arange(2), neg_index=neg_index)


# ------------------------------------------------------------------ in-batch term
S = torch.tensor([[0.9, 0.3, 0.5, 0.1], [0.2, 0.8, 0.4, 0.6]])  # columns: pos0, pos1, neg0, neg1
T = torch.tensor([[5.0, 1.0, 3.0, 2.0], [1.0, 4.0, 1.0, 3.0]])
NEG = torch.tensor([[2], [3]])
# in-batch positives: q0 vs pos1: (0.6 - 4)² = 11.56; q1 vs pos0: (0.6 - 3)² = 5.76
# in-batch negatives: q0 vs neg1: (0.8 - 3)² = 4.84; q1 vs neg0: (0.4 - 3)² = 6.76
L_POS, L_NEG = (11.56 + 5.76) / 2, (4.84 + 6.76) / 2


def test_inbatch_margin_mse_by_hand():
    parts = inbatch_margin_mse(S, T, torch.arange(2), NEG)
    assert parts["inbatch_pos"].item() == pytest.approx(L_POS)
    assert parts["inbatch_neg"].item() == pytest.approx(L_NEG)
    assert parts["inbatch"].item() == pytest.approx(0.5 * (L_POS + L_NEG))


def test_inbatch_masks_own_positive_and_own_negatives():
    base = inbatch_margin_mse(S, T, torch.arange(2), NEG)["inbatch"].item()
    for i, j in ((0, 2), (1, 3)):  # a query's own negative is the pairwise term's business
        moved = S.clone()
        moved[i, j] += 5.0
        # s_pos still enters every margin of row i, so move only the own-negative column
        assert inbatch_margin_mse(moved, T, torch.arange(2), NEG)["inbatch"].item() == pytest.approx(base)
        t_moved = T.clone()
        t_moved[i, j] = -100.0
        assert inbatch_margin_mse(S, t_moved, torch.arange(2), NEG)["inbatch"].item() == pytest.approx(base)
    moved = S.clone()
    moved[0, 3] += 1.0  # another query's negative counts
    assert inbatch_margin_mse(moved, T, torch.arange(2), NEG)["inbatch"].item() != pytest.approx(base)


def test_inbatch_skips_nan_teacher_and_handles_no_negatives():
    t = T.clone()
    t[0, 3] = nan
    parts = inbatch_margin_mse(S, t, torch.arange(2), NEG)
    assert parts["inbatch_neg"].item() == pytest.approx(6.76)
    only_pos = inbatch_margin_mse(S[:, :2], T[:, :2], torch.arange(2), torch.zeros(2, 0, dtype=torch.long))
    assert set(only_pos) == {"inbatch", "inbatch_pos"} and only_pos["inbatch"].item() == pytest.approx(L_POS)


def test_inbatch_gradient_direction():
    s = S.clone().requires_grad_(True)
    inbatch_margin_mse(s, T, torch.arange(2), NEG)["inbatch"].backward()
    # every student margin is smaller than the teacher's: descent raises s_pos, lowers the others
    assert s.grad[0, 0] < 0 and s.grad[1, 1] < 0
    assert s.grad[0, 1] > 0 and s.grad[0, 3] > 0 and s.grad[1, 0] > 0 and s.grad[1, 2] > 0
    assert s.grad[0, 2] == 0 and s.grad[1, 3] == 0  # own negatives masked


def test_listwise_kl_by_hand_with_temperature():
    s = torch.tensor([[0.0, 0.0, 7.0]], requires_grad=True)
    t = torch.tensor([[math.log(3.0), 0.0, nan]])  # NaN: left out of both softmaxes
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    loss = listwise_kl(s, t, temperature=1.0)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert s.grad[0].tolist() == pytest.approx([0.5 - 0.75, 0.5 - 0.25, 0.0])  # T·(p_s − p_t)
    # T = 2 on doubled teacher scores: same distributions, loss scaled by T² = 4
    assert listwise_kl(s.detach(), 2 * t, temperature=2.0).item() == pytest.approx(4 * expected)
    q = torch.eye(2)
    d = S.T.contiguous()
    assert InBatchKLLoss(temperature=1.0)(q, d, teacher_matrix=T).item() == pytest.approx(listwise_kl(S, T).item())


def test_distillation_loss_combines_pair_and_inbatch():
    q, d = torch.eye(2), S.T.contiguous()  # q @ d.T == S
    inputs = dict(
        target=torch.arange(2),
        neg_index=NEG,
        teacher_pos=torch.tensor([5.0, 4.0]),
        teacher_neg=torch.tensor([[3.0], [3.0]]),
        teacher_matrix=T,
    )
    out = DistillationLoss(MarginMSELoss(), InBatchMarginMSELoss(), inbatch_weight=0.75)(q, d, **inputs)
    pair = ((0.4 - 2.0) ** 2 + (0.2 - 1.0) ** 2) / 2
    assert out["pair"].item() == pytest.approx(pair)
    assert out["inbatch"].item() == pytest.approx(0.5 * (L_POS + L_NEG))
    assert out["loss"].item() == pytest.approx(pair + 0.75 * 0.5 * (L_POS + L_NEG))
    with pytest.raises(ValueError, match="inbatch_teacher"):
        DistillationLoss(MarginMSELoss(), InBatchMarginMSELoss())(q, d, **{**inputs, "teacher_matrix": None})


def test_student_scale_applies_to_both_tas_b_terms():
    """TAS-B's two terms must target one student scale: student_scale multiplies q·d in the in-batch
    term too (Margin-MSE and listwise KL), whether given to the pair term or to DistillationLoss."""
    q, d = torch.eye(2), S.T.contiguous()  # q @ d.T == S
    inputs = dict(
        target=torch.arange(2),
        neg_index=NEG,
        teacher_pos=torch.tensor([5.0, 4.0]),
        teacher_neg=torch.tensor([[3.0], [3.0]]),
        teacher_matrix=T,
    )
    scaled = 3.0 * S
    # by hand on 3·S: in-batch positives q0 vs pos1: (3·0.6 − 4)², q1 vs pos0: (3·0.6 − 3)²;
    # in-batch negatives q0 vs neg1: (3·0.8 − 3)², q1 vs neg0: (3·0.4 − 3)²
    l_pos, l_neg = ((1.8 - 4) ** 2 + (1.8 - 3) ** 2) / 2, ((2.4 - 3) ** 2 + (1.2 - 3) ** 2) / 2
    pair = ((3 * 0.4 - 2.0) ** 2 + (3 * 0.2 - 1.0) ** 2) / 2
    for loss in (
        DistillationLoss(MarginMSELoss(student_scale=3.0), InBatchMarginMSELoss()),
        DistillationLoss(MarginMSELoss(), InBatchMarginMSELoss(), student_scale=3.0),
    ):
        out = loss(q, d, **inputs)
        assert out["pair"].item() == pytest.approx(pair)
        assert out["inbatch"].item() == pytest.approx(0.5 * (l_pos + l_neg))
        assert loss.inbatch.student_scale == loss.pair.student_scale == 3.0
    kl = DistillationLoss(MarginMSELoss(student_scale=3.0), InBatchKLLoss(temperature=2.0))(q, d, **inputs)
    assert kl["inbatch"].item() == pytest.approx(listwise_kl(scaled, T, 2.0).item())
    with pytest.raises(ValueError, match="student_scale"):
        DistillationLoss(MarginMSELoss(student_scale=2.0), InBatchMarginMSELoss(), student_scale=3.0)


def test_tas_b_config_shares_student_scale(compose_config, tmp_path):
    import hydra

    cfg = compose_config("train", [f"paths.output_dir={tmp_path}", "loss=tas_b", "loss.student_scale=2"])
    loss = hydra.utils.instantiate(cfg.loss)
    assert loss.pair.student_scale == loss.inbatch.student_scale == 2.0
    cfg = compose_config("train", [f"paths.output_dir={tmp_path}", "loss=margin_mse_kl", "loss.student_scale=2"])
    loss = hydra.utils.instantiate(cfg.loss)
    assert loss.pair.student_scale == loss.inbatch.student_scale == 2.0


# ------------------------------------------------------------------ real training steps
def _teacher_file(data: dict, path: Path) -> Path:
    """Random teacher scores for each train query: its positive against 3 other judged documents."""
    queries, qrels = read_queries(data["train_queries"]), read_qrels(data["train_qrels"])
    qids = [q for q in queries if q in qrels]
    docs = sorted({d for q in qids for d in qrels[q]})
    rng = np.random.default_rng(0)
    rows = []
    for q in qids:
        pos = sorted(qrels[q])[0]
        for neg in rng.choice([d for d in docs if d not in qrels[q]], size=3, replace=False):
            rows.append((rng.uniform(0.5, 1.0), rng.uniform(0.0, 0.6), q, pos, str(neg)))
    write_teacher_scores(path, rows)
    return path


def _train(cfg_train, out, extra):
    from dr.training import train

    overrides = [
        "encoder.passage_max_length=32",
        "data.val_fraction=0",
        "data.num_negatives=2",
        "trainer.log_every_n_steps=1",
        "test.enabled=false",
        "export.enabled=false",
        *extra,
    ]
    metrics = train(cfg_train(*overrides, out=out, max_steps=2))
    assert metrics["train/global_step"] == 2
    with open(out / "logs" / "metrics.csv") as f:
        return [row for row in csv.DictReader(f)]


def _logged(rows, name):
    return [float(r[name]) for r in rows if r.get(name)]


def test_training_with_teacher_file_margin_mse(cfg_train, tiny_bert, scifact_slice, tmp_path):
    teacher = _teacher_file(scifact_slice, tmp_path / "teacher.tsv")
    rows = _train(
        cfg_train, tmp_path / "run", ["loss=margin_mse", f"data.teacher_scores={teacher}", "data.negatives=null"]
    )
    losses = _logged(rows, "train/loss")
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)


def test_training_with_inbatch_fusion_teacher(cfg_train, tiny_bert, scifact_slice, tmp_path):
    teacher = _teacher_file(scifact_slice, tmp_path / "teacher.tsv")
    rows = _train(
        cfg_train,
        tmp_path / "run",
        [
            "loss=tas_b",
            f"data.teacher_scores={teacher}",
            "data.negatives=null",
            "inbatch_teacher=fusion",
            f"module.inbatch_teacher.model={tiny_bert}",
        ],
    )
    pair, inbatch, total = _logged(rows, "train/pair"), _logged(rows, "train/inbatch"), _logged(rows, "train/loss")
    assert len(pair) == len(inbatch) == len(total) == 2
    for p, i, t in zip(pair, inbatch, total):
        assert i > 0 and t == pytest.approx(p + 0.75 * i, rel=1e-5)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not any("inbatch_teacher" in k for k in ckpt["state_dict"])  # the teacher is not checkpointed


def test_training_with_teacher_scores_in_a_negatives_file(cfg_train, tiny_bert, scifact_slice, tmp_path):
    """data.teacher_from_negatives: the negatives file's scores (as dr-score writes them) are the teacher."""
    from dr.data.negatives import NegativesRecord, write_negatives
    from dr.data.teacher_scores import read_teacher_scores

    teacher = read_teacher_scores(_teacher_file(scifact_slice, tmp_path / "teacher.tsv"))
    records = []
    for qid, pairs in teacher.pairs.items():
        pos, negs = pairs[0][0], [n for _, n in pairs]
        records.append(
            NegativesRecord(qid, [pos], negs, [teacher.score(qid, n) for n in negs], [teacher.score(qid, pos)])
        )
    write_negatives(tmp_path / "scored.jsonl", records)
    rows = _train(
        cfg_train,
        tmp_path / "run",
        [
            "loss=margin_mse",
            f"data.negatives={tmp_path / 'scored.jsonl'}",
            "data.teacher_from_negatives=true",
        ],
    )
    losses = _logged(rows, "train/loss")
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)


def test_tas_b_inbatch_term_follows_a_learnt_or_fitted_pair_scale():
    """Issue 23.6: with learnable_scale=true the in-batch term kept the initial scale (pair 20.0,
    in-batch 5.0 after training), and student_scale=auto could not be used inside DistillationLoss.
    Both terms must score with one student scale: after log_scale moves, and after a fit."""
    import math

    from dr.losses import DistillationLoss, InBatchMarginMSELoss, MarginMSELoss

    torch.manual_seed(0)
    q, d = torch.randn(2, 4), torch.randn(4, 4)
    T = torch.randn(2, 4)
    fields = dict(
        target=torch.tensor([0, 1]),
        neg_index=torch.tensor([[2], [3]]),
        teacher_pos=torch.tensor([5.0, 4.0]),
        teacher_neg=torch.tensor([[3.0], [3.0]]),
        teacher_matrix=T,
    )
    loss = DistillationLoss(MarginMSELoss(student_scale=5.0, learnable_scale=True), InBatchMarginMSELoss())
    with torch.no_grad():
        loss.pair.log_scale.fill_(math.log(20.0))  # what training does to the learnt scale
    inbatch = loss(q, d, **fields)["inbatch"]
    expected = InBatchMarginMSELoss(student_scale=20.0)(
        q, d, target=fields["target"], neg_index=fields["neg_index"], teacher_matrix=T
    )["loss"]
    assert inbatch.item() == pytest.approx(expected.item(), rel=1e-6)
    auto = DistillationLoss(MarginMSELoss(student_scale="auto"), InBatchMarginMSELoss())
    auto.fit_scale(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0]))  # teacher = 3 x student
    assert auto.inbatch.scale() == pytest.approx(3.0) and auto.pair.scale() == pytest.approx(3.0)
