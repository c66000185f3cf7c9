"""Index refresh under DDP (dr/refresh/callback.py): 2 gloo processes on the CPU, launched as a cluster
launcher would (``LOCAL_RANK`` / ``NODE_RANK`` set, Lightning's ``LightningEnvironment``), so a hang is a
failed test (the processes are killed after a deadline) and "two nodes" are real: ``num_nodes=2``
with one process each, each node with its own ``refresh/node<k>`` store and its own worker.

Slow: ``pytest -m slow tests/test_refresh_ddp.py``.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl

from dr.refresh import FAILED, IndexRefresh, verified_manifest, version_dir
from conftest import hold_until_ready, train_script
from test_refresh import _overrides

pytestmark = pytest.mark.slow


def inject_node_faults(fail: dict, sleep: dict, after: dict, job) -> None:
    """A refresh job hook (in the worker): on chosen nodes, crash chosen versions (``fail={"node1": [2]}``),
    stall them (``sleep={"node0": [[3, 5]]}``: 5 s), or start them only once a file exists under
    ``refresh/`` (``after={"node0": [[3, "node1/v0003/manifest.json"]]}``). The node is the store's
    folder name (``refresh`` on a single node)."""
    node = Path(job.version_dir).parent.name
    root = Path(job.version_dir).parent.parent if node.startswith("node") else Path(job.version_dir).parent
    wait_for = dict(after.get(node, [])).get(job.version)
    deadline = time.monotonic() + 240
    while wait_for and not (root / wait_for).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(dict(sleep.get(node, [])).get(job.version, 0))
    if job.version in fail.get(node, []):
        raise RuntimeError(f"refresh v{job.version:04d} on {node}: injected failure (test fault)")


class NodeFaultyRefresh(IndexRefresh):
    """IndexRefresh with per-node faults (``job_hook``), for tests only."""

    def __init__(self, fail: dict | None = None, sleep: dict | None = None, after: dict | None = None, **kwargs):
        fail = {k: list(v) for k, v in (fail or {}).items()}
        sleep, after = ({k: [list(p) for p in v] for k, v in (d or {}).items()} for d in (sleep, after))
        super().__init__(job_hook=functools.partial(inject_node_faults, fail, sleep, after), **kwargs)


class RankRecorder(pl.Callback):
    """Per rank: each batch's negatives version; at given steps it holds until files exist under
    ``refresh/`` (so the workers' timing does not decide the test) or sleeps (a slow step)."""

    def __init__(self, path: str, hold: list | None = None, sleep: list | None = None, timeout_s: float = 240.0):
        self.path, self.timeout_s = path, timeout_s
        self.hold = {int(step): list(names) for step, names in (hold or [])}
        self.sleep = {int(step): float(s) for step, s in (sleep or [])}
        self.seen: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append([trainer.global_step, int(batch["negatives_version"])])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.sleep.get(trainer.global_step, 0.0))
        for name in self.hold.get(trainer.global_step, []):
            hold_until_ready(trainer, name, self.timeout_s)

    def on_train_end(self, trainer, pl_module):
        Path(f"{self.path}.rank{trainer.global_rank}").write_text(json.dumps(self.seen))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, overrides: list[str], recorder: dict, nodes: int, deadline_s: float = 600) -> list[list]:
    """Run 2 ranks (one node with 2 devices, or 2 nodes with 1) and wait; a rank still running at
    the deadline (a hang in a collective) fails the test. Returns each rank's (step, version) list."""
    devices = 2 // nodes
    trainer = [
        "trainer.accelerator=cpu",
        "trainer.strategy=ddp",
        f"trainer.devices={devices}",
        f"+trainer.num_nodes={nodes}",
        "data.batch_size=4",
    ]
    spec = json.dumps({"overrides": overrides + trainer, "recorder": recorder})
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "NODE_RANK": str(rank // devices),
            "LOCAL_RANK": str(rank % devices),
        }
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", train_script("ddp_recorder"), spec],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    end = time.monotonic() + deadline_s
    while any(p.poll() is None for p in procs) and time.monotonic() < end:
        time.sleep(0.5)
    hung = [r for r, p in enumerate(procs) if p.poll() is None]
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    logs = {r: (tmp_path / f"rank{r}.log").read_text()[-3000:] for r in range(2)}
    assert not hung, f"ranks {hung} still running after {deadline_s} s (a hang):\n{logs}"
    assert all(p.returncode == 0 for p in procs), logs
    return [json.loads(Path(f"{recorder['path']}.rank{r}").read_text()) for r in range(2)]


def _recorder(tmp_path: Path, hold=(), sleep=()) -> dict:
    return {
        "_target_": "test_refresh_ddp.RankRecorder",
        "path": str(tmp_path / "seen"),
        "hold": list(hold),
        "sleep": list(sleep),
    }


