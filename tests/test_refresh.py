"""Index refresh (dr/refresh/): real Trainer, real worker processes, real FAISS, tiny BERT."""

from __future__ import annotations

import csv
import functools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from conftest import hold_until_ready, merge_overrides, tiny_train_overrides
from dr.cli import config_dir
from dr.data import read_qrels
from dr.data.negatives import read_negatives
from dr.data import write_json
from dr.refresh import FAILED, MANIFEST, NEGATIVES, IndexRefresh, clean_refresh_dir, verified_manifest, version_dir
from dr.refresh.store import TEACHER_NEGATIVES
from dr.training import train


def _overrides(tiny_bert: str, data: dict[str, str], out: Path, max_steps: int, mode: str, every: int) -> list[str]:
    return merge_overrides(
        tiny_train_overrides(tiny_bert, data, out, max_steps),
        [
            "encoder.passage_max_length=32",
            "data.val_fraction=0",
            "test.enabled=false",
            "export.enabled=false",
            f"refresh={mode}",
            f"refresh.every_n_steps={every}",
            "refresh.top_k=20",
            "refresh.batch_size=64",
            "miner@refresh.miner=topk",
            "refresh.miner.num_negatives=4",
        ],
    )


def inject_faults(fail_versions: set, sleep_versions: set, sleep_s: float, job) -> None:
    """A refresh job hook (runs in the worker): crash these versions' jobs, stall those."""
    if job.version in sleep_versions:
        time.sleep(sleep_s)
    if job.version in fail_versions:
        raise RuntimeError(f"refresh v{job.version:04d}: injected failure (test fault)")


class FaultyRefresh(IndexRefresh):
    """IndexRefresh with faults injected through the Python API (``job_hook``), for tests only:
    selected with ``refresh._target_=test_refresh.FaultyRefresh``."""

    def __init__(self, fail_versions=(), sleep_versions=(), sleep_s: float = 0.0, **kwargs):
        hook = functools.partial(inject_faults, set(fail_versions), set(sleep_versions), sleep_s)
        super().__init__(job_hook=hook, **kwargs)


def _faulty(fail_versions=(), sleep_versions=(), sleep_s=0) -> list[str]:
    return [
        "refresh._target_=test_refresh.FaultyRefresh",
        f"+refresh.fail_versions={list(fail_versions)}",
        f"+refresh.sleep_versions={list(sleep_versions)}",
        f"+refresh.sleep_s={sleep_s}",
    ]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=overrides)


class VersionRecorder(pl.Callback):
    """Records each batch's negatives version; at given steps it holds the trainer (test only)
    until a file appears, so the asynchronous worker's timing does not decide the test."""

    def __init__(self, path: str, wait: list | None = None, timeout_s: float = 120.0):
        self.path = path
        self.wait = {int(step): name for step, name in (wait or [])}
        self.timeout_s = timeout_s
        self.seen: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.global_step, int(batch["negatives_version"])))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        name = self.wait.get(trainer.global_step)
        if name is None:
            return
        hold_until_ready(trainer, name, self.timeout_s)

    def on_train_end(self, trainer, pl_module):
        Path(self.path).write_text(json.dumps(self.seen))


def _with_recorder(cfg, path: Path, wait: list):
    with open_dict(cfg):
        cfg.callbacks.recorder = {"_target_": "test_refresh.VersionRecorder", "path": str(path), "wait": wait}
    return cfg


class LengthTeacher:
    """A stand-in teacher for the scoring hook: the score of a pair is the passage's length."""

    def score_groups(self, queries, passages):
        return [[float(len(p)) for p in group] for group in passages]


def _check_negatives(path: Path, data: dict) -> dict:
    records = read_negatives(path)
    qrels = read_qrels(data["train_qrels"])
    assert records and set(records) <= set(qrels)
    for qid, record in records.items():
        assert not set(record.negatives) & set(qrels[qid]), qid  # never a positive
        assert 0 < len(record.negatives) <= 4
    return records


