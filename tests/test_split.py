"""dr-split (interpolation / extrapolation, Zhan et al. CIKM 2022) and dr-eval split=."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from dr.data import read_qrels, read_queries, write_subset
from dr.models import BiEncoder
from dr.evaluation.splits import positives, read_split, resample


@pytest.fixture(scope="module")
def slice_files(tmp_path_factory):
    """120 train and 60 test SciFact claims: enough shared abstracts and near-duplicates for both sets."""
    return write_subset(tmp_path_factory.mktemp("split-slice"), n_train=120, n_test=60, n_extra=100)


def _embed(model: str, path: str) -> tuple[list[str], np.ndarray]:
    queries = read_queries(path)
    encoder = BiEncoder.load(model, {"pooling": "mean", "normalize": True}, device="cpu")
    emb = encoder.encode_queries(list(queries.values()), show_progress=False)
    return list(queries), emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _run_split(monkeypatch, out, *overrides):
    from dr.cli.split import main

    monkeypatch.setattr(sys, "argv", ["dr-split", f"hydra.run.dir={out}", *overrides])
    main()
    return json.loads((out / "split.json").read_text())


def test_dr_split_rules_hold_against_the_resampled_training_set(tiny_bert, slice_files, tmp_path, monkeypatch):
    train_ids, train_emb = _embed(tiny_bert, slice_files["train_queries"])
    test_ids, test_emb = _embed(tiny_bert, slice_files["test_queries"])
    # A threshold inside this random model's similarity range, so that both rules matter.
    threshold = float(np.quantile((test_emb @ train_emb.T).max(1), 0.6))
    files = [f"{k}={v}" for k, v in slice_files.items() if k != "corpus"]
    args = [
        f"model={tiny_bert}",
        "encoder.pooling=mean",
        "encoder.normalize=true",
        f"threshold={threshold}",
        "extrapolation_fraction=0.6",
        "max_removed_fraction=0.3",
        "seed=3",
        *files,
    ]
    result = _run_split(monkeypatch, tmp_path / "a", *args)
    out = tmp_path / "a"
    counts = result["counts"]
    assert counts["interpolation"] + counts["extrapolation"] == 60 and counts["train_removed"] > 0
    assert counts["extrapolation"] > counts["extrapolation_before_resampling"]

    kept = read_queries(out / "train.queries.tsv")
    kept_rows = [train_ids.index(q) for q in kept]
    kept_docs = {d for q, judged in read_qrels(out / "train.qrels.trec").items() for d, g in judged.items() if g >= 1}
    assert set(kept) == set(result["train_kept"]) and len(kept) == counts["train_kept"]
    for label in ("interpolation", "extrapolation"):
        qrels = read_qrels(out / f"{label}.qrels.trec")
        for q in read_queries(out / f"{label}.queries.tsv"):
            max_sim = float((test_emb[test_ids.index(q)] @ train_emb[kept_rows].T).max())
            shares = bool({d for d, g in qrels[q].items() if g >= 1} & kept_docs)
            if label == "extrapolation":
                assert max_sim < threshold + 1e-5 and not shares, q
            else:
                assert max_sim >= threshold - 1e-5 or shares, q
    assert (out / "similarities.png").stat().st_size > 10_000
    assert read_split(out).labels == result["labels"]

    again = _run_split(monkeypatch, tmp_path / "b", *args)
    assert again["labels"] == result["labels"] and again["train_kept"] == result["train_kept"]
    other = _run_split(monkeypatch, tmp_path / "c", *args[:-5], "seed=4", *files)
    assert other["removed"] != result["removed"]


def test_resample_without_resampling_labels_against_the_full_training_set(slice_files):
    """extrapolation_fraction=0 keeps every training query: a test query sharing an abstract is interpolation."""
    train, test = read_qrels(slice_files["train_qrels"]), read_qrels(slice_files["test_qrels"])
    tr, te = positives(train), positives(test)
    rng = np.random.default_rng(0)
    train_emb, test_emb = rng.normal(size=(len(tr), 8)), rng.normal(size=(len(te), 8))
    split = resample(list(tr), train_emb, tr, list(te), test_emb, te, threshold=0.99, extrapolation_fraction=0)
    assert split.train_kept == list(tr) and not split.removed
    train_docs = set().union(*tr.values())
    for q, docs in te.items():
        assert split.labels[q] == ("interpolation" if docs & train_docs else "extrapolation")
    assert split.counts()["test_sharing_a_document_with_train"] == sum(bool(d & train_docs) for d in te.values())


def test_dr_eval_split_reports_both_sets_and_the_gap(tiny_bert, slice_files, tmp_path, monkeypatch):
    files = [f"{k}={v}" for k, v in slice_files.items() if k != "corpus"]
    _run_split(
        monkeypatch, tmp_path / "split", f"model={tiny_bert}", "threshold=1.0", "extrapolation_fraction=0", *files
    )
    from dr.cli.evaluate import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "dr-eval",
            f"model={tiny_bert}",
            f"corpus={slice_files['corpus']}",
            f"split={tmp_path / 'split'}",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
    )
    main()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    split = read_split(tmp_path / "split")
    assert metrics["interpolation/queries"] == len(split.qids("interpolation")) > 0
    assert metrics["extrapolation/queries"] == len(split.qids("extrapolation")) > 0
    for m in ("nDCG@10", "R@100"):
        assert metrics[f"gap/{m}"] == pytest.approx(metrics[f"interpolation/{m}"] - metrics[f"extrapolation/{m}"])
        # The two sets partition the test queries: the overall mean is their weighted mean.
        n_i, n_e = metrics["interpolation/queries"], metrics["extrapolation/queries"]
        assert metrics[m] == pytest.approx(
            (n_i * metrics[f"interpolation/{m}"] + n_e * metrics[f"extrapolation/{m}"]) / (n_i + n_e)
        )
