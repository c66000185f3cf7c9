"""Exact resume under SIGKILL: a seeded tiny run with sampler=tas_balanced, a negatives file, a teacher
file and async index refresh is SIGKILLed at a random step and resumed from last.ckpt; from the
checkpoint on it must train on the same batches (queries, positives, negatives, negatives version)
and end with the same weights and metrics as an uninterrupted run.

The asynchronous refresh's swap steps depend on how fast the worker is, in any run; the test pins them
(the trainer holds at the step after each submission until that version is complete), as two
uninterrupted runs would need too. Everything else (sampler position, pair draws, dropout, the
refresh in flight at the checkpoint, rebuilt from its snapshot) must come from the checkpoint.

Slow: ``pytest -m slow tests/test_resume_exact.py -s`` prints the comparison (also saved as
``resume_comparison.json`` in the test's tmp folder).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from dr.data import (
    NegativesRecord,
    passage_texts,
    read_corpus,
    read_qrels,
    read_queries,
    write_negatives,
    write_teacher_scores,
)
from dr.retrieval.bm25 import BM25
from conftest import hold_until_ready, train_script
from test_refresh import _overrides

pytestmark = pytest.mark.slow

MAX_STEPS = 16


class BatchLog(pl.Callback):
    """Appends each batch (step, negatives version, qids, docids) and its loss to a JSON-lines file as
    it trains (a SIGKILL loses nothing written), and holds the trainer at given steps until a refresh
    version is complete, so swaps happen at the same steps in every run."""

    def __init__(self, path: str, hold: list):
        self.path, self.hold = path, {int(step): name for step, name in hold}
        self._batch = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batch = {
            "step": trainer.global_step,
            "version": int(batch["negatives_version"]),
            "qids": list(batch["qids"]),
            "docids": list(batch["docids"]),
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with open(self.path, "a") as f:
            f.write(json.dumps({**self._batch, "loss": float(loss)}) + "\n")
        name = self.hold.get(trainer.global_step)
        if name:
            hold_until_ready(trainer, name, poll_s=0.05)


def _inputs(data: dict, folder: Path) -> tuple[Path, Path]:
    """A BM25 negatives file (with scores) and a teacher file (6 pairs per query, scores from BM25)."""
    corpus, queries, qrels = (
        read_corpus(data["corpus"]),
        read_queries(data["train_queries"]),
        read_qrels(data["train_qrels"]),
    )
    bm25 = BM25(passage_texts(corpus), list(corpus["docid"]))
    qids = [q for q in queries if q in qrels]
    run = bm25.search_run(qids, [queries[q] for q in qids], 30)
    records, rows = [], []
    for q in qids:
        positives = sorted(d for d, g in qrels[q].items() if g > 0)
        ranked = [(d, s) for d, s in sorted(run[q].items(), key=lambda x: -x[1]) if d not in positives]
        records.append(NegativesRecord(q, positives, [d for d, _ in ranked], [s for _, s in ranked]))
        rows += [(20.0, float(s), q, positives[0], d) for d, s in ranked[:6]]
    write_negatives(folder / "negatives.jsonl", records)
    write_teacher_scores(folder / "teacher.tsv", rows)
    return folder / "negatives.jsonl", folder / "teacher.tsv"


def _spec(tiny_bert, data, out: Path, log: Path, negatives: Path, teacher: Path, resume: bool = False) -> str:
    overrides = _overrides(tiny_bert, data, out, max_steps=MAX_STEPS, mode="async", every=3) + [
        "sampler=tas_balanced",
        f"data.negatives={negatives}",
        f"data.teacher_scores={teacher}",
        "data.num_negatives=2",
        "data.batch_sampler.num_clusters=4",
        "refresh.worker_threads=1",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "test.enabled=true",
        "test.before=false",
        "test.bm25=false",
        "test.cache_dir=null",
        "test.k=20",
    ]
    if resume:
        overrides.append(f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}")
    # versions are submitted at steps 3, 6, 9, 12 and 15: each is swapped in at the next step's poll
    hold = [[s + 1, f"v{v:04d}/manifest.json"] for v, s in enumerate(range(3, MAX_STEPS, 3), start=1)]
    return json.dumps(
        {"overrides": overrides, "recorder": {"_target_": "test_resume_exact.BatchLog", "path": str(log), "hold": hold}}
    )


def _run(spec: str, cwd: Path, kill_at_step: int | None = None, log: Path | None = None) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": "0"}
    with open(cwd / "stderr.log", "a") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", train_script("batch_log"), spec],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            if kill_at_step is not None and log.is_file() and len(log.read_text().splitlines()) >= kill_at_step:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return -9
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
    assert proc.wait() == 0, (cwd / "stderr.log").read_text()[-4000:]
    return 0


def _batches(log: Path) -> dict[int, dict]:
    out = {}
    for line in log.read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row  # a resumed run's rows replace those of steps it trains again
    return out


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_sigkill_at_a_random_step_resumes_exactly(tiny_bert, scifact_slice, tmp_path):
    negatives, teacher = _inputs(scifact_slice, tmp_path)
    ref, cut = tmp_path / "uninterrupted", tmp_path / "killed"
    ref.mkdir(), cut.mkdir()
    _run(_spec(tiny_bert, scifact_slice, ref / "run", ref / "batches.jsonl", negatives, teacher), ref)

    kill_at = random.Random(os.environ.get("DR_KILL_SEED")).randrange(2, MAX_STEPS - 2)  # batches done when killed
    assert (
        _run(
            _spec(tiny_bert, scifact_slice, cut / "run", cut / "batches.jsonl", negatives, teacher),
            cut,
            kill_at,
            cut / "batches.jsonl",
        )
        == -9
    )
    ckpt = torch.load(cut / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    ckpt_step = int(ckpt["global_step"])
    refresh_state = next(v for k, v in ckpt["callbacks"].items() if "IndexRefresh" in k)
    killed_at = len((cut / "batches.jsonl").read_text().splitlines())
    _run(_spec(tiny_bert, scifact_slice, cut / "run", cut / "batches.jsonl", negatives, teacher, resume=True), cut)

    a, b = _batches(ref / "batches.jsonl"), _batches(cut / "batches.jsonl")
    m_a = json.loads((ref / "run" / "metrics.json").read_text())
    m_b = json.loads((cut / "run" / "metrics.json").read_text())
    keys = sorted(
        k
        for k in m_a
        if k.startswith(("train/", "trained/")) or k in ("refresh/current_version", "refresh/versions_used")
    )
    w_a, w_b = _weights(ref / "run" / "checkpoints" / "last.ckpt"), _weights(cut / "run" / "checkpoints" / "last.ckpt")
    comparison = {
        "killed_after_batches": killed_at,
        "checkpoint_step": ckpt_step,
        "refresh_at_checkpoint": {k: refresh_state[k] for k in ("current_version", "next_version", "pending")},
        "steps": [
            {
                "step": s,
                "version": (a[s]["version"], b[s]["version"]),
                "same_batch": a[s]["qids"] == b[s]["qids"] and a[s]["docids"] == b[s]["docids"],
                "loss": (a[s]["loss"], b[s]["loss"]),
            }
            for s in range(ckpt_step, MAX_STEPS)
        ],
        "metrics": {k: (m_a[k], m_b.get(k)) for k in keys},
        "max_weight_difference": max(float((w_a[k] - w_b[k]).abs().max()) for k in w_a),
    }
    (tmp_path / "resume_comparison.json").write_text(json.dumps(comparison, indent=1))
    print(
        f"\nkilled after {killed_at} batches; last.ckpt at step {ckpt_step}, refresh state "
        f"{comparison['refresh_at_checkpoint']}"
    )
    print("step  version(uninterrupted, resumed)  same batch  loss (uninterrupted, resumed)")
    for row in comparison["steps"]:
        print(
            f"{row['step']:4d}  {row['version']!s:31s}  {row['same_batch']!s:10s}  {row['loss'][0]:.8f} "
            f"{row['loss'][1]:.8f}"
        )
    for k, (x, y) in comparison["metrics"].items():
        print(f"{k}: {x} {y}")
    print(f"max |weight difference| at the end: {comparison['max_weight_difference']}")
    assert sorted(b) == list(range(MAX_STEPS))
    for s in range(ckpt_step, MAX_STEPS):
        assert (b[s]["version"], b[s]["qids"], b[s]["docids"]) == (a[s]["version"], a[s]["qids"], a[s]["docids"]), s
        assert b[s]["loss"] == a[s]["loss"], s
    assert comparison["max_weight_difference"] == 0.0
    assert all(m_a[k] == m_b[k] for k in keys), comparison["metrics"]
