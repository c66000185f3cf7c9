"""The distillation pieces of the recipe (#11 item 3): InfoNCE + listwise KD over each query's
candidates, Margin-MSE's ``student_scale: auto`` and learnable scale, the teacher-pair filter."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from dr.data import TeacherScores, drop_teacher_inversions, read_qrels
from dr.data.teacher_scores import write_teacher_scores
from dr.training import train
from dr.losses import InfoNCEKDLoss, MarginMSELoss, candidate_kd, info_nce
from dr.losses.margin_mse import fit_student_scale


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


def test_candidate_kd_on_hand_values():
    # list [pos, n0] (n1's teacher score is NaN, n2 missing): student logits [0.5, 0.3] / 0.1 = [5, 3],
    # teacher logits [1.0, 0.5] / 0.5 = [2, 1]
    s_pos, s_neg = torch.tensor([0.5]), torch.tensor([[0.3, 0.1, 9.0]])
    t_pos, t_neg = torch.tensor([1.0]), torch.tensor([[0.5, float("nan"), 0.0]])
    present = torch.tensor([[True, True, False]])
    p_s = [math.e**2 / (1 + math.e**2), 1 / (1 + math.e**2)]
    p_t = [math.e / (1 + math.e), 1 / (1 + math.e)]
    got = candidate_kd(s_pos, s_neg, t_pos, t_neg, present, student_temperature=0.1, teacher_temperature=0.5)
    assert float(got) == pytest.approx(_kl(p_t, p_s), rel=1e-5)
    # a second query with an unscored positive is left out of the mean; no list at all gives a graph zero
    got2 = candidate_kd(
        torch.tensor([0.5, 0.2]),
        torch.tensor([[0.3, 0.1, 9.0], [0.1, 0.0, 0.0]]),
        torch.tensor([1.0, float("nan")]),
        torch.tensor([[0.5, float("nan"), 0.0], [0.2, 0.1, 0.0]]),
        torch.tensor([[True, True, False], [True, True, True]]),
        0.1,
        0.5,
    )
    assert float(got2) == pytest.approx(float(got), rel=1e-6)
    s = torch.tensor([0.5], requires_grad=True)
    zero = candidate_kd(s, torch.tensor([[0.1]]), torch.tensor([float("nan")]), torch.tensor([[0.0]]))
    assert float(zero) == 0.0 and zero.requires_grad


def test_infonce_kd_loss_is_infonce_plus_alpha_kd():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)  # positives 0, 1; q0's negatives 2, 3; q1's 4, 5
    target, neg_index = torch.tensor([0, 1]), torch.tensor([[2, 3], [4, 5]])
    t_pos, t_neg = torch.tensor([0.9, 0.8]), torch.tensor([[0.4, 0.7], [0.2, 0.1]])
    loss = InfoNCEKDLoss(temperature=0.05, alpha=0.5, teacher_temperature=0.1)
    out = loss(q, d, target=target, neg_index=neg_index, teacher_pos=t_pos, teacher_neg=t_neg)
    s = q @ d.T
    expected_kd = 0.0
    for i in range(2):
        student = torch.softmax(torch.stack([s[i, target[i]], *s[i, neg_index[i]]]) / 0.05, 0).tolist()
        teacher = torch.softmax(torch.cat([t_pos[i : i + 1], t_neg[i]]) / 0.1, 0).tolist()
        expected_kd += _kl(teacher, student) / 2
    assert float(out["kd"]) == pytest.approx(expected_kd, rel=1e-5)
    assert float(out["infonce"]) == pytest.approx(float(info_nce(s, target, None, 0.05)), rel=1e-6)
    assert float(out["loss"]) == pytest.approx(float(out["infonce"]) + 0.5 * expected_kd, rel=1e-5)


def test_fit_student_scale_on_hand_values():
    # c = (1·2 + 2·4.2) / (1 + 4) = 2.08; the NaN pair is left out
    assert fit_student_scale(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.2, float("nan")])) == pytest.approx(
        2.08
    )
    assert fit_student_scale(torch.tensor([0.0]), torch.tensor([1.0])) == 1.0


def test_learnable_scale_is_a_parameter_and_scales_the_student():
    loss = MarginMSELoss(student_scale=4.0, learnable_scale=True)
    assert [n for n, _ in loss.named_parameters()] == ["log_scale"]
    q, d = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.8, 0.6], [0.5, 0.0]])
    out = loss(
        q,
        d,
        target=torch.tensor([0]),
        neg_index=torch.tensor([[1]]),
        teacher_pos=torch.tensor([2.0]),
        teacher_neg=torch.tensor([[0.0]]),
    )
    # student margin 4 · (0.8 - 0.5) = 1.2, teacher margin 2: (1.2 - 2)² = 0.64
    assert float(out["loss"]) == pytest.approx(0.64, rel=1e-6) and float(out["student_scale"]) == pytest.approx(4.0)
    out["loss"].backward()
    assert loss.log_scale.grad is not None and float(loss.log_scale.grad) < 0  # a larger scale lowers the loss
    with pytest.raises(RuntimeError, match="not fitted"):
        MarginMSELoss(student_scale="auto")(
            q,
            d,
            target=torch.tensor([0]),
            neg_index=torch.tensor([[1]]),
            teacher_pos=torch.tensor([2.0]),
            teacher_neg=torch.tensor([[0.0]]),
        )


def _teacher_file(data: dict, path, scale: float = 3.0):
    """Every training query's positives against 3 other queries' positives, at margins that grow."""
    qrels = read_qrels(data["train_qrels"])
    qids = sorted(qrels)
    rows = [
        (scale, scale * (0.1 * k), q, p, n)
        for i, q in enumerate(qids)
        for p in qrels[q]
        for k in range(1, 4)
        for n in qrels[qids[(i + k) % len(qids)]]
        if n not in qrels[q]
    ]
    write_teacher_scores(path, rows)
    return path


def test_student_scale_auto_is_fitted_logged_and_used(cfg_train, scifact_slice, tmp_path):
    teacher = _teacher_file(scifact_slice, tmp_path / "teacher.tsv")
    cfg = cfg_train(
        "loss=margin_mse",
        "loss.student_scale=auto",
        "loss.learnable_scale=true",
        "loss.auto_scale_queries=16",
        f"data.teacher_scores={teacher}",
        "data.negatives=null",
        "test.enabled=false",
        "export.enabled=false",
        max_steps=2,
    )
    train(cfg)
    rows = list(csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")))
    fitted = [float(r["train/student_scale_fit"]) for r in rows if r.get("train/student_scale_fit")]
    learned = [float(r["train/student_scale"]) for r in rows if r.get("train/student_scale")]
    assert len(fitted) == 1 and fitted[0] > 0 and fitted[0] != 1.0
    assert learned and learned[0] == pytest.approx(fitted[0], rel=0.05)  # the learnable scale starts at the fit


def test_drop_teacher_inversions_on_hand_values():
    teacher = TeacherScores()
    teacher.add("q1", "p1", "n1", 1.0, 0.5)  # kept
    teacher.add("q1", "p1", "n2", 1.0, 1.0)  # at the positive: dropped
    teacher.add("q1", "p1", "n3", 1.0, 1.2)  # above: dropped
    teacher.add("q2", "p1", "m", 0.9, 0.7)  # kept: below p1
    teacher.add("q2", "p2", "m", 0.6, 0.7)  # dropped: above p2
    negatives = {"q1": ["n1", "n2", "n3", "n4"], "q2": ["m", "m2"]}
    positives = {"q1": ["p1"], "q2": ["p1", "p2"]}
    assert drop_teacher_inversions(teacher, negatives, positives) == (3, 3)
    assert teacher.pairs == {"q1": [("p1", "n1")], "q2": [("p1", "m")]}
    # n4 and m2 are unscored: kept; m is above one of q2's positives: not a candidate any more
    assert negatives == {"q1": ["n1", "n4"], "q2": ["m2"]}


def test_teacher_pair_filter_in_the_datamodule(compose_config, scifact_slice, tmp_path):
    import hydra

    qrels = read_qrels(scifact_slice["train_qrels"])
    qids = sorted(qrels)
    # each query: its positive at 1.0, the next query's positive at 2.0 (inverted), the one after at 0.0
    rows = [
        (1.0, score, q, p, n)
        for i, q in enumerate(qids)
        for p in qrels[q]
        for k, score in [(1, 2.0), (2, 0.0)]
        for n in qrels[qids[(i + k) % len(qids)]]
        if n not in qrels[q]
    ]
    write_teacher_scores(tmp_path / "t.tsv", rows)
    last = {(q, n): s for _, s, q, _, n in rows}  # the file's last score wins (queries may share positives)
    inverted = {pair for pair, s in last.items() if s >= 1.0}
    assert inverted
    for on in (False, True):
        cfg = compose_config(
            "train",
            [
                f"data.corpus={scifact_slice['corpus']}",
                f"data.train_queries={scifact_slice['train_queries']}",
                f"data.train_qrels={scifact_slice['train_qrels']}",
                f"data.teacher_scores={tmp_path / 't.tsv'}",
                "data.negatives=null",
                "data.val_fraction=0",
                f"data.teacher_pair_filter={str(on).lower()}",
            ],
        )
        dm = hydra.utils.instantiate(cfg.data)
        dm.setup()
        candidates = {(q, n) for q, negs in dm.train_dataset.negatives.items() for n in negs}
        pairs = {(q, n) for q, ps in dm.teacher.pairs.items() for _, n in ps}
        if on:
            assert not candidates & inverted, sorted(candidates & inverted)[:5]
            assert not pairs & inverted and candidates
        else:
            assert inverted <= candidates