@pytest.fixture(scope="module")
def async_run(tiny_bert, scifact_slice, tmp_path_factory):
    """Async refresh every 3 steps; version 2's worker crashes (an injected fault)."""
    out = tmp_path_factory.mktemp("async") / "run"
    seen = out.parent / "seen.json"
    cfg = _compose(
        _overrides(tiny_bert, scifact_slice, out, max_steps=12, mode="async", every=3) + _faulty(fail_versions=[2])
    )
    # v1 is submitted at step 3, v2 at 6 (crashes), v3 at 9: hold the trainer until each lands.
    cfg = _with_recorder(cfg, seen, [[4, "v0001/manifest.json"], [7, "worker.dead"], [10, "v0003/manifest.json"]])
    t0 = time.perf_counter()
    metrics = train(cfg)
    return {"out": out, "metrics": metrics, "seen": json.loads(seen.read_text()), "wall": time.perf_counter() - t0}


def test_async_refresh_swaps_in_new_negatives(async_run, scifact_slice):
    seen = dict(async_run["seen"])  # global step at the batch's start -> its negatives version
    assert [seen[s] for s in range(4)] == [0, 0, 0, 0]
    assert seen[4] == 1  # polled at the end of step 4, used from the next batch on
    assert all(seen[s] <= seen[s + 1] for s in range(11))
    root = async_run["out"] / "refresh"
    manifest = verified_manifest(root / "v0001")
    assert manifest["version"] == 1 and manifest["snapshot_step"] == 3 and manifest["queries"] == 64
    assert not (root / "v0001" / "encoder").exists()  # the snapshot is deleted once loaded
    _check_negatives(root / "v0001" / NEGATIVES, scifact_slice)
    m = async_run["metrics"]
    assert m["refresh/versions_used"] >= 2 and m["refresh/mean_staleness_steps"] >= 1
    assert 0 <= m["refresh/blocked_fraction"] < 0.5
    # The refresh metrics reach the Lightning logger (logs/metrics.csv).
    rows = list(csv.DictReader(open(async_run["out"] / "logs" / "metrics.csv")))
    logged = [float(r["refresh/version"]) for r in rows if r.get("refresh/version")]
    assert logged[:2] == [1.0, 3.0]
    assert any(r.get("refresh/positive_retrieved") for r in rows) and any(r.get("refresh/blocked_s") for r in rows)
    assert max(float(r["train/negatives_version"]) for r in rows if r.get("train/negatives_version")) == 3.0


def test_worker_crash_keeps_training_and_next_refresh_succeeds(async_run, scifact_slice):
    seen = dict(async_run["seen"])
    root = async_run["out"] / "refresh"
    assert (root / "v0002" / FAILED).is_file() and "injected failure" in (root / "v0002" / FAILED).read_text()
    assert not (root / "v0002" / MANIFEST).exists()
    assert 2 not in seen.values()  # never trained on the failed version
    assert seen[10] == 3 and seen[11] == 3  # the worker was restarted and version 3 came in
    assert async_run["metrics"]["train/global_step"] == 12 and async_run["metrics"]["refresh/failures"] == 1
    _check_negatives(root / "v0003" / NEGATIVES, scifact_slice)


