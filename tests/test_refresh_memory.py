"""Memory stays flat over many index refreshes: 20 short async refresh cycles on the tiny BERT, with the
resident memory (VmRSS) of the training process and of the refresh worker read from /proc after each
swap. A leak of one encoder snapshot, one FAISS index or one negatives table per cycle would add
~4 MB or more per cycle here (the tiny BERT's embedding table alone is 3.9 MB), 80 MB over 20.

Slow: ``pytest -m slow tests/test_refresh_memory.py -s`` (prints the per-cycle figures).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import pytorch_lightning as pl
from omegaconf import open_dict

from dr.training import train
from conftest import hold_until_ready
from test_refresh import _compose, _overrides

pytestmark = pytest.mark.slow

CYCLES = 20
EVERY = 2
#: Allowed growth from the early cycles (3-6) to the late ones (17-20), per process. The early cycles
#: come after the allocators' warm-up (first index, first swap); 24 MB is well under the 80 MB one
#: leaked snapshot per cycle would add.
TOLERANCE_MB = 24.0


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident set size of a process in MB (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class MemoryRecorder(pl.Callback):
    """At the first batch on each new negatives version: the trainer's and the worker's RSS. Holds the
    trainer after each submission until the version is complete, so every cycle is a full one."""

    def __init__(self, path: str):
        self.path = path
        self.rows: list[dict] = []
        self._version = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        version = int(batch["negatives_version"])
        if version != self._version:
            self._version = version
            pid_file = Path(trainer.default_root_dir) / "refresh" / "worker.pid"
            worker = json.loads(pid_file.read_text())["pid"] if pid_file.is_file() else None
            self.rows.append(
                {
                    "version": version,
                    "step": trainer.global_step,
                    "trainer_mb": rss_mb(),
                    "worker_mb": rss_mb(worker) if worker else None,
                }
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % EVERY == 1 and step > 1:  # the version submitted at step - 1 is swapped in at this poll
            hold_until_ready(trainer, f"v{(step - 1) // EVERY:04d}/manifest.json", poll_s=0.05)

    def on_train_end(self, trainer, pl_module):
        Path(self.path).write_text(json.dumps(self.rows))


def test_memory_is_flat_over_20_refresh_cycles(tiny_bert, scifact_slice, tmp_path):
    out = tmp_path / "run"
    rows_path = tmp_path / "memory.json"
    cfg = _compose(_overrides(tiny_bert, scifact_slice, out, max_steps=EVERY * CYCLES + 2, mode="async", every=EVERY))
    with open_dict(cfg):
        cfg.callbacks.memory = {"_target_": "test_refresh_memory.MemoryRecorder", "path": str(rows_path)}
    metrics = train(cfg)
    rows = json.loads(rows_path.read_text())
    print(json.dumps(rows, indent=1))
    assert metrics["refresh/versions_used"] == CYCLES and [r["version"] for r in rows] == list(range(1, CYCLES + 1))
    for key in ("trainer_mb", "worker_mb"):
        early = statistics.median(r[key] for r in rows[2:6])
        late = statistics.median(r[key] for r in rows[-4:])
        print(
            f"{key}: early (cycles 3-6) {early:.1f} MB, late (cycles {CYCLES - 3}-{CYCLES}) {late:.1f} MB, growth "
            f"{late - early:+.1f} MB"
        )
        assert late - early < TOLERANCE_MB, (key, early, late)
    assert len({r["worker_mb"] is not None for r in rows}) == 1  # one worker throughout, measured every cycle
