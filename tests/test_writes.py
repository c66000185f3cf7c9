"""Everything dr writes: ordinary permissions under the user's umask, and crash safety when a
write fails (a full disk, an I/O error): the previous good file stays and the error names the
file. Failures are injected at the OS boundary: ``os.fsync`` / ``os.replace`` raising, and in a
subprocess a real file-size limit (``RLIMIT_FSIZE``: writes past it fail with EFBIG, as on a full
disk, even for root)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from dr.data import (
    NegativesRecord,
    read_negatives,
    write_clusters,
    write_json,
    write_negatives,
    write_run,
    write_teacher_scores,
)
from dr.models.encoder import BiEncoder
from dr.evaluation import write_metrics
from dr.export.export import export
from dr.retrieval.index import DenseIndex
from dr.teachers.scoring import QueryPairs, score_to_file
from dr.training.checkpoint_io import AtomicCheckpointIO


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027():
    """A non-default umask: group may read, others nothing."""
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _encoder(tiny_bert: str) -> BiEncoder:
    return BiEncoder.from_pretrained(
        tiny_bert, pooling="mean", normalize=True, similarity="cos", query_max_length=12, passage_max_length=32
    )


def _index(n: int = 5, dim: int = 32) -> DenseIndex:
    return DenseIndex.build(
        np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32), [f"d{i}" for i in range(n)]
    )


# ----------------------------------------------------------------------------------- permissions
def test_export_and_negatives_get_the_umask_modes(tiny_bert, tmp_path, umask_027):
    """Not 0700 folders and 0600 files (mkdtemp's and safetensors' temporary files): the serving
    user of the group can load the model."""
    out = export(_encoder(tiny_bert), tmp_path / "export", index=_index())
    paths = [out, *out.rglob("*")]
    assert (out / "model.safetensors") in paths and (out / "index" / "index") in paths
    for path in paths:
        assert mode(path) == (0o750 if path.is_dir() else 0o640), path
    negatives = tmp_path / "runs" / "negatives.jsonl"
    write_negatives(negatives, [NegativesRecord("q1", ["d1"], ["d2"], [1.0], [2.0])])
    assert mode(negatives) == 0o640 and mode(negatives.parent) == 0o750


def test_saving_into_an_existing_folder_keeps_the_modes_of_other_files(tiny_bert, tmp_path, umask_027):
    out = tmp_path / "model"
    out.mkdir(mode=0o700)
    os.chmod(out, 0o700)
    (out / "private.txt").write_text("mine")
    os.chmod(out / "private.txt", 0o600)
    _encoder(tiny_bert).save_pretrained(out)
    assert mode(out / "model.safetensors") == 0o640
    assert mode(out / "private.txt") == 0o600 and mode(out) == 0o700  # not ours to change


# ---------------------------------------------------------------------------- failed writes
def _fail(monkeypatch, name: str, code: int = errno.ENOSPC, after: int = 0) -> None:
    """``os.<name>`` raises OSError(code) from its ``after + 1``-th call on."""
    real, calls = getattr(os, name), []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) > after:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, failing)


WRITERS = {
    "negatives": lambda p, v: write_negatives(p, [NegativesRecord("q1", ["d1"], [f"d{v}"], [float(v)], [1.0])]),
    "run": lambda p, v: write_run({"q1": {"d1": float(v)}}, p),
    "run.gz": lambda p, v: write_run({"q1": {"d1": float(v)}}, p),
    "metrics": lambda p, v: write_metrics({"nDCG@10": float(v)}, p),
    "teacher scores": lambda p, v: write_teacher_scores(p, [(float(v), 0.0, "q1", "d1", "d2")]),
    "clusters": lambda p, v: write_clusters(p, [[f"q{v}"]]),
    "json": lambda p, v: write_json(p, {"v": v}),
}
SUFFIX = {"run.gz": ".trec.gz", "metrics": ".json", "json": ".json"}


@pytest.mark.parametrize("failing", ["fsync", "replace"])
@pytest.mark.parametrize("writer", WRITERS)
def test_a_failed_write_keeps_the_previous_file_and_names_it(writer, failing, tmp_path, monkeypatch):
    path = tmp_path / f"out{SUFFIX.get(writer, '.txt')}"
    WRITERS[writer](path, 1)
    before = path.read_bytes()
    _fail(monkeypatch, failing)
    with pytest.raises(OSError, match="No space left on device") as excinfo:
        WRITERS[writer](path, 2)
    assert excinfo.value.errno == errno.ENOSPC and excinfo.value.filename == str(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left behind


def test_a_full_disk_keeps_the_previous_negatives(tmp_path):
    """A real write error: the file-size limit makes the write itself fail (EFBIG) half-way."""
    path = tmp_path / "negatives.jsonl"
    write_negatives(path, [NegativesRecord("q1", ["d1"], ["d2"], [1.0], [2.0])])
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal
        from dr.data import NegativesRecord, write_negatives
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write returns EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        records = [NegativesRecord(f"q{{i}}", ["d1"], [f"d{{j}}" for j in range(20)]) for i in range(200)]
        try:
            write_negatives({str(path)!r}, records)
        except OSError as e:
            print(type(e).__name__, e.errno, e.filename)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["OSError", str(errno.EFBIG), str(path)], proc.stdout + proc.stderr
    assert path.read_bytes() == before and len(read_negatives(path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_failed_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(3)}}, path)
    _fail(monkeypatch, "fsync")
    with pytest.raises(OSError) as excinfo:
        io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.zeros(3)}}, path)
    assert excinfo.value.filename == str(path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_the_trainer_config_writes_checkpoints_atomically(compose_config, tmp_path):
    import hydra

    cfg = compose_config(
        "train", [f"paths.output_dir={tmp_path}", "trainer.accelerator=cpu", "trainer.precision=32-true"]
    )
    from dr.training.best_checkpoint import trainer_arguments

    trainer = hydra.utils.instantiate(trainer_arguments(cfg)[0], logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.parametrize("failing_file,after", [("index", 0), ("docid", 1)])
def test_a_failed_index_save_keeps_the_previous_index(failing_file, after, tmp_path, monkeypatch):
    """Both files are written out before either is renamed: whichever write fails, neither changes."""
    out = tmp_path / "index"
    _index(5).save(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _fail(monkeypatch, "fsync", after=after)
    with pytest.raises(OSError) as excinfo:
        _index(7).save(out)
    assert excinfo.value.filename == str(out / failing_file)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert len(DenseIndex.load(out)) == 5


def test_a_failed_export_keeps_the_previous_export(tiny_bert, tmp_path, monkeypatch):
    encoder = _encoder(tiny_bert)
    out = export(encoder, tmp_path / "export")
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _fail(monkeypatch, "fsync")
    with pytest.raises(OSError) as excinfo:
        export(encoder, out, index=_index())
    assert str(excinfo.value.filename).startswith(str(out)) and ".export." not in str(excinfo.value.filename)
    monkeypatch.undo()
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


class _Teacher:
    def score_groups(self, queries, candidates):
        return [np.arange(len(c), dtype=np.float64) for c in candidates]


def test_a_failed_teacher_scoring_keeps_the_previous_file(tmp_path, monkeypatch):
    output = tmp_path / "teacher.tsv"
    output.write_text("1\t0\tq0\td0\td1\n")
    groups = [QueryPairs(f"q{i}", [("d0", "d1")]) for i in range(4)]
    _fail(monkeypatch, "fsync")
    with pytest.raises(OSError) as excinfo:
        score_to_file(_Teacher(), groups, str, str, output, chunk_size=2, show_progress=False)
    assert excinfo.value.filename == str(output) + ".partial"
    monkeypatch.undo()
    assert output.read_text() == "1\t0\tq0\td0\td1\n"
    assert score_to_file(_Teacher(), groups, str, str, output, chunk_size=2, show_progress=False) == 4  # and it resumes