def test_sync_refresh_writes_the_same_format(async_run, tiny_bert, scifact_slice, tmp_path):
    """Sync mode swaps at once (staleness 0) and writes the same files; the teacher hook rescoring."""
    out = tmp_path / "run"
    seen = tmp_path / "seen.json"
    cfg = _compose(
        _overrides(tiny_bert, scifact_slice, out, max_steps=3, mode="sync", every=2)
        + ["+refresh.teacher._target_=test_refresh.LengthTeacher"]
    )
    metrics = train(_with_recorder(cfg, seen, []))
    assert dict(json.loads(seen.read_text())) == {0: 0, 1: 0, 2: 1}
    assert metrics["refresh/mean_staleness_steps"] == 0 and metrics["refresh/versions_used"] == 1
    sync_dir, async_dir = out / "refresh" / "v0001", async_run["out"] / "refresh" / "v0001"
    sync_manifest, async_manifest = verified_manifest(sync_dir), verified_manifest(async_dir)
    # the teacher's scores have a file of their own (for the KD lists), checked by the manifest
    assert sorted(sync_manifest) == sorted([*async_manifest, "teacher_sha256"])
    assert sorted(p.name for p in sync_dir.iterdir()) == sorted(
        [*(p.name for p in async_dir.iterdir()), TEACHER_NEGATIVES]
    )
    sync_records = _check_negatives(sync_dir / NEGATIVES, scifact_slice)
    async_records = _check_negatives(async_dir / NEGATIVES, scifact_slice)
    assert set(sync_records) == set(async_records)
    first_sync = json.loads((sync_dir / NEGATIVES).read_text().splitlines()[0])
    first_async = json.loads((async_dir / NEGATIVES).read_text().splitlines()[0])
    assert sorted(first_sync) == sorted(first_async) and sorted(first_sync["negatives"][0]) == sorted(
        first_async["negatives"][0]
    )
    # The teacher hook scored the same pairs (here: passage lengths) into that file; the negatives
    # file keeps the student's dense scores (data.teacher_from_negatives=false).
    first_teacher = json.loads((sync_dir / TEACHER_NEGATIVES).read_text().splitlines()[0])
    assert first_teacher["positives"] == first_sync["positives"]
    assert all(s is not None and s == int(s) and s > 10 for s in first_teacher["positive_scores"])
    assert all(s is not None and abs(s) <= 1.0 + 1e-5 for s in first_sync["positive_scores"])  # cosine of the student
    # In sync mode the trainer waits for the whole job.
    assert metrics["refresh/blocked_total_s"] >= metrics["refresh/mean_duration_s"]


def _teacher_negatives_file(data: dict, path: Path) -> Path:
    """A negatives file whose scores are a teacher's (as dr-score negatives_output writes it)."""
    from dr.data import NegativesRecord, read_corpus, write_negatives

    qrels = read_qrels(data["train_qrels"])
    docids = list(read_corpus(data["corpus"])["docid"])
    records = [
        NegativesRecord(
            q,
            sorted(qrels[q]),
            [d for d in docids if d not in qrels[q]][k : k + 4],
            [0.1, 0.2, 0.3, 0.4],
            [0.9] * len(qrels[q]),
        )
        for k, q in enumerate(sorted(qrels))
    ]
    write_negatives(path, records)
    return path


def test_refresh_refuses_to_replace_teacher_scores_with_the_students(tiny_bert, scifact_slice, tmp_path):
    """data.teacher_from_negatives=true with refresh.teacher=null: every refreshed file would carry the
    student's scores as teacher scores. Refused at train start, naming both keys; with a teacher it trains."""
    scored = _teacher_negatives_file(scifact_slice, tmp_path / "scored.jsonl")
    common = ["loss=margin_mse", f"data.negatives={scored}", "data.teacher_from_negatives=true"]
    out = tmp_path / "refused"
    cfg = _compose(_overrides(tiny_bert, scifact_slice, out, max_steps=3, mode="sync", every=2) + common)
    with pytest.raises(ValueError, match=r"data\.teacher_from_negatives=true.*refresh\.teacher"):
        train(cfg)
    assert not (out / "refresh").exists() and not (out / "checkpoints").exists()  # before any step or refresh
    cfg = _compose(
        _overrides(tiny_bert, scifact_slice, tmp_path / "run", max_steps=3, mode="sync", every=2)
        + common
        + ["+refresh.teacher._target_=test_refresh.LengthTeacher"]
    )
    assert train(cfg)["refresh/versions_used"] == 1


def test_refresh_mines_simans_on_the_students_logits(tiny_bert, scifact_slice, tmp_path):
    """The refresh default scale is 1/temperature of the training loss; its stats and the logs report
    the SimANS kernel's effective sample size."""
    out = tmp_path / "run"
    cfg = _compose(
        _overrides(tiny_bert, scifact_slice, out, max_steps=3, mode="sync", every=2)
        + ["miner@refresh.miner=simans", "refresh.miner.num_negatives=4", "loss.temperature=0.04"]
    )
    metrics = train(cfg)
    stats = verified_manifest(out / "refresh" / "v0001")["stats"]
    assert stats["score_scale"] == {"simans": pytest.approx(25.0)}  # 1 / 0.04
    ess = stats["effective_sample_size"]["simans"]
    assert 1.0 <= ess <= 20.0  # refresh.top_k=20 candidates
    assert metrics["refresh/last_effective_sample_size_simans"] == pytest.approx(ess)
    rows = list(csv.DictReader(open(out / "logs" / "metrics.csv")))
    assert [
        float(r["refresh/effective_sample_size_simans"]) for r in rows if r.get("refresh/effective_sample_size_simans")
    ] == [pytest.approx(ess)]


