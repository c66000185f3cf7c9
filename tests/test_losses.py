"""InfoNCE checked against softmax arithmetic written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from dr.losses import InfoNCELoss, info_nce

# Two queries, three passages: q0's positive is d0, q1's positive is d1, d2 is a hard negative.
SCORES = [[1.0, 0.5, -0.2], [0.3, 0.8, 0.1]]
TARGET = [0, 1]


def _row_loss(row: list[float], target: int, tau: float, keep: list[bool] | None = None) -> float:
    """-log softmax(row / tau)[target], the denominator over the kept entries only."""
    keep = keep or [True] * len(row)
    denominator = sum(math.exp(s / tau) for s, k in zip(row, keep) if k)
    return -math.log(math.exp(row[target] / tau) / denominator)


def test_info_nce_matches_hand_computation_at_temperature_one():
    # Row 0: -log(e^1 / (e^1 + e^0.5 + e^-0.2)); row 1: -log(e^0.8 / (e^0.3 + e^0.8 + e^0.1)).
    row0 = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(0.5) + math.exp(-0.2)))
    row1 = -math.log(math.exp(0.8) / (math.exp(0.3) + math.exp(0.8) + math.exp(0.1)))
    expected = (row0 + row1) / 2
    assert expected == pytest.approx(0.6947, abs=1e-4)  # the numbers themselves, for a reader
    loss = info_nce(torch.tensor(SCORES), torch.tensor(TARGET), temperature=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_temperature_divides_the_scores():
    tau = 0.05
    expected = (_row_loss(SCORES[0], 0, tau) + _row_loss(SCORES[1], 1, tau)) / 2
    # At tau = 0.05 the loss is ~5e-5: float32 (what info_nce computes in) keeps ~3 digits of it.
    loss = info_nce(torch.tensor(SCORES), torch.tensor(TARGET), temperature=tau)
    assert loss.item() == pytest.approx(expected, rel=1e-3)
    # Same value as temperature 1 on scores pre-divided by tau, and different from temperature 1.
    scaled = info_nce(torch.tensor(SCORES) / tau, torch.tensor(TARGET), temperature=1.0)
    assert loss.item() == pytest.approx(scaled.item(), rel=1e-3)
    assert loss.item() != pytest.approx(
        info_nce(torch.tensor(SCORES), torch.tensor(TARGET), temperature=1.0).item(), rel=1e-2
    )
    # Default temperature is 0.05.
    assert info_nce(torch.tensor(SCORES), torch.tensor(TARGET)).item() == pytest.approx(expected, rel=1e-3)


def test_exclude_drops_masked_entries_but_never_the_target():
    tau = 0.5
    # Row 0 excludes d1 (another positive of q0). Row 1 "excludes" d1, its own target, and d2:
    # the target must stay, so row 1's denominator keeps d0 and d1.
    exclude = torch.tensor([[False, True, False], [False, True, True]])
    row0 = -math.log(math.exp(1.0 / tau) / (math.exp(1.0 / tau) + math.exp(-0.2 / tau)))
    row1 = -math.log(math.exp(0.8 / tau) / (math.exp(0.3 / tau) + math.exp(0.8 / tau)))
    expected = (row0 + row1) / 2
    assert row0 == pytest.approx(_row_loss(SCORES[0], 0, tau, [True, False, True]))
    loss = info_nce(torch.tensor(SCORES), torch.tensor(TARGET), exclude=exclude, temperature=tau)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    unmasked = info_nce(torch.tensor(SCORES), torch.tensor(TARGET), temperature=tau)
    assert loss.item() < unmasked.item()


def test_gradient_pulls_positive_up_and_pushes_negatives_down():
    tau = 1.0
    scores = torch.tensor(SCORES, requires_grad=True)
    exclude = torch.tensor([[False, True, False], [False, False, False]])
    info_nce(scores, torch.tensor(TARGET), exclude=exclude, temperature=tau).backward()
    grad = scores.grad
    # Positives: negative gradient (descent raises their score); kept negatives: positive.
    assert grad[0, 0] < 0 and grad[1, 1] < 0
    assert grad[0, 2] > 0 and grad[1, 0] > 0 and grad[1, 2] > 0
    # Excluded entries get no gradient at all.
    assert grad[0, 1] == 0
    # dL/ds_ij = (softmax_ij - [j == target_i]) / (B * tau), the softmax over kept entries.
    z0 = math.exp(1.0) + math.exp(-0.2)
    z1 = math.exp(0.3) + math.exp(0.8) + math.exp(0.1)
    expected = [
        [(math.exp(1.0) / z0 - 1) / 2, 0.0, (math.exp(-0.2) / z0) / 2],
        [(math.exp(0.3) / z1) / 2, (math.exp(0.8) / z1 - 1) / 2, (math.exp(0.1) / z1) / 2],
    ]
    assert torch.allclose(grad, torch.tensor(expected), atol=1e-6)


def test_module_scores_embeddings_with_a_dot_product():
    # q = identity rows, so q @ d.T is d's columns: exactly SCORES.
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.3], [0.5, 0.8], [-0.2, 0.1]])
    assert torch.allclose(q @ d.T, torch.tensor(SCORES))
    loss = InfoNCELoss(temperature=1.0)(q, d, torch.tensor(TARGET))
    expected = (_row_loss(SCORES[0], 0, 1.0) + _row_loss(SCORES[1], 1, 1.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    exclude = torch.tensor([[False, True, False], [False, False, False]])
    masked = InfoNCELoss(temperature=1.0)(q, d, torch.tensor(TARGET), exclude)
    expected_masked = (_row_loss(SCORES[0], 0, 1.0, [True, False, True]) + _row_loss(SCORES[1], 1, 1.0)) / 2
    assert masked.item() == pytest.approx(expected_masked, rel=1e-6)


def test_module_gradient_reaches_embeddings():
    q = torch.tensor([[1.0, 0.0]], requires_grad=True)
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    InfoNCELoss(temperature=1.0)(q, d, torch.tensor([0])).backward()
    # Descent moves q towards its positive d0 and away from d1.
    assert q.grad[0, 0] < 0 and q.grad[0, 1] > 0


@pytest.mark.parametrize("tau", [0.0, -0.1])
def test_non_positive_temperature_is_rejected(tau):
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=tau)


# ------------------------------------------------------------------ precision: scores in fp32 under autocast
def _scores_near_70(seed: int = 0):
    """Unit-free dot products around 70 (a trained dot-product student's range) for 4 queries and
    8 passages (4 positives, then one negative per query), with teacher scores a few points apart."""
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0) * 70**0.5
    q = u + 0.4 * torch.randn(4, 64, generator=g)
    d = u + 0.4 * torch.randn(8, 64, generator=g)
    batch = dict(
        target=torch.arange(4),
        neg_index=torch.arange(4, 8)[:, None],
        teacher_pos=torch.tensor([9.0, 7.5, 8.0, 6.0]),
        teacher_neg=torch.tensor([[4.0], [5.5], [3.0], [5.0]]),
        teacher_matrix=torch.rand(4, 8, generator=g) * 10,
        exclude=torch.zeros(4, 8, dtype=torch.bool),
    )
    return q, d, batch


def _every_loss():
    from dr.losses import DistillationLoss, InBatchKLLoss, InBatchMarginMSELoss, MarginMSELoss

    return {
        "infonce": InfoNCELoss(temperature=1.0),
        "margin_mse": MarginMSELoss(),
        "inbatch_margin_mse": InBatchMarginMSELoss(),
        "inbatch_kl": InBatchKLLoss(temperature=1.0),
        "tas_b": DistillationLoss(MarginMSELoss(), InBatchMarginMSELoss()),
    }


@pytest.mark.parametrize("name", list(_every_loss()))
def test_losses_score_in_fp32_under_bf16_autocast(name):
    """Under bf16 autocast a matmul runs in bf16 even on fp32 inputs; scores around 70 then move in
    steps of 0.25–0.5. Every loss must give its fp32 value (to 1e-6 relative) whatever the autocast."""
    loss = _every_loss()[name]
    q, d, batch = _scores_near_70()
    batch = {k: v for k, v in batch.items() if k in loss.input_fields()}  # what the training module hands over
    value = lambda out: (out["loss"] if isinstance(out, dict) else out).item()  # noqa: E731
    exact = value(loss(q, d, **batch))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = value(loss(q, d, **batch))
        coarse = q.float() @ d.float().T  # what the losses computed before: a bf16 product
    assert coarse.dtype == torch.bfloat16 and (coarse.float() - q @ d.T).abs().max() > 0.05  # the test has power
    assert mixed == pytest.approx(exact, rel=1e-6)
