"""End to end through train(cfg): a tiny BERT on a real SciFact slice, then resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from dr.cli import config_dir
from dr.train import train


def _overrides(tiny_bert: str, data: dict[str, str], out: Path, max_steps: int = 4) -> list[str]:
    return [
        f"paths.output_dir={out}",
        f"encoder.name_or_path={tiny_bert}",
        "encoder.pooling=cls",
        "encoder.query_max_length=16",
        "encoder.passage_max_length=48",
        f"data.corpus={data['corpus']}",
        f"data.train_queries={data['train_queries']}",
        f"data.train_qrels={data['train_qrels']}",
        "data.batch_size=8",
        "data.val_fraction=0.1",
        "data.val_depth=10",
        f"test.corpus={data['corpus']}",
        f"test.queries={data['test_queries']}",
        f"test.qrels={data['test_qrels']}",
        "test.batch_size=32",
        "test.bf16=false",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        f"trainer.max_steps={max_steps}",
        "trainer.enable_progress_bar=false",
        "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "optimizer.lr=1e-3",
        "scheduler.num_warmup_steps=1",
    ]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_train_evaluate_export_reload(tiny_bert, scifact_slice, tmp_path):
    out = tmp_path / "run"
    metrics = train(compose_train(_overrides(tiny_bert, scifact_slice, out)))

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
    from dr.index import DenseIndex

    assert len(DenseIndex.load(out / "export" / "index")) == sum(1 for _ in open(scifact_slice["corpus"]))
    # Training changed the weights, and the export reloads to the same encoder.
    from dr.encoder import BiEncoder

    exported = BiEncoder.from_pretrained(str(out / "export"))
    untrained = BiEncoder.from_pretrained(tiny_bert, pooling="cls", normalize=True, similarity="cos")
    texts = ["a claim about cells", "another sentence"]
    e1 = exported.encode_passages(texts, show_progress=False)
    e0 = untrained.encode_passages(texts, show_progress=False)
    assert not np.allclose(e0, e1, atol=1e-4)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = {k[len("encoder."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    untrained.load_state_dict(state)
    np.testing.assert_allclose(untrained.encode_passages(texts, show_progress=False), e1, atol=1e-5)


def test_resume_continues_at_same_step_with_same_optimizer_state(tiny_bert, scifact_slice, tmp_path):
    """A run resumed from its step-2 checkpoint ends exactly where the uninterrupted run ends.

    The step-2 checkpoint is what a run killed between steps 2 and 4 leaves behind; resuming
    it must continue at step 2 with the same optimizer state, data order and dropout.
    """
    base = ["test.enabled=false", "export.enabled=false", "data.val_fraction=0", "callbacks.model_checkpoint.save_top_k=-1"]
    straight = tmp_path / "straight"
    train(compose_train(_overrides(tiny_bert, scifact_slice, straight, max_steps=4) + base))
    ckpt_path = straight / "checkpoints" / "step000002.ckpt"
    at_two = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert at_two["global_step"] == 2
    assert all(int(s["step"]) == 2 for s in at_two["optimizer_states"][0]["state"].values())

    resumed = tmp_path / "resumed"
    metrics = train(compose_train(_overrides(tiny_bert, scifact_slice, resumed, max_steps=4) + base + [f"ckpt_path={ckpt_path}"]))
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


def test_train_from_a_negatives_file(tiny_bert, scifact_slice, tmp_path):
    """Hard negatives read from a JSONL negatives file; a positive listed as a negative is dropped."""
    from dr.data import read_qrels
    from dr.negatives import NegativesRecord, read_negatives, write_negatives

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

    from dr.datamodule import RetrievalDataModule

    dm = RetrievalDataModule(scifact_slice["corpus"], scifact_slice["train_queries"], scifact_slice["train_qrels"],
                             negatives=str(path), num_negatives=2, batch_size=8)
    dm.setup("fit")
    for qid in dm.train_dataset.qids:
        assert not set(dm.train_dataset.negatives[qid]) & set(qrels[qid]), qid
    batch = dm.collate_train([dm.train_dataset[(i, 0)] for i in range(8)])
    assert len(batch["passages"]) == 8 * 3 and batch["exclude"].shape == (8, 24)

    out = tmp_path / "run"
    overrides = _overrides(tiny_bert, scifact_slice, out, max_steps=2) + [
        f"data.negatives={path}", "data.num_negatives=2", "test.enabled=false", "export.enabled=false", "data.val_fraction=0",
    ]
    assert train(compose_train(overrides))["train/global_step"] == 2


def test_ddp_two_cpu_processes(tiny_bert, scifact_slice, tmp_path):
    """Lightning DDP (gloo) over 2 CPU processes trains and checkpoints through train(cfg)."""
    out = tmp_path / "run"
    overrides = _overrides(tiny_bert, scifact_slice, out, max_steps=2) + [
        "trainer.strategy=ddp_spawn", "trainer.devices=2", "test.enabled=false", "data.val_fraction=0", "export.enabled=true",
    ]
    train(compose_train(overrides))
    # ddp_spawn trains in child processes: the step count is read from the checkpoint they wrote,
    # and the trained weights come back to the parent, which exports them.
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    from dr.encoder import BiEncoder

    exported = BiEncoder.from_pretrained(str(out / "export"))
    state = {k[len("encoder."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    for name, tensor in exported.state_dict().items():
        torch.testing.assert_close(tensor, state[name])
