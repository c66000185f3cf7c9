"""Matryoshka representation learning (losses/matryoshka.py): the maths against hand-computed
values, then a real run of the tiny BERT on the SciFact slice evaluated at every truncated
dimension, exported with ``truncate_dim`` and loaded by sentence-transformers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dr.losses import InfoNCELoss, MarginMSELoss, MatryoshkaLoss
from dr.losses.matryoshka import truncate

DR = Path(sys.executable).parent
TEXTS = [
    "a claim about cells",
    "mitochondria and proteins in the liver",
    "a third, longer passage about vaccines and immunity",
]

Q = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
D = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
TARGET = torch.tensor([0, 1])


def test_weighted_sum_over_dims_by_hand():
    """Normalised at 4 dims every cosine is 1/2: each query's InfoNCE (τ = 1) is log 2. At 2 dims
    the prefixes are one-hot and each query scores 1 on its positive, 0 on the other: log(1 + e⁻¹).
    With weights (1, 0.5): log 2 + 0.5 · log(1 + e⁻¹) = 0.849778."""
    loss = MatryoshkaLoss(InfoNCELoss(temperature=1.0), dims=[4, 2], weights=[1.0, 0.5], normalize=True)
    out = loss(Q, D, target=TARGET)
    assert out["loss_dim4"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert out["loss_dim2"].item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert out["loss"].item() == pytest.approx(math.log(2) + 0.5 * math.log(1 + math.exp(-1)), abs=1e-6)
    assert out["loss"].item() == pytest.approx(0.849778, abs=1e-6)


def test_without_normalisation_the_prefix_keeps_its_norm():
    """q1 doubled, raw dot products: at 4 dims q1 scores 2 on both passages (log 2), q2 1 on both
    (log 2); at 2 dims q1 scores (2, 0), log(1 + e⁻²), and q2 (0, 1), log(1 + e⁻¹)."""
    q = Q.clone()
    q[0] *= 2
    loss = MatryoshkaLoss(InfoNCELoss(temperature=1.0), dims=[4, 2], normalize=False)
    out = loss(q, D, target=TARGET)
    assert out["loss_dim4"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert out["loss_dim2"].item() == pytest.approx(
        (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2, abs=1e-6
    )
    assert out["loss"].item() == pytest.approx(out["loss_dim4"].item() + out["loss_dim2"].item(), abs=1e-6)
    # normalised, the doubling changes nothing (cosine)
    normalised = MatryoshkaLoss(InfoNCELoss(temperature=1.0), dims=[4, 2], normalize=True)
    assert normalised(q, D, target=TARGET)["loss"].item() == pytest.approx(0.693147 + 0.313262, abs=1e-5)


def test_only_the_listed_prefixes_get_gradient():
    q = torch.randn(3, 8, requires_grad=True)
    d = torch.randn(5, 8, requires_grad=True)
    MatryoshkaLoss(InfoNCELoss(), dims=[4, 2])(q, d, target=torch.tensor([0, 1, 2]))["loss"].backward()
    assert q.grad[:, :4].abs().sum() > 0 and d.grad[:, :4].abs().sum() > 0
    assert torch.equal(q.grad[:, 4:], torch.zeros(3, 4)) and torch.equal(d.grad[:, 4:], torch.zeros(5, 4))


def test_batch_tensors_reach_the_inner_loss():
    """Margin-MSE needs the teacher's scores: the wrapper at one dim is the inner loss on the prefix."""
    torch.manual_seed(0)
    q, d = torch.randn(2, 6), torch.randn(4, 6)
    batch = {
        "target": torch.tensor([0, 1]),
        "neg_index": torch.tensor([[2], [3]]),
        "teacher_pos": torch.tensor([5.0, 4.0]),
        "teacher_neg": torch.tensor([[1.0], [2.5]]),
    }
    wrapped = MatryoshkaLoss(MarginMSELoss(), dims=[3], normalize=True)(q, d, **batch)
    direct = MarginMSELoss()(truncate(q, 3, True), truncate(d, 3, True), **batch)
    assert wrapped["loss"].item() == pytest.approx(float(direct), rel=1e-6)


@pytest.mark.parametrize(
    "dims,weights,message",
    [
        ([], None, "dims must be distinct positive integers"),
        ([8, 8], None, "dims must be distinct positive integers"),
        ([8, 4], [1.0], "weights must be 2 non-negative numbers"),
        ([8, 4], [1.0, -1.0], "weights must be 2 non-negative numbers"),
    ],
)
def test_bad_dims_or_weights(dims, weights, message):
    with pytest.raises(ValueError, match=message):
        MatryoshkaLoss(InfoNCELoss(), dims=dims, weights=weights)


