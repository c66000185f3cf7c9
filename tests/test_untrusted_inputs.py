"""Inputs a user (or someone who hands them a file) may give the console scripts: a checkpoint
that would run code, an export target that is not an export, symlinks where we write, truncated
and broken model files. Every case runs the real console script on a real file and expects one
``dr-<cmd>: error:`` line and exit status 2, with nothing run, deleted or half-written.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def dr(command: str, *args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``dr-<command> args`` from ``cwd``, its run folder under ``cwd/run``."""
    cmd = [str(BIN / f"dr-{command}"), *args]
    if not any(a.startswith("hydra.run.dir=") for a in args):
        cmd.append(f"hydra.run.dir={cwd / 'run'}")
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **OFFLINE, **(env or {})}, timeout=timeout
    )
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    print(f"DR-RESULT dr-{command} exit={proc.returncode} last={last[:300]}")  # the figures of the closing note
    return proc


def assert_user_error(proc: subprocess.CompletedProcess, command: str, *words: str) -> str:
    """The one ``dr-<command>: error:`` line of a user error (exit 2, no traceback); returns it."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in lines if line.startswith(f"dr-{command}: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


class _Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint could do with any code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _run_with_checkpoint(root: Path, tiny_bert: str, content: bytes) -> Path:
    """``root/RUN/checkpoints/x.ckpt`` holding ``content``, with the ``config.yaml`` of a dr-train run."""
    ckpt = root / "RUN" / "checkpoints" / "x.ckpt"
    ckpt.parent.mkdir(parents=True)
    (root / "RUN" / "config.yaml").write_text(
        f"encoder:\n  _target_: dr.models.BiEncoder.from_pretrained\n  name_or_path: {tiny_bert}\n"
    )
    ckpt.write_bytes(content)
    return ckpt


def _command_args(command: str, data: dict, tmp: Path) -> list[str]:
    """What each model-taking command needs besides ``model=``."""
    index = tmp / "no-index"
    return {
        "encode": [f"corpus={data['corpus']}"],
        "search": [f"index={index}", f"queries={data['test_queries']}"],
        "eval": [f"corpus={data['corpus']}", f"queries={data['test_queries']}", f"qrels={data['test_qrels']}"],
        "export": [f"output={tmp / 'export'}"],
        "mine": [f"corpus={data['corpus']}", f"queries={data['train_queries']}", f"qrels={data['train_qrels']}"],
        "cluster": [f"queries={data['train_queries']}", f"qrels={data['train_qrels']}"],
        "split": [
            f"train_queries={data['train_queries']}",
            f"train_qrels={data['train_qrels']}",
            f"test_queries={data['test_queries']}",
            f"test_qrels={data['test_qrels']}",
        ],
    }[command]


MODEL_COMMANDS = ["encode", "search", "eval", "export", "mine", "cluster", "split"]


@pytest.mark.parametrize(
    "command", [c if c in ("encode", "eval") else pytest.param(c, marks=pytest.mark.slow) for c in MODEL_COMMANDS]
)
def test_a_checkpoint_that_would_run_code_is_refused(command, tiny_bert, scifact_slice, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = _run_with_checkpoint(tmp_path, tiny_bert, pickle.dumps(_Payload(marker)))
    proc = dr(command, f"model={ckpt}", *_command_args(command, scifact_slice, tmp_path), cwd=tmp_path)
    assert not marker.exists(), "unpickling the checkpoint ran code"
    assert_user_error(proc, command, str(ckpt), "weights_only")


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_a_truncated_checkpoint_is_named(tiny_bert, scifact_slice, tmp_path):
    import torch

    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"encoder.x": torch.zeros(1000)}}, whole)
    ckpt = _run_with_checkpoint(tmp_path, tiny_bert, whole.read_bytes()[:2000])
    proc = dr("encode", f"model={ckpt}", f"corpus={scifact_slice['corpus']}", cwd=tmp_path)
    assert_user_error(proc, "encode", str(ckpt), "truncated")


def _tiny_train(tiny_bert: str, data: dict, run: Path) -> list[str]:
    from conftest import tiny_train_overrides

    return [*tiny_train_overrides(tiny_bert, data, run, max_steps=2), "test.enabled=false", f"hydra.run.dir={run}"]


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_dr_train_refuses_a_checkpoint_url(tiny_bert, scifact_slice, tmp_path):
    proc = dr(
        "train",
        *_tiny_train(tiny_bert, scifact_slice, tmp_path / "run"),
        "ckpt_path=https://example.com/x.ckpt",
        cwd=tmp_path,
        timeout=240,
    )
    assert_user_error(proc, "train", "ckpt_path=https://example.com/x.ckpt", "weights_only=False")
    assert not (tmp_path / "run" / "config.yaml").exists(), "the check comes before any work"


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_dr_train_names_a_truncated_resume_checkpoint(tiny_bert, scifact_slice, tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    proc = dr(
        "train",
        *_tiny_train(tiny_bert, scifact_slice, tmp_path / "run"),
        f"ckpt_path={ckpt}",
        cwd=tmp_path,
        timeout=240,
    )
    assert_user_error(proc, "train", f"ckpt_path={ckpt}", "truncated")


def _export(tiny_bert: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return dr("export", f"model={tiny_bert}", *args, cwd=cwd)


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_dr_export_keeps_a_folder_that_is_not_an_export(tiny_bert, tmp_path):
    notes = tmp_path / "notes"
    (notes / "other-model").mkdir(parents=True)
    (notes / "todo.txt").write_text("keep me")
    (notes / "other-model" / "config.json").write_text("{}")
    proc = _export(tiny_bert, tmp_path, f"output={notes}")
    assert_user_error(proc, "export", f"output={notes}", "overwrite=true")
    assert (notes / "todo.txt").read_text() == "keep me" and (notes / "other-model" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_dr_export_to_the_working_directory_is_refused_cleanly(tiny_bert, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.tsv").write_text("1\tx\n")
    proc = dr("export", f"model={tiny_bert}", "output=.", f"hydra.run.dir={tmp_path / 'run'}", cwd=work)
    assert_user_error(proc, "export", "output=.")
    assert sorted(p.name for p in work.iterdir()) == ["data.tsv"]
    assert [p.name for p in tmp_path.iterdir() if ".old." in p.name] == []


def test_dr_export_replaces_a_previous_export_and_leaves_no_side_folder(tiny_bert, tmp_path):
    target = tmp_path / "exported"
    assert _export(tiny_bert, tmp_path, f"output={target}").returncode == 0
    (target / "stale.txt").write_text("from the previous export")
    proc = _export(tiny_bert, tmp_path, f"output={target}", "hydra.run.dir=" + str(tmp_path / "run2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (target / "dr_config.json").is_file() and not (target / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if ".old." in p.name] == []


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_dr_export_overwrite_true_replaces_anything(tiny_bert, tmp_path):
    target = tmp_path / "notes"
    target.mkdir()
    (target / "todo.txt").write_text("replace me")
    proc = _export(tiny_bert, tmp_path, f"output={target}", "overwrite=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (target / "dr_config.json").is_file() and not (target / "todo.txt").exists()


# ------------------------------------------------------------------ symbolic links where dr writes
def _triples(data: dict, path: Path) -> Path:
    from dr.data import read_qrels

    qrels = read_qrels(data["train_qrels"])
    qids = sorted(qrels)[:3]
    others = sorted({d for q in sorted(qrels)[3:] for d in qrels[q]})[:2]
    path.write_text("".join(f"{q}\t{sorted(qrels[q])[0]}\t{n}\n" for q in qids for n in others))
    return path


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_dr_score_does_not_write_through_a_linked_partial_file(tiny_cross_encoder, scifact_slice, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("years of notes\n")
    output = tmp_path / "teacher.tsv"
    (tmp_path / "teacher.tsv.partial").symlink_to(victim)
    proc = dr(
        "score",
        f"triples={_triples(scifact_slice, tmp_path / 'triples.tsv')}",
        f"corpus={scifact_slice['corpus']}",
        f"queries={scifact_slice['train_queries']}",
        f"teacher.model={tiny_cross_encoder}",
        "teacher.max_length=32",
        f"output={output}",
        "show_progress=false",
        cwd=tmp_path,
    )
    assert victim.read_text() == "years of notes\n"
    assert_user_error(proc, "score", "teacher.tsv.partial", "symbolic link")


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_dr_score_names_a_damaged_progress_file(tiny_cross_encoder, scifact_slice, tmp_path):
    output = tmp_path / "teacher.tsv"
    (tmp_path / "teacher.tsv.partial").write_text("")
    (tmp_path / "teacher.tsv.progress.json").write_text('{"fingerprint": "x", "queries_')
    proc = dr(
        "score",
        f"triples={_triples(scifact_slice, tmp_path / 'triples.tsv')}",
        f"corpus={scifact_slice['corpus']}",
        f"queries={scifact_slice['train_queries']}",
        f"teacher.model={tiny_cross_encoder}",
        "teacher.max_length=32",
        f"output={output}",
        "show_progress=false",
        cwd=tmp_path,
    )
    assert_user_error(proc, "score", "teacher.tsv.progress.json", "safe to delete")


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_dr_train_does_not_write_its_config_through_a_link(tiny_bert, scifact_slice, tmp_path):
    from conftest import tiny_train_overrides

    victim = tmp_path / "precious.txt"
    victim.write_text("years of notes\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").symlink_to(victim)
    overrides = [o for o in tiny_train_overrides(tiny_bert, scifact_slice, run) if not o.startswith("data.corpus=")]
    proc = dr("train", *overrides, f"data.corpus={tmp_path / 'no-corpus.jsonl'}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert victim.read_text() == "years of notes\n"
    assert_user_error(proc, "train", "config.yaml", "symbolic link")


def test_refresh_failed_marker_is_not_written_through_a_link(tmp_path):
    from dr.refresh.store import FAILED, mark_failed, version_dir

    victim = tmp_path / "precious.txt"
    victim.write_text("years of notes\n")
    vdir = version_dir(tmp_path / "refresh", 3)
    vdir.mkdir(parents=True)
    (vdir / FAILED).symlink_to(victim)
    mark_failed(tmp_path / "refresh", 3, "the worker died")
    assert victim.read_text() == "years of notes\n"


# ------------------------------------------------------------------ the model card of an export
@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_exported_model_card_holds_no_absolute_paths(tiny_bert, scifact_slice, tmp_path):
    import torch

    from dr.models import BiEncoder

    run = tmp_path / "home" / "alice" / "runs" / "r1"
    (run / "checkpoints").mkdir(parents=True)
    encoder = BiEncoder.from_pretrained(tiny_bert)
    torch.save(
        {"state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}}, run / "checkpoints" / "last.ckpt"
    )
    (run / "config.yaml").write_text(
        f"encoder:\n  _target_: dr.models.BiEncoder.from_pretrained\n  name_or_path: {tiny_bert}\n"
        f"data:\n  corpus: {scifact_slice['corpus']}\n  train_queries: {scifact_slice['train_queries']}\n"
        f"paths:\n  output_dir: {run}\n  cache_dir: ~/.cache/dr\nckpt_path: {run / 'checkpoints' / 'last.ckpt'}\n"
        "loss:\n  _target_: dr.losses.InfoNCELoss\n"
    )
    proc = dr("export", f"model={run / 'checkpoints' / 'last.ckpt'}", f"output={tmp_path / 'exported'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "config.yaml" in card and "checkpoints/last.ckpt" in card and "corpus.jsonl" in card
    for private in (str(tmp_path), "/home/alice", str(Path(tiny_bert).parent)):
        assert private not in card


# ------------------------------------------------------------------ broken model folders and unknown hub ids
def _copy_model(tiny_bert: str, to: Path) -> Path:
    import shutil

    shutil.copytree(tiny_bert, to)
    return to


def _encode(model: str, data: dict, cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return dr("encode", f"model={model}", f"corpus={data['corpus']}", *args, cwd=cwd, env=env)


def test_a_truncated_safetensors_file_is_named(tiny_bert, scifact_slice, tmp_path):
    model = _copy_model(tiny_bert, tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert_user_error(_encode(str(model), scifact_slice, tmp_path), "encode", str(model), "model.safetensors")


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_an_empty_model_folder_is_named(scifact_slice, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(
        _encode(str(tmp_path / "empty"), scifact_slice, tmp_path), "encode", str(tmp_path / "empty"), "config.json"
    )


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
@pytest.mark.parametrize("name", ["dr_config.json", "modules.json"])
def test_a_broken_json_file_of_a_model_folder_is_named(name, tiny_bert, scifact_slice, tmp_path):
    model = _copy_model(tiny_bert, tmp_path / "model")
    (model / name).write_text('{"pooling": "cls",')
    assert_user_error(_encode(str(model), scifact_slice, tmp_path), "encode", str(model / name), "JSON")


def test_an_unknown_hub_id_offline_fails_fast_with_one_line(scifact_slice, tmp_path):
    proc = _encode("no-such-org/no-such-model", scifact_slice, tmp_path)
    assert_user_error(proc, "encode", "no such model folder, and no network to fetch hub id no-such-org/no-such-model")


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_an_unknown_hub_id_with_an_unreachable_hub_fails_fast(scifact_slice, tmp_path):
    env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = _encode("no-such-org/no-such-model", scifact_slice, tmp_path, env=env)
    assert_user_error(proc, "encode", "no network to fetch hub id no-such-org/no-such-model")


# ------------------------------------------------------------------ configs checked before any model loads
def test_a_mistyped_target_is_named(tiny_bert, scifact_slice, tmp_path):
    proc = dr(
        "train",
        *_tiny_train(tiny_bert, scifact_slice, tmp_path / "run"),
        "loss._target_=dr.losses.InfoNCELosss",
        cwd=tmp_path,
        timeout=240,
    )
    assert_user_error(proc, "train", "loss._target_=dr.losses.InfoNCELosss", "InfoNCELosss")


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
@pytest.mark.parametrize("command", ["train", "encode"])
def test_an_unknown_pooling_is_refused_before_the_model_loads(command, tiny_bert, scifact_slice, tmp_path):
    if command == "train":
        proc = dr(
            "train",
            *_tiny_train(tiny_bert, scifact_slice, tmp_path / "run"),
            "encoder.pooling=max",
            cwd=tmp_path,
            timeout=240,
        )
    else:
        proc = _encode(tiny_bert, scifact_slice, tmp_path, "encoder.pooling=max")
    assert_user_error(proc, command, "encoder.pooling=max", "cls")


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_tas_without_clusters_or_a_model_is_refused(tiny_bert, scifact_slice, tmp_path):
    proc = dr(
        "train",
        *_tiny_train(tiny_bert, scifact_slice, tmp_path / "run"),
        "sampler=tas",
        "data.batch_sampler.model=null",
        cwd=tmp_path,
        timeout=240,
    )
    assert_user_error(proc, "train", "data.batch_sampler.model=null")


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_ivfpq_on_a_corpus_too_small_to_train_it_is_refused(tiny_bert, scifact_slice, tmp_path):
    corpus = tmp_path / "small.jsonl"
    corpus.write_text("".join(open(scifact_slice["corpus"]).readlines()[:50]))
    proc = dr("encode", f"model={tiny_bert}", f"corpus={corpus}", "index_kind=ivfpq", cwd=tmp_path)
    assert_user_error(proc, "encode", "index_kind=ivfpq", "50 passages")


# ------------------------------------------------------------------ state files and the environment
@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_a_damaged_shard_manifest_is_named(tiny_bert, scifact_slice, tmp_path):
    shards = tmp_path / "emb"
    shards.mkdir()
    (shards / "manifest.json").write_text('{"format": 1, "shards": [')
    proc = _encode(tiny_bert, scifact_slice, tmp_path, "shard_size=100", f"embeddings={shards}")
    assert_user_error(proc, "encode", str(shards / "manifest.json"), "safe to delete")


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_a_bad_dr_malloc_exits_2(scifact_slice, tmp_path):
    proc = dr("encode", "model=x", env={"DR_MALLOC": "tcmalloc"}, cwd=tmp_path)
    assert_user_error(proc, "encode", "DR_MALLOC='tcmalloc'", "expected one of auto, jemalloc, system")


def test_a_full_disk_while_the_run_folder_is_made_names_the_file_and_leaves_no_truncated_config(tmp_path):
    """Writes past a file-size limit fail with EFBIG as on a full disk (even for root): Hydra's own
    ``.hydra/config.yaml`` was left truncated and the error had no path."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))

    qrels = tmp_path / "qrels.trec"
    qrels.write_text("q1 0 d1 1\n")
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 1.0 t\n")
    proc = subprocess.run(
        [str(BIN / "dr-eval"), f"run_file={run}", f"qrels={qrels}", f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE},
        preexec_fn=limit,
        timeout=300,
    )
    assert_user_error(proc, "eval", str(tmp_path / "out" / ".hydra" / "config.yaml"), "File too large")
    assert not (tmp_path / "out" / ".hydra" / "config.yaml").exists()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.stat().st_size > 0]