def test_corrupt_or_partial_versions_are_never_read(tmp_path, caplog):
    root = tmp_path / "refresh"
    vdir = version_dir(root, 1)
    vdir.mkdir(parents=True)
    (vdir / NEGATIVES).write_text('{"qid": "q1", "positives": ["d1"], "negatives": [{"docid": "d2", "score": 1.0}]}\n')
    assert verified_manifest(vdir) is None  # no manifest yet: partial
    from dr.refresh import sha256_file

    write_json(
        vdir / MANIFEST,
        {
            "version": 1,
            "snapshot_step": 3,
            "negatives": NEGATIVES,
            "sha256": sha256_file(vdir / NEGATIVES),
            "bytes": (vdir / NEGATIVES).stat().st_size,
        },
    )
    assert verified_manifest(vdir)["version"] == 1
    (vdir / NEGATIVES).write_text('{"qid": "q1", "positives": ["d1"], "negatives": [{"docid": "d9", "score": 1.0}]}\n')
    assert verified_manifest(vdir) is None  # same size, other content: the checksum catches it
    # the log names the damaged file and says the folder is safe to delete (issue 25)
    assert str(vdir / MANIFEST) in caplog.text and "safe to delete" in caplog.text
    caplog.clear()
    (vdir / MANIFEST).write_text("{not json")
    assert verified_manifest(vdir) is None
    assert f"{vdir / MANIFEST} is damaged, expected a JSON manifest" in caplog.text and "safe to delete" in caplog.text
    # Orphans of a killed run: temp folders and versions after the checkpoint's go.
    (root / ".tmp-v0003-123").mkdir()
    version_dir(root, 2).mkdir()
    assert sorted(clean_refresh_dir(root, keep_upto=1)) == [".tmp-v0003-123", "v0002"]
    assert vdir.is_dir()


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
def test_killed_during_refresh_resumes_cleanly(tiny_bert, scifact_slice, tmp_path):
    """SIGKILL the training process while the worker builds version 2; resume from last.ckpt."""
    out = tmp_path / "run"
    base = _overrides(tiny_bert, scifact_slice, out, max_steps=400, mode="async", every=3)
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from hydra import compose, initialize_config_dir; from dr.cli import config_dir; from dr.training import "
        "train\n"
        "with initialize_config_dir(config_dir=config_dir(), version_base='1.3'):\n"
        "    cfg = compose('train', overrides=sys.argv[1:])\n"
        "train(cfg)\n"
    )
    # Version 2 stalls in the worker, so the kill lands while it is being built.
    args = [sys.executable, "-c", script, *base, *_faulty(sleep_versions=[2], sleep_s=120)]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr.log", "w"))
    root = out / "refresh"
    deadline = time.monotonic() + 120
    while (
        not ((root / "v0002" / "job.json").is_file() and (root / "v0001" / MANIFEST).is_file())
        and time.monotonic() < deadline
    ):
        assert proc.poll() is None, (tmp_path / "stderr.log").read_text()[-3000:]
        time.sleep(0.2)
    assert (root / "v0002").is_dir(), (tmp_path / "stderr.log").read_text()[-3000:]
    time.sleep(1.0)  # a few more steps and checkpoints on version 1
    worker_pid = json.loads((root / "worker.pid").read_text())["pid"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "v0002" / MANIFEST).exists()  # killed mid-refresh
    deadline = time.monotonic() + 10
    while _pid_alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pid_alive(worker_pid)  # the worker died with its trainer

    ckpt_path = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    state = next(
        v for k, v in ckpt["callbacks"].items() if "Refresh" in k
    )  # IndexRefresh or the FaultyRefresh subclass
    step, version = ckpt["global_step"], state["current_version"]
    (root / ".tmp-v0009-1").mkdir()  # an orphan temp folder, as a kill during a snapshot leaves
    seen = tmp_path / "seen.json"
    # The same callback class (its checkpoint state is keyed by class name), without faults this time.
    cfg = _compose(
        _overrides(tiny_bert, scifact_slice, out, max_steps=step + 5, mode="async", every=3)
        + _faulty()
        + [f"ckpt_path={ckpt_path}"]
    )
    metrics = train(_with_recorder(cfg, seen, []))
    assert metrics["train/global_step"] == step + 5
    resumed = json.loads(seen.read_text())
    assert resumed[0] == [step, version]  # the checkpoint's negatives from the first resumed batch
    assert all(a[1] <= b[1] for a, b in zip(resumed, resumed[1:]))
    assert not (root / ".tmp-v0009-1").exists()
    for v in range(1, int(metrics["refresh/current_version"]) + 1):
        vdir = version_dir(root, v)
        assert verified_manifest(vdir) is not None or (vdir / FAILED).exists() or not vdir.exists()
    assert metrics["refresh/current_version"] >= version


