"""Cross-device negatives (dr/training/gather.py) and GradCache under DDP: two gloo processes on the
CPU give the loss and the gradients of one process on the concatenated batch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from conftest import tiny_train_overrides
from dr.models.encoder import BiEncoder
from dr.retrieval import BM25Negatives
from dr.teachers import BiEncoderTeacher
from dr.training import DenseRetrievalModule, RetrievalDataModule
from dr.training.gather import known_positives, world_size
from dr.losses import DistillationLoss, InBatchKLLoss, InBatchMarginMSELoss, InfoNCELoss, MarginMSELoss

SEED = 1234
#: name -> (loss, grad_cache_chunk): every loss that reads the in-batch matrix, with and without GradCache
CASES = {
    "infonce": ("infonce", None),
    "infonce_cached": ("infonce", 2),
    "tas_b_cached": ("tas_b", 2),
    "kl": ("kl", None),
}


def make_module(tiny_bert: str, loss: str, chunk: int | None, gather: bool = True) -> DenseRetrievalModule:
    losses = {
        "infonce": lambda: InfoNCELoss(0.05),
        "tas_b": lambda: DistillationLoss(MarginMSELoss(), InBatchMarginMSELoss(), 0.75),
        "kl": lambda: DistillationLoss(MarginMSELoss(), InBatchKLLoss(1.0), 0.75),
    }
    teacher = (
        None
        if loss == "infonce"
        else BiEncoderTeacher(tiny_bert, query_max_length=16, passage_max_length=32, device="cpu")
    )
    encoder = BiEncoder.from_pretrained(
        tiny_bert, pooling="cls", normalize=True, query_max_length=16, passage_max_length=32
    )
    module = DenseRetrievalModule(
        encoder,
        losses[loss](),
        optimizer=torch.optim.SGD,
        inbatch_teacher=teacher,
        gather_negatives=gather,
        grad_cache_chunk=chunk,
    )
    return module.train()  # dropout on: the per-rank RNG seeds are replayed by the reference


class _Step(nn.Module):
    """What Lightning's DDP wrapper does for a training step: forward = the module's batch loss."""

    def __init__(self, module: DenseRetrievalModule):
        super().__init__()
        self.module = module

    def forward(self, batch: dict) -> torch.Tensor:
        return self.module.batch_loss(batch)["loss"]


def _worker(rank: int, world: int, init_file: str, tiny_bert: str, batches: list[dict], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for name, (loss, chunk) in CASES.items():
            module = make_module(tiny_bert, loss, chunk)
            step = DistributedDataParallel(_Step(module))
            batch = module.on_before_batch_transfer(dict(batches[rank]), 0)
            torch.manual_seed(SEED + rank)
            value = step(batch)
            value.backward()  # DDP averages the gradients over the two ranks
            grads = {n: p.grad.clone() for n, p in module.encoder.named_parameters() if p.grad is not None}
            torch.save({"loss": value.detach(), "grads": grads, "world": world_size()}, Path(out) / f"{name}.{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_batches(scifact_slice):
    """Two ranks' batches of 3 queries: rank 1 holds another occurrence of a multi-positive query of rank 0
    (a cross-rank known positive to mask) and two negatives per query where rank 0 has one."""
    dm = RetrievalDataModule(
        scifact_slice["corpus"],
        scifact_slice["train_queries"],
        scifact_slice["train_qrels"],
        negatives=BM25Negatives(0, 20),
        num_negatives=2,
        batch_size=3,
    )
    dm.setup("fit")
    ds = dm.train_dataset
    multi = next(i for i, q in enumerate(ds.qids) if len(ds.positives[q]) > 1)
    occurrence = next(k for k in range(1, 50) if ds[(multi, 0, k)]["positive"] != ds[(multi, 0)]["positive"])
    ex0 = [ds[(multi, 0)], ds[(1, 0)], ds[(2, 0)]]
    for ex in ex0:
        ex["negatives"] = ex["negatives"][:1]
    ex1 = [ds[(multi, 0, occurrence)], ds[(3, 0)], ds[(4, 0)]]
    batches = [dm.collate_train(ex0), dm.collate_train(ex1)]
    gen = torch.Generator().manual_seed(7)
    for b in batches:  # pairwise teacher scores, one unscored
        b["teacher_pos"] = torch.randn(3, generator=gen)
        b["teacher_neg"] = torch.randn(b["neg_index"].shape, generator=gen)
    batches[1]["teacher_neg"][2, 1] = float("nan")
    return dm, batches


def _reference(tiny_bert: str, loss: str, chunk: int | None, dm, batches: list[dict]) -> tuple[torch.Tensor, dict]:
    """One process, the concatenated batch, built here by hand (not by dr.training.gather), with each
    rank's texts encoded as that rank did (same padding, same RNG seed, same chunks)."""
    module = make_module(tiny_bert, loss, chunk, gather=False)
    qs, ds_ = [], []
    for rank, b in enumerate(batches):
        b = module.on_before_batch_transfer(dict(b), 0)
        torch.manual_seed(SEED + rank)
        for key, embed, out in (
            ("query_inputs", module.encoder.embed_queries, qs),
            ("passage_inputs", module.encoder.embed_passages, ds_),
        ):
            n, step = len(b[key]["input_ids"]), chunk or len(b[key]["input_ids"])
            out.append(
                torch.cat([embed({k: v[lo : lo + step] for k, v in b[key].items()}) for lo in range(0, n, step)])
            )
    p0 = len(batches[0]["passages"])
    width = max(b["neg_index"].shape[1] for b in batches)
    neg = [torch.nn.functional.pad(b["neg_index"], (0, width - b["neg_index"].shape[1]), value=-1) for b in batches]
    tneg = [
        torch.nn.functional.pad(b["teacher_neg"], (0, width - b["teacher_neg"].shape[1]), value=float("nan"))
        for b in batches
    ]
    queries = batches[0]["queries"] + batches[1]["queries"]
    passages = batches[0]["passages"] + batches[1]["passages"]
    docids = batches[0]["docids"] + batches[1]["docids"]
    qids = batches[0]["qids"] + batches[1]["qids"]
    inputs = {
        "target": torch.cat([batches[0]["target"], batches[1]["target"] + p0]),
        "neg_index": torch.cat([neg[0], torch.where(neg[1] >= 0, neg[1] + p0, neg[1])]),
        "exclude": torch.tensor([[d in dm.train_dataset.positives[q] for d in docids] for q in qids]),
        "teacher_pos": torch.cat([b["teacher_pos"] for b in batches]),
        "teacher_neg": torch.cat(tneg),
    }
    if module.inbatch_teacher is not None:
        inputs["teacher_matrix"] = module.inbatch_teacher(queries, passages)
    inputs = {k: v for k, v in inputs.items() if k in module.loss.input_fields()}  # the fields the loss declares
    out = module.loss(torch.cat(qs), torch.cat(ds_), **inputs)
    value = out["loss"] if isinstance(out, dict) else out
    value.backward()
    return value.detach(), {n: p.grad for n, p in module.encoder.named_parameters() if p.grad is not None}