def test_a_dim_above_the_embedding_is_refused():
    with pytest.raises(ValueError, match=r"loss.dims=\[8, 4\]: every dim must be at most the embedding dimension 4"):
        MatryoshkaLoss(InfoNCELoss(), dims=[8, 4])(Q, D, target=TARGET)


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_train_evaluates_every_dim_and_exports_a_truncated_model(cfg_train, tmp_path):
    from sentence_transformers import SentenceTransformer

    from dr.data import read_run
    from dr.models.encoder import BiEncoder
    from dr.retrieval.index import DenseIndex
    from dr.retrieval.search import dense_retrieve
    from dr.training import TestSplit, train

    out = tmp_path / "mrl"
    cfg = cfg_train(
        "loss=matryoshka",
        "loss.dims=[32,16,8]",
        "test.bm25=false",
        "test.before=false",
        "export.truncate_dim=16",
        out=out,
    )
    metrics = train(cfg)
    for dim in (16, 8):
        assert 0.0 <= metrics[f"trained@{dim}/nDCG@10"] <= 1.0
        assert (out / "runs" / f"trained@{dim}.run").is_file()
    assert not any(k.startswith("trained@32") for k in metrics)  # the full dimension is the `trained` row
    assert "loss_dim8" in (out / "logs" / "metrics.csv").read_text().splitlines()[0]

    export = out / "export"
    assert json.loads((export / "config_sentence_transformers.json").read_text())["truncate_dim"] == 16
    assert json.loads((export / "dr_config.json").read_text())["truncate_dim"] == 16
    ours = BiEncoder.load(str(export), device="cpu")
    assert ours.dim == 16
    emb = ours.encode_passages(TEXTS, show_progress=False)
    assert emb.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    st = SentenceTransformer(str(export), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS, normalize_embeddings=True), emb, atol=1e-5)
    # the full model's first 16 dims, re-normalised, are the truncated model's embeddings
    full = BiEncoder.from_pretrained(str(export), truncate_dim=32).encode_passages(TEXTS, show_progress=False)
    cut = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, emb, atol=1e-5)
    assert DenseIndex.load(export / "index").index.d == 16
    card = (export / "README.md").read_text()
    assert "first 16 dimensions" in card and "Matryoshka Representation Learning" in card and "trained@8" in card

    # the trained@16 run is that of the truncated model encoding everything itself: the same scores
    # (a random tiny model's cosines nearly tie, so float rounding may swap neighbours at the cut-off)
    test = TestSplit(cfg.test)
    run = dense_retrieve(ours, test.corpus, test.queries, k=cfg.test.k, show_progress=False)
    logged = read_run(out / "runs" / "trained@16.run")
    assert set(run) == set(logged)
    for qid, scores in run.items():
        common = set(scores) & set(logged[qid])
        assert len(common) >= 0.9 * len(scores)
        assert max(abs(scores[d] - logged[qid][d]) for d in common) < 1e-4

    # dr-export cuts an exported model further; ONNX with a truncation is refused in one line
    done = subprocess.run(
        [str(DR / "dr-export"), f"model={export}", f"output={tmp_path / 'e8'}", "truncate_dim=8"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert SentenceTransformer(str(tmp_path / "e8"), device="cpu").encode(TEXTS).shape == (3, 8)
    done = subprocess.run(
        [str(DR / "dr-export"), f"model={export}", f"output={tmp_path / 'onnx'}", "truncate_dim=8", "format=onnx"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "dr-export: error: truncate_dim=8, format=onnx: the ONNX graph has no truncation; expected format=torch"
    )
    assert not (tmp_path / "onnx").exists()
    done = subprocess.run(
        [str(DR / "dr-encode"), f"model={export}", f"corpus={cfg.test.corpus}", "backend=onnx"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "dr-encode: error: backend=onnx: " in done.stderr and "embeds its first 16 dims" in done.stderr


def test_truncate_dims_of_a_plain_model_are_evaluated_too(cfg_train, tmp_path):
    from dr.training import train

    metrics = train(
        cfg_train(
            "test.truncate_dims=[8]",
            "test.bm25=false",
            "test.before=false",
            "export.enabled=false",
            out=tmp_path / "plain",
            max_steps=2,
        )
    )
    assert 0.0 <= metrics["trained@8/nDCG@10"] <= 1.0


def test_bad_matryoshka_settings_are_refused(cfg_train):
    from dr.config import ConfigError
    from dr.validate import validate_config

    with pytest.raises(ConfigError, match=r"loss.dims=\[\]: expected a non-empty list of positive integers"):
        validate_config(cfg_train("loss=matryoshka", "loss.dims=[]"))
    with pytest.raises(ConfigError, match="export.truncate_dim=0: expected a positive integer"):
        validate_config(cfg_train("export.truncate_dim=0"))