def test_every_minutes_with_polling_every_3_steps(tiny_bert, scifact_slice, tmp_path):
    """A time schedule makes rank 0's refresh point fall between polls (a slow step 4 makes the timer run
    out there): the decision waits for the poll at step 6, where both ranks meet, instead of rank 0
    entering the all_gather alone (a hang before the fix)."""
    out = tmp_path / "run"
    overrides = _overrides(tiny_bert, scifact_slice, out, max_steps=14, mode="async", every=3) + [
        "refresh.every_n_steps=null",
        "refresh.every_minutes=0.02",
        "refresh.poll_every_n_steps=3",
    ]
    ranks = _launch(
        tmp_path, overrides, _recorder(tmp_path, hold=[[10, ["v0001/manifest.json"]]], sleep=[[4, 2.0]]), nodes=1
    )
    assert ranks[0] == ranks[1] and len(ranks[0]) == 14
    steps = [verified_manifest(version_dir(out / "refresh", v))["snapshot_step"] for v in (1,)]
    assert steps[0] % 3 == 0 and steps[0] >= 6  # taken at a poll step, not at step 4 or 5
    for vdir in (out / "refresh").glob("v*"):
        assert int(json.loads((vdir / "job.json").read_text())["snapshot_step"]) % 3 == 0
    versions = [v for _, v in ranks[0]]
    assert versions == sorted(versions) and versions[-1] >= 1
    swaps = [step for step in range(1, 14) if versions[step] != versions[step - 1]]
    assert swaps and all(step % 3 == 0 for step in swaps)  # swapped at the polls (global steps 3, 6, 9, 12)


def test_version_failed_on_one_node_is_never_used(tiny_bert, scifact_slice, tmp_path):
    """Two nodes. v2 fails on node 1 and v3 succeeds there first; node 0 has v2 and builds v3 slowly.
    The minimum of the nodes' newest (v2) would crash node 1 on a missing file; the ranks stay on v1
    until v3 is complete on both nodes and then switch together."""
    out = tmp_path / "run"
    overrides = _overrides(tiny_bert, scifact_slice, out, max_steps=16, mode="async", every=3) + [
        "refresh._target_=test_refresh_ddp.NodeFaultyRefresh",
        "+refresh.fail={node1: [2]}",
        "+refresh.after={node0: [[3, 'node1/v0003/manifest.json']]}",
        "+refresh.sleep={node0: [[3, 3]]}",
    ]
    hold = [
        [4, ["node0/v0001/manifest.json", "node1/v0001/manifest.json"]],
        [8, ["node0/v0002/manifest.json", "node1/worker.dead"]],
        [10, ["node1/v0003/manifest.json"]],
        [13, ["node0/v0003/manifest.json"]],
    ]
    ranks = _launch(tmp_path, overrides, _recorder(tmp_path, hold=hold), nodes=2)
    assert ranks[0] == ranks[1] and len(ranks[0]) == 16
    root = out / "refresh"
    assert (root / "node1" / "v0002" / FAILED).is_file() and verified_manifest(root / "node0" / "v0002") is not None
    seen = dict((step, v) for step, v in ranks[0])
    assert 2 not in seen.values()
    # At the poll of step 10 v3 is complete on node 1 (held for) and not on node 0 (it starts 3 s later):
    # node 0's newest is v2, node 1's v3; the minimum, v2, failed on node 1. The ranks stay on v1 ...
    assert all(seen[s] == 1 for s in range(4, 11))
    # ... and take v3 (or a later version) once it is complete on both nodes, at step 13 at the latest.
    assert all(seen[s] >= 3 for s in range(13, 16)) and [seen[s] for s in range(16)] == sorted(seen.values())


def test_worker_hanging_past_timeout_is_killed_and_training_goes_on(tiny_bert, scifact_slice, tmp_path):
    """v1's job hangs; after timeout_s the worker is killed, both ranks keep training on v0, and v2
    (submitted at the next schedule point, step 6) is used by both from the same step."""
    out = tmp_path / "run"
    overrides = _overrides(tiny_bert, scifact_slice, out, max_steps=12, mode="async", every=3) + [
        "refresh._target_=test_refresh_ddp.NodeFaultyRefresh",
        "+refresh.sleep={refresh: [[1, 600]]}",
        "refresh.timeout_s=2",
    ]
    ranks = _launch(
        tmp_path, overrides, _recorder(tmp_path, hold=[[8, ["v0002/manifest.json"]]], sleep=[[5, 4.0]]), nodes=1
    )
    assert ranks[0] == ranks[1] and len(ranks[0]) == 12
    root = out / "refresh"
    assert "timed out after 2 s" in (root / "v0001" / FAILED).read_text()
    seen = dict((step, v) for step, v in ranks[0])
    assert 1 not in seen.values() and all(seen[s] == 0 for s in range(7)) and seen[8] >= 2  # v2 by step 8 (held for)
    assert [seen[s] for s in range(12)] == sorted(seen.values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["refresh/failures"] == 1 and metrics["refresh/current_version"] >= 2