def test_gathered_negatives_match_one_process_on_the_concatenated_batch(tiny_bert, rank_batches, tmp_path):
    dm, batches = rank_batches
    # the cross-rank known positive is really there: rank 1's copy of the query draws another positive of it
    assert batches[1]["docids"][0] in dm.train_dataset.positives[batches[0]["qids"][0]]
    assert batches[0]["neg_index"].shape[1] == 1 and batches[1]["neg_index"].shape[1] == 2
    # fork: the workers start in a second, without importing torch and transformers again
    mp.start_processes(
        _worker, args=(2, str(tmp_path / "init"), tiny_bert, batches, str(tmp_path)), nprocs=2, start_method="fork"
    )
    for name, (loss, chunk) in CASES.items():
        ref_loss, ref_grads = _reference(tiny_bert, loss, chunk, dm, batches)
        for rank in range(2):
            got = torch.load(tmp_path / f"{name}.{rank}.pt")
            assert got["world"] == 2
            torch.testing.assert_close(
                got["loss"], ref_loss, atol=1e-5, rtol=0, msg=lambda m: f"{name} rank {rank} loss: {m}"
            )
            assert got["grads"].keys() == ref_grads.keys(), name
            for param, grad in ref_grads.items():
                torch.testing.assert_close(
                    got["grads"][param], grad, atol=1e-5, rtol=0, msg=lambda m: f"{name} rank {rank} {param}: {m}"
                )


def test_known_positives_from_corpus_rows():
    positive_rows = torch.tensor([[4, 7], [2, -1]])
    passage_rows = torch.tensor([7, 2, 4, 9])
    assert known_positives(positive_rows, passage_rows).tolist() == [
        [True, False, True, False],
        [False, True, False, False],
    ]


def test_gather_is_a_no_op_on_one_process(tiny_bert, rank_batches):
    """Without a process group, gather_negatives=true trains exactly as false."""
    _, batches = rank_batches
    values = []
    for gather in (True, False):
        module = make_module(tiny_bert, "infonce", None, gather=gather)
        batch = module.on_before_batch_transfer(dict(batches[1]), 0)
        torch.manual_seed(SEED)
        values.append(module.batch_loss(batch)["loss"])
    torch.testing.assert_close(values[0], values[1], atol=0, rtol=0)


@pytest.mark.slow
def test_lightning_ddp_trains_with_gathered_negatives_and_grad_cache(tiny_bert, scifact_slice, tmp_path):
    """dr-train on Lightning's DDP (strategy=ddp, 2 CPU processes, gloo), as a user runs it."""
    out = tmp_path / "run"
    overrides = tiny_train_overrides(tiny_bert, scifact_slice, out, max_steps=2) + [
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "module.gather_negatives=true",
        "module.grad_cache_chunk=4",
        "test.enabled=false",
        "export.enabled=false",
        "data.val_fraction=0",
        f"hydra.run.dir={out}",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    # the console script, as users start it: Lightning's launcher re-runs this command line for rank 1
    done = subprocess.run(
        [str(Path(sys.executable).with_name("dr-train")), *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((out / "logs" / "metrics.csv").open()))
    steps = [r for r in rows if r.get("train/loss")]
    assert len(steps) == 2
    # every query of the step scored the 2 x 8 queries' passages of both ranks
    assert {float(r["train/effective_batch_size"]) for r in steps} == {16.0}
    assert all(float(r["train/grad_cache_activation_mib_saved"]) > 0 for r in steps)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
