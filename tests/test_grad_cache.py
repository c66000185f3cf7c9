"""GradCache (dr/training/grad_cache.py): chunked encoding gives the full batch's gradients, with dropout on."""

from __future__ import annotations

import csv

import hydra
import pytest
import torch
from torch.utils.checkpoint import checkpoint

from dr.config import ConfigError
from dr.models.encoder import BiEncoder
from dr.retrieval import BM25Negatives
from dr.training import DenseRetrievalModule, RetrievalDataModule, train
from dr.training.grad_cache import activation_bytes, embed_in_chunks, memory_estimate
from dr.validate import validate_config
from dr.losses import InfoNCELoss

CHUNK = 3


@pytest.fixture(scope="module")
def batch(scifact_slice):
    """A real collated batch: 8 queries, their positives and 8 BM25 negatives (16 passages)."""
    dm = RetrievalDataModule(
        scifact_slice["corpus"],
        scifact_slice["train_queries"],
        scifact_slice["train_qrels"],
        negatives=BM25Negatives(0, 20),
        num_negatives=1,
        batch_size=8,
    )
    dm.setup("fit")
    return dm.collate_train([dm.train_dataset[(i, 0)] for i in range(8)])


def make_module(tiny_bert: str, chunk: int | None, checkpointing: bool = False) -> DenseRetrievalModule:
    encoder = BiEncoder.from_pretrained(
        tiny_bert, pooling="mean", normalize=True, query_max_length=16, passage_max_length=48
    )
    return DenseRetrievalModule(
        encoder,
        InfoNCELoss(0.05),
        optimizer=torch.optim.SGD,
        grad_cache_chunk=chunk,
        gradient_checkpointing=checkpointing,
    )


def grads_of(module: DenseRetrievalModule, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    loss.backward()
    return {n: p.grad.clone() for n, p in module.encoder.named_parameters() if p.grad is not None}


def chunked_with_graph(embed, inputs: dict, chunk: int, replay_rng: bool | None = None) -> torch.Tensor:
    """The reference: every chunk encoded with its graph kept (all activations in memory), or, with
    ``replay_rng`` set, through torch's checkpoint with or without restoring the RNG state."""
    parts = []
    for lo in range(0, len(inputs["input_ids"]), chunk):
        rows = {k: v[lo : lo + chunk] for k, v in inputs.items()}
        parts.append(
            embed(rows)
            if replay_rng is None
            else checkpoint(embed, rows, use_reentrant=False, preserve_rng_state=replay_rng)
        )
    return torch.cat(parts)


def reference_loss(module: DenseRetrievalModule, batch: dict, replay_rng: bool | None = None) -> torch.Tensor:
    q = chunked_with_graph(module.encoder.embed_queries, batch["query_inputs"], CHUNK, replay_rng)
    d = chunked_with_graph(module.encoder.embed_passages, batch["passage_inputs"], CHUNK, replay_rng)
    return module.loss(q, d, target=batch["target"], exclude=batch["exclude"])


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "with_layer_checkpointing"])
def test_grad_cache_gradients_equal_the_full_batch_with_dropout_on(tiny_bert, batch, checkpointing):
    """Dropout on: the cached pass must replay each chunk's dropout masks, or its gradients are another network's."""
    cached, full = make_module(tiny_bert, CHUNK, checkpointing).train(), make_module(tiny_bert, None).train()
    b = cached.on_before_batch_transfer(dict(batch), 0)
    assert (
        len(b["query_inputs"]["input_ids"]) % CHUNK and len(b["passage_inputs"]["input_ids"]) % CHUNK
    )  # a short last chunk
    torch.manual_seed(5)
    loss = cached.batch_loss(b)["loss"]
    got = grads_of(cached, loss)
    torch.manual_seed(5)
    ref = reference_loss(full, b)
    want = grads_of(full, ref)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
    assert got.keys() == want.keys() and len(got) > 10
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")

    # The control: without restoring the RNG, the re-encoding draws new masks and the gradients move.
    control = make_module(tiny_bert, None).train()
    torch.manual_seed(5)
    wrong = grads_of(control, reference_loss(control, b, replay_rng=False))
    assert max((wrong[n] - want[n]).abs().max().item() for n in want) > 1e-3


