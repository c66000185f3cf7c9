"""dr.training (train(cfg)): end to end with a tiny BERT on a real SciFact slice, then resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dr.training import train


def test_train_evaluate_export_reload(cfg_train, tiny_bert, scifact_slice, tmp_path):
    out = tmp_path / "run"
    metrics = train(cfg_train())

    assert metrics["train/global_step"] == 4
    for name in ("bm25/nDCG@10", "zero_shot/nDCG@10", "trained/nDCG@10", "trained/R@100", "val/nDCG@10"):
        assert 0.0 <= metrics[name] <= 1.0, name
    written = json.loads((out / "metrics.json").read_text())
    assert written == pytest.approx(metrics)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "logs" / "metrics.csv").is_file()
    assert (out / "negatives.bm25.jsonl").is_file()
    for name in ("bm25", "zero_shot", "trained"):
        assert (out / "runs" / f"{name}.run").is_file()
    assert (out / "training_curves.png").is_file()
    from dr.retrieval.index import DenseIndex

    assert len(DenseIndex.load(out / "export" / "index")) == sum(1 for _ in open(scifact_slice["corpus"]))
    # Training changed the weights, and the export reloads to the same encoder.
    from dr.models.encoder import BiEncoder

    exported = BiEncoder.from_pretrained(str(out / "export"))
    untrained = BiEncoder.from_pretrained(tiny_bert, pooling="cls", normalize=True, similarity="cos")
    texts = ["a claim about cells", "another sentence"]
    e1 = exported.encode_passages(texts, show_progress=False)
    e0 = untrained.encode_passages(texts, show_progress=False)
    assert not np.allclose(e0, e1, atol=1e-4)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = {k[len("encoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    untrained.load_state_dict(state)
    np.testing.assert_allclose(untrained.encode_passages(texts, show_progress=False), e1, atol=1e-5)


def test_resume_continues_at_same_step_with_same_optimizer_state(cfg_train, tmp_path):
    """A run resumed from its step-2 checkpoint ends exactly where the uninterrupted run ends.

    The step-2 checkpoint is what a run killed between steps 2 and 4 leaves behind; resuming
    it must continue at step 2 with the same optimizer state, data order and dropout.
    """
    base = [
        "test.enabled=false",
        "export.enabled=false",
        "data.val_fraction=0",
        "callbacks.model_checkpoint.save_top_k=-1",
    ]
    straight = tmp_path / "straight"
    train(cfg_train(*base, out=straight))
    ckpt_path = straight / "checkpoints" / "step000002.ckpt"
    at_two = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert at_two["global_step"] == 2
    assert all(int(s["step"]) == 2 for s in at_two["optimizer_states"][0]["state"].values())

    resumed = tmp_path / "resumed"
    metrics = train(cfg_train(*base, f"ckpt_path={ckpt_path}", out=resumed))
    assert metrics["train/global_step"] == 4

    a = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 4
    state_a, state_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert int(state_a[key]["step"]) == int(state_b[key]["step"]) == 4
        torch.testing.assert_close(state_a[key]["exp_avg"], state_b[key]["exp_avg"], atol=1e-7, rtol=1e-4)
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(tensor, b["state_dict"][name], atol=1e-6, rtol=1e-4)


def test_train_from_a_negatives_file(cfg_train, scifact_slice, tmp_path):
    """Hard negatives read from a JSONL negatives file; a positive listed as a negative is dropped."""
    from dr.data import read_qrels
    from dr.data.negatives import NegativesRecord, read_negatives, write_negatives

    qrels = read_qrels(scifact_slice["train_qrels"])
    docids = [json.loads(line)["_id"] for line in open(scifact_slice["corpus"])]
    records = []
    for i, (qid, judged) in enumerate(sorted(qrels.items())):
        positives = sorted(judged)
        negatives = [d for d in docids[i : i + 5] if d not in judged] + positives[:1]  # a false negative on purpose
        records.append(NegativesRecord(qid, positives, negatives, [1.0] * len(negatives)))
    path = tmp_path / "negatives.jsonl"
    write_negatives(path, records)
    assert read_negatives(path)[records[0].qid].negatives == records[0].negatives

    from dr.training import RetrievalDataModule

    dm = RetrievalDataModule(
        scifact_slice["corpus"],
        scifact_slice["train_queries"],
        scifact_slice["train_qrels"],
        negatives=str(path),
        num_negatives=2,
        batch_size=8,
    )
    dm.setup("fit")
    for qid in dm.train_dataset.qids:
        assert not set(dm.train_dataset.negatives[qid]) & set(qrels[qid]), qid
    examples = [dm.train_dataset[(i, 0)] for i in range(8)]
    batch = dm.collate_train(examples)
    # the batch holds each distinct passage once (neighbouring queries share candidates here)
    distinct = {ex["positive"] for ex in examples} | {d for ex in examples for d in ex["negatives"]}
    assert len(batch["passages"]) == len(distinct) and batch["exclude"].shape == (8, len(distinct))

    overrides = [
        f"data.negatives={path}",
        "data.num_negatives=2",
        "test.enabled=false",
        "export.enabled=false",
        "data.val_fraction=0",
    ]
    assert train(cfg_train(*overrides, max_steps=2))["train/global_step"] == 2


def test_ddp_two_cpu_processes(cfg_train, tmp_path):
    """Lightning DDP (gloo) over 2 CPU processes trains and checkpoints through train(cfg)."""
    out = tmp_path / "run"
    train(
        cfg_train(
            "trainer.strategy=ddp_spawn",
            "trainer.devices=2",
            "test.enabled=false",
            "data.val_fraction=0",
            "export.enabled=true",
            max_steps=2,
        )
    )
    # ddp_spawn trains in child processes: the step count is read from the checkpoint they wrote,
    # and the trained weights come back to the parent, which exports them.
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    from dr.models.encoder import BiEncoder

    exported = BiEncoder.from_pretrained(str(out / "export"))
    state = {k[len("encoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    for name, tensor in exported.state_dict().items():
        torch.testing.assert_close(tensor, state[name])


def test_bucketed_and_checkpointed_training_runs(cfg_train):
    """The memory and padding levers go through a real Trainer."""
    metrics = train(
        cfg_train(
            "module.length_buckets=3",
            "module.gradient_checkpointing=true",
            "module.attention_dropout=0",
            "test.enabled=false",
            "export.enabled=false",
            "data.val_fraction=0",
            max_steps=2,
        )
    )
    assert metrics["train/global_step"] == 2


def test_onnx_test_backend_gives_the_torch_scores(cfg_train, tmp_path):
    """test.backend=onnx (fp32 onnxruntime on the current weights) scores as the torch evaluation does.

    The tiny random BERT embeds every text almost alike (cosines within 1e-5 of each other), so 1e-7
    noise reorders near-ties: the runs are compared by their sorted score lists, not their rankings."""
    from dr.data import read_run

    # unnormalised dot products: a spread of scores that a wrong pooling or length would change
    common = (
        "test.bm25=false",
        "export.enabled=false",
        "data.val_fraction=0",
        "encoder.normalize=false",
        "encoder.similarity=dot",
        "encoder.pooling=mean",
    )
    train(cfg_train(*common, "test.backend=torch", out=tmp_path / "torch", max_steps=2))
    metrics = train(cfg_train(*common, "test.backend=onnx", out=tmp_path / "onnx", max_steps=2))
    assert 0.0 <= metrics["trained/nDCG@10"] <= 1.0
    for system in ("zero_shot", "trained"):
        a, b = (
            read_run(tmp_path / "torch" / "runs" / f"{system}.run"),
            read_run(tmp_path / "onnx" / "runs" / f"{system}.run"),
        )
        assert a.keys() == b.keys() and len(a) > 5
        spread = [max(scores.values()) - min(scores.values()) for scores in a.values()]
        assert min(spread) > 1e-2
        for qid in a:
            np.testing.assert_allclose(sorted(a[qid].values()), sorted(b[qid].values()), atol=1e-5)