class RankVersionRecorder(VersionRecorder):
    """A VersionRecorder that writes one file per DDP rank."""

    def on_train_end(self, trainer, pl_module):
        self.path = f"{self.path}.rank{trainer.global_rank}"
        super().on_train_end(trainer, pl_module)


@pytest.mark.slow
def test_ddp_ranks_switch_versions_at_the_same_step(tiny_bert, scifact_slice, tmp_path):
    """Lightning DDP (gloo, 2 CPU processes), async refresh: one worker (local rank 0), and both
    ranks train every step on the same negatives version."""
    out = tmp_path / "run"
    seen = tmp_path / "seen.json"
    cfg = _compose(
        _overrides(tiny_bert, scifact_slice, out, max_steps=8, mode="async", every=3)
        + ["trainer.strategy=ddp_spawn", "trainer.devices=2", "data.batch_size=4"]
    )
    with open_dict(cfg):
        # Both ranks hold at step 4 until v1 is complete, so the swap falls inside the run.
        cfg.callbacks.recorder = {
            "_target_": "test_refresh.RankVersionRecorder",
            "path": str(seen),
            "wait": [[4, "v0001/manifest.json"]],
        }
    train(cfg)
    ranks = [json.loads(Path(f"{seen}.rank{r}").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] and len(ranks[0]) == 8
    versions = [v for _, v in ranks[0]]
    assert versions[:4] == [0, 0, 0, 0] and versions[-1] >= 1
    assert versions == sorted(versions)
    assert verified_manifest(out / "refresh" / "v0001")["snapshot_step"] == 3


def test_refresh_points_fall_on_poll_steps(tiny_bert, scifact_slice, tmp_path):
    """A refresh due between polls waits for the next poll, where ranks meet (so under DDP no rank
    enters a collective alone): every_n_steps=2 with poll_every_n_steps=3 refreshes at 3, 6 and 9."""
    out = tmp_path / "run"
    cfg = _compose(
        _overrides(tiny_bert, scifact_slice, out, max_steps=10, mode="sync", every=2) + ["refresh.poll_every_n_steps=3"]
    )
    metrics = train(cfg)
    steps = [verified_manifest(version_dir(out / "refresh", v))["snapshot_step"] for v in range(1, 4)]
    assert steps == [3, 6, 9] and metrics["refresh/current_version"] == 3


def test_refresh_with_loader_workers_is_refused_at_train_start(tiny_bert, scifact_slice, tmp_path):
    """The config check (dr.validate) refuses refresh with data.num_workers>0; the callback checks it
    again at train start for a Trainer built without the config, before any step or refresh."""
    import hydra

    from dr.config import ConfigError

    out = tmp_path / "run"
    cfg = _compose(
        _overrides(tiny_bert, scifact_slice, out, max_steps=4, mode="async", every=2) + ["data.num_workers=1"]
    )
    with pytest.raises(ConfigError, match=r"^data\.num_workers=1: expected 0 with an index refresh"):
        train(cfg)
    module = hydra.utils.instantiate(cfg.module)
    datamodule = hydra.utils.instantiate(cfg.data)
    refresh = hydra.utils.instantiate(cfg.refresh, dirpath=str(out / "refresh"))
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        callbacks=[refresh],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(out),
    )
    with pytest.raises(RuntimeError, match=r"data\.num_workers must be 0"):
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 0 and not (out / "refresh").exists()