# ------------------------------------------------------------------ data that was silently lost or mangled
@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_an_index_whose_save_was_interrupted_is_refused(tiny_bert, scifact_slice, tmp_path):
    """A crash between the renames of ``docid`` and ``index``: the new docids with the old vectors."""
    import shutil

    lines = open(scifact_slice["corpus"]).readlines()
    reordered = tmp_path / "reordered.jsonl"
    reordered.write_text("".join(reversed(lines)))
    index = tmp_path / "index"
    assert (
        dr(
            "encode", f"model={tiny_bert}", f"corpus={scifact_slice['corpus']}", f"output={index}", cwd=tmp_path
        ).returncode
        == 0
    )
    shutil.copy(index / "index", tmp_path / "old-vectors")
    proc = dr(
        "encode",
        f"model={tiny_bert}",
        f"corpus={reordered}",
        f"output={index}",
        f"hydra.run.dir={tmp_path / 'run2'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    shutil.copy(tmp_path / "old-vectors", index / "index")  # as if the process died between the two renames
    proc = dr(
        "search",
        f"model={tiny_bert}",
        f"index={index}",
        f"queries={scifact_slice['test_queries']}",
        f"hydra.run.dir={tmp_path / 'run3'}",
        cwd=tmp_path,
    )
    assert_user_error(proc, "search", str(index), "not from the same save")


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_score_in_a_negatives_file_is_named(bad, tiny_cross_encoder, scifact_slice, tmp_path):
    from dr.data import read_qrels

    qrels = read_qrels(scifact_slice["train_qrels"])
    q1, q2 = sorted(qrels)[:2]
    negatives = tmp_path / "negatives.jsonl"
    negatives.write_text(
        f'{{"qid": "{q1}", "positives": ["{sorted(qrels[q1])[0]}"], "negatives": [{{"docid": "{sorted(qrels[q2])[0]}'
        f'", "score": '
        f"1.5}}]}}\n"
        f'{{"qid": "{q2}", "positives": ["{sorted(qrels[q2])[0]}"], "negatives": [{{"docid": "{sorted(qrels[q1])[0]}'
        f'", "score": {bad}}}]}}\n'
    )
    proc = dr(
        "score",
        f"negatives={negatives}",
        f"corpus={scifact_slice['corpus']}",
        f"queries={scifact_slice['train_queries']}",
        f"teacher.model={tiny_cross_encoder}",
        "teacher.max_length=32",
        "show_progress=false",
        cwd=tmp_path,
    )
    assert_user_error(proc, "score", f"{negatives}, line 2", "finite", "null")


DL19 = [f"run_file={Path(__file__).parent / 'data' / 'BM25_dl19.run'}", "preset=dl19"]


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_a_finished_run_folder_is_not_reused_by_accident(tmp_path):
    run = tmp_path / "run"
    assert dr("eval", *DL19, f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0
    metrics = (run / "metrics.json").read_bytes()
    (run / "metrics.json").write_bytes(metrics.replace(b"{", b'{"mine": 1, ', 1))  # a result of that run, to keep
    log_size = (run / "evaluate.log").stat().st_size
    proc = dr("eval", *DL19, "measures=[P@5]", f"hydra.run.dir={run}", cwd=tmp_path)
    assert_user_error(proc, "eval", f"hydra.run.dir={run}", "--overwrite")
    assert b'"mine": 1' in (run / "metrics.json").read_bytes() and (run / "evaluate.log").stat().st_size == log_size
    proc = dr("eval", *DL19, "measures=[P@5]", f"hydra.run.dir={run}", "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert b"P@5" in (run / "metrics.json").read_bytes()


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_runs_launched_in_the_same_second_get_their_own_folders(tmp_path):
    procs = [
        subprocess.Popen(
            [str(BIN / "dr-eval"), *DL19],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **OFFLINE},
        )
        for _ in range(2)
    ]
    for p in procs:
        p.communicate(timeout=300)
        assert p.returncode == 0
    folders = list((tmp_path / "outputs" / "evaluate").iterdir())
    assert len(folders) == 2 and all((f / "metrics.json").is_file() for f in folders)


# ------------------------------------------------------------------ optional packages, long lines
@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
@pytest.mark.parametrize("preset", ["dl20", "msmarco-dev"])
def test_a_preset_that_needs_ir_datasets_says_which_extra_to_install(preset, tmp_path):
    try:
        import ir_datasets  # noqa: F401

        pytest.skip("ir_datasets is installed here")
    except ImportError:
        pass
    proc = dr("eval", f"preset={preset}", f"run_file={Path(__file__).parent / 'data' / 'BM25_dl19.run'}", cwd=tmp_path)
    assert_user_error(proc, "eval", "irds:", "pip install 'dr[irds]'")


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_a_line_past_the_cap_is_named_without_reading_it_whole(tiny_bert, tmp_path):
    import gzip

    corpus = tmp_path / "corpus.tsv.gz"
    with gzip.open(corpus, "wt") as f:
        f.write("d1\tdense retrieval encodes passages\n")
        f.write("d2\t" + "x" * (3 << 20) + "\n")
    proc = dr("encode", f"model={tiny_bert}", f"corpus={corpus}", cwd=tmp_path, env={"DR_MAX_LINE_BYTES": str(1 << 20)})
    assert_user_error(proc, "encode", f"{corpus}, line 2", "1048576 bytes")


def test_a_very_long_query_is_cut_before_tokenising(tiny_bert, tmp_path):
    """A 600 KB query (under the line cap): the tokens are those of its first characters."""
    from dr.models import BiEncoder

    encoder = BiEncoder.load(tiny_bert, device="cpu")
    long = "dense retrieval " * 40_000
    assert (
        encoder.tokenize([long], "query")["input_ids"].tolist()
        == encoder.tokenize([long[:2000]], "query")["input_ids"].tolist()
    )
    calls = []
    original = encoder.tokenizer.__class__.__call__

    def spy(self, texts, *args, **kwargs):
        calls.append(max(len(t) for t in texts))
        return original(self, texts, *args, **kwargs)

    encoder.tokenizer.__class__.__call__ = spy
    try:
        encoder.encode_queries([long], batch_size=1, show_progress=False)
    finally:
        encoder.tokenizer.__class__.__call__ = original
    assert calls and max(calls) <= 32 * encoder.query_max_length


# ------------------------------------------------------------------ dr-compare on runs with different query sets
def _compare_inputs(tmp_path: Path) -> list[str]:
    data = Path(__file__).parent / "data"
    lines = (data / "D_BERT_KD_TASB_dl19.run").read_text().splitlines(keepends=True)
    qids = sorted({line.split()[0] for line in lines})
    partial = tmp_path / "partial.run"
    partial.write_text("".join(line for line in lines if line.split()[0] not in qids[:3]))
    return [
        f"run_files=[{data / 'BM25_dl19.run'},{partial}]",
        f"qrels={data / 'qrels.dl19.full.trec'}",
        "permutations=200",
    ]


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_dr_compare_refuses_different_query_sets_with_on_missing_error(tmp_path):
    proc = dr("compare", *_compare_inputs(tmp_path), "on_missing=error", cwd=tmp_path)
    assert_user_error(proc, "compare", "on_missing=error", "3 of 43 judged queries", "partial.run")


def test_dr_compare_counts_the_left_out_queries_in_its_header(tmp_path):
    proc = dr("compare", *_compare_inputs(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "40 queries (judged, answered by every run; 3 judged queries that not every run answers are left out)"
        in (tmp_path / "run" / "compare.md").read_text()
    )


def test_the_corpus_cache_keeps_one_table_per_corpus_under_drs_cache(tiny_bert, scifact_slice, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    lines = open(scifact_slice["corpus"]).readlines()
    corpus.write_text("".join(lines[:60]))
    env = {"DR_CACHE_DIR": str(tmp_path / "cache")}
    # backend=torch: auto's first calibration would read the bundled SciFact corpus into the same cache
    assert (
        dr("encode", f"model={tiny_bert}", f"corpus={corpus}", "backend=torch", env=env, cwd=tmp_path).returncode == 0
    )
    corpus.write_text("".join(lines[:80]))  # a new version of the same corpus
    proc = dr(
        "encode",
        f"model={tiny_bert}",
        f"corpus={corpus}",
        "backend=torch",
        f"hydra.run.dir={tmp_path / 'run2'}",
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    tables = list((tmp_path / "cache" / "datasets" / "generator").iterdir())
    assert len(tables) == 1, tables


def test_a_real_dr_train_checkpoint_loads_with_weights_only(cfg_train, scifact_slice, tmp_path):
    """What dr-train writes holds only tensors and plain values: the safe loader takes it as it is."""
    import torch

    from dr.models import BiEncoder
    from dr.retrieval.index import DenseIndex
    from dr.training import train

    run = tmp_path / "trained"
    train(cfg_train("test.enabled=false", "export.enabled=false", out=run, max_steps=2))
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = dr(
        "encode", f"model={ckpt}", f"corpus={scifact_slice['corpus']}", f"output={tmp_path / 'index'}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(DenseIndex.load(tmp_path / "index", use_gpu=False)) == sum(1 for _ in open(scifact_slice["corpus"]))
    trained = BiEncoder.load(str(ckpt), device="cpu").state_dict()
    exported = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(trained[k[len("encoder.") :]], v) for k, v in exported.items() if k.startswith("encoder."))