def test_grad_cache_equals_one_pass_over_the_whole_batch(tiny_bert, batch):
    """Dropout off: chunked GradCache gives the gradients of encoding the whole batch at once."""
    cached, plain = make_module(tiny_bert, CHUNK).eval(), make_module(tiny_bert, None).eval()
    b = plain.on_before_batch_transfer(dict(batch), 0)
    got_loss, want_loss = cached.batch_loss(b)["loss"], plain.batch_loss(b)["loss"]
    torch.testing.assert_close(got_loss, want_loss, atol=1e-5, rtol=0)
    got, want = grads_of(cached, got_loss), grads_of(plain, want_loss)
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")


def test_embed_in_chunks_without_grad_and_memory_estimate(tiny_bert, batch):
    module = make_module(tiny_bert, CHUNK).eval()
    b = module.on_before_batch_transfer(dict(batch), 0)
    embed = module.encoder.embed_passages
    with torch.no_grad():
        torch.testing.assert_close(
            embed_in_chunks(embed, b["passage_inputs"], CHUNK), embed(b["passage_inputs"]), atol=1e-6, rtol=0
        )
    params = list(module.encoder.parameters())
    rng = torch.get_rng_state()
    one, two = (activation_bytes(embed, {k: v[:n] for k, v in b["passage_inputs"].items()}, params) for n in (2, 4))
    assert torch.equal(rng, torch.get_rng_state())  # the probe leaves the RNG alone
    assert 0 < one < two
    est = memory_estimate(module.encoder.embed_queries, embed, b["query_inputs"], b["passage_inputs"], CHUNK, params)
    assert est["full"] > est["cached"] > 0
    assert est["saved"] == pytest.approx(est["full"] - est["cached"])


def test_config_options_compose_and_are_validated(cfg_train):
    cfg = cfg_train("module.grad_cache_chunk=4", "module.gather_negatives=true")
    module = hydra.utils.instantiate(cfg.module)
    assert module.grad_cache_chunk == 4 and module.gather_negatives
    assert cfg_train().module.grad_cache_chunk is None and cfg_train().module.gather_negatives is False
    for bad, expected in (
        ("module.grad_cache_chunk=0", "module.grad_cache_chunk=0: expected a positive integer"),
        ("module.gather_negatives=2", "module.gather_negatives=2: expected true or false"),
    ):
        with pytest.raises(ConfigError, match=expected):
            validate_config(cfg_train(bad))


def test_trainer_runs_grad_cache_with_accumulation_and_clipping(cfg_train, tmp_path):
    """A real Trainer: chunks of 3 (a batch of 8 queries and 16 passages), accumulating 2 batches,
    gradients clipped; the effective batch and the memory estimate are logged."""
    out = tmp_path / "run"
    metrics = train(
        cfg_train(
            "module.grad_cache_chunk=3",
            "+trainer.accumulate_grad_batches=2",
            "trainer.gradient_clip_val=0.5",
            "test.enabled=false",
            "export.enabled=false",
            "data.val_fraction=0",
            max_steps=2,
        )
    )
    assert metrics["train/global_step"] == 2
    rows = [r for r in csv.DictReader((out / "logs" / "metrics.csv").open()) if r.get("train/loss")]
    assert len(rows) == 2  # logged once per optimizer step (of 2 accumulated batches)
    assert {float(r["train/effective_batch_size"]) for r in rows} == {8.0}
    assert all(
        float(r["train/grad_cache_activation_mib_full"]) > float(r["train/grad_cache_activation_mib_cached"]) > 0
        for r in rows
    )
