"""The console scripts, run as a user would: from another directory, through Hydra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dr.retrieval.index import DenseIndex

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_dr_eval_run_file_from_another_directory(tmp_path):
    out = tmp_path / "out"
    proc = run(
        [
            str(BIN / "dr-eval"),
            f"run_file={DATA / 'BM25_dl19.run'}",
            f"qrels={DATA / 'qrels.dl19.full.trec'}",
            "measures=[nDCG@10,RR@10]",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["nDCG@10", "RR@10"]
    assert abs(metrics["nDCG@10"] - 0.5058) < 5e-5
    assert "nDCG@10" in proc.stdout


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
def test_runs_land_in_a_folder_named_after_the_command(tmp_path):
    """Without hydra.run.dir a run goes to outputs/<command>/<date> and logs to <command>.log."""
    run([str(BIN / "dr-eval"), "preset=dl19", f"run_file={DATA / 'BM25_dl19.run'}"], cwd=tmp_path)
    (run_dir,) = (tmp_path / "outputs" / "evaluate").iterdir()
    assert (run_dir / "metrics.json").is_file() and (run_dir / "evaluate.log").is_file()


def test_dr_eval_dl19_preset_uses_bundled_qrels(tmp_path):
    out = tmp_path / "out"
    run(
        [str(BIN / "dr-eval"), "preset=dl19", f"run_file={DATA / 'D_BERT_KD_TASB_dl19.run'}", f"hydra.run.dir={out}"],
        cwd=tmp_path,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"nDCG@10", "RR@10", "AP(rel=2)", "R(rel=2)@1000"}
    assert abs(metrics["nDCG@10"] - 0.7210) < 5e-5


def test_encode_search_eval_export_with_a_model(tiny_bert, scifact_slice, tmp_path):
    model = [f"model={tiny_bert}", "encoder.pooling=mean", "encoder.passage_max_length=64"]
    run(
        [str(BIN / "dr-encode"), *model, f"corpus={scifact_slice['corpus']}", f"hydra.run.dir={tmp_path / 'enc'}"],
        cwd=tmp_path,
    )
    index = DenseIndex.load(tmp_path / "enc" / "index")
    assert len(index) == sum(1 for _ in open(scifact_slice["corpus"]))

    run(
        [
            str(BIN / "dr-search"),
            *model,
            f"index={tmp_path / 'enc' / 'index'}",
            f"queries={scifact_slice['test_queries']}",
            "k=10",
            f"hydra.run.dir={tmp_path / 'search'}",
        ],
        cwd=tmp_path,
    )
    lines = (tmp_path / "search" / "run.trec").read_text().splitlines()
    assert len(lines) == 10 * sum(1 for _ in open(scifact_slice["test_queries"]))
    assert lines[0].split()[1] == "Q0" and lines[0].split()[3] == "1"

    run(
        [
            str(BIN / "dr-eval"),
            *model,
            f"corpus={scifact_slice['corpus']}",
            f"queries={scifact_slice['test_queries']}",
            f"qrels={scifact_slice['test_qrels']}",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        cwd=tmp_path,
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"nDCG@10", "R@100"} and 0 <= metrics["nDCG@10"] <= 1

    run(
        [
            str(BIN / "dr-export"),
            *model,
            f"corpus={scifact_slice['corpus']}",
            f"output={tmp_path / 'export'}",
            f"hydra.run.dir={tmp_path / 'exp'}",
        ],
        cwd=tmp_path,
    )
    assert (tmp_path / "export" / "modules.json").is_file()
    assert len(DenseIndex.load(tmp_path / "export" / "index")) == len(index)


def _bad_qrels(tmp: Path) -> list[str]:
    (tmp / "bad.trec").write_text("q1 0 d1 1\nq1 0 d2\n")
    return [f"run_file={DATA / 'BM25_dl19.run'}", f"qrels={tmp / 'bad.trec'}"]


def _non_utf8_queries(tmp: Path) -> list[str]:
    (tmp / "queries.tsv").write_bytes(b"q1\tfine\nq2\tnot \xff utf-8\n")
    return [
        f"model={tmp / 'model'}",
        f"queries={tmp / 'queries.tsv'}",
        "corpus=scifact:corpus",
        f"qrels={DATA / 'qrels.dl19.full.trec'}",
    ]


def _missing_model(tmp: Path) -> list[str]:
    return [
        f"model={tmp / 'no-such-model'}",
        "queries=scifact:test_queries",
        "corpus=scifact:corpus",
        "qrels=scifact:test_qrels",
    ]


#: bad input -> (dr-eval arguments, the one line the user sees, with {tmp} for the test's folder)
USER_ERRORS = {
    "bad qrels line": (
        _bad_qrels,
        "dr-eval: error: {tmp}/bad.trec, line 2: expected 4 whitespace-separated fields 'qid 0 docid grade', got 3",
    ),
    "non-UTF-8 queries": (
        _non_utf8_queries,
        "dr-eval: error: {tmp}/queries.tsv, line 2: expected UTF-8 text, got the byte 0xff at column 8",
    ),
    "missing model folder": (
        _missing_model,
        "dr-eval: error: {tmp}/no-such-model: no such model folder (expected a saved or exported model, or a hub id "
        "like org/name)",
    ),
    "bad config value": (
        lambda tmp: [f"run_file={DATA / 'BM25_dl19.run'}", "preset=dl19", "k=0"],
        "dr-eval: error: k=0: expected a positive integer",
    ),
    "unknown key": (
        lambda tmp: ["top_k=5"],
        "dr-eval: error: Could not override 'top_k'. To append to your config use +top_k=5. Key 'top_k' is not in "
        "struct.",
    ),
}


def _dr_eval(args: list[str], tmp: Path, env: dict | None = None, flags: tuple = ()) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "dr-eval"), *flags, *args, f"hydra.run.dir={tmp / 'out'}"]
    return subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


@pytest.mark.parametrize("case", USER_ERRORS)
def test_user_errors_are_one_line_and_exit_2(case, tmp_path):
    make_args, expected = USER_ERRORS[case]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [str(BIN / "dr-eval"), *make_args(tmp_path), f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected.format(tmp=tmp_path)), proc.stderr


@pytest.mark.slow  # a few subprocesses of ~9 s each (the default suite keeps a representative case)
@pytest.mark.parametrize("how", ["HYDRA_FULL_ERROR=1", "--debug"])
def test_tracebacks_on_request(how, tmp_path):
    env, flags = ({"HYDRA_FULL_ERROR": "1"}, ()) if how.startswith("HYDRA") else ({}, ("--debug",))
    proc = _dr_eval(_bad_qrels(tmp_path), tmp_path, env=env, flags=flags)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith(f"dr.data.io.DataError: {tmp_path}/bad.trec, line 2:")


def test_unexpected_errors_keep_their_traceback(tmp_path):
    script = (
        "from dr.cli import hydra_command\n"
        "def run(cfg, out):\n"
        "    raise RuntimeError('a bug')\n"
        "hydra_command('evaluate', run)()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "RuntimeError: a bug" in proc.stderr


def test_dr_train_validates_before_any_work(tmp_path):
    """data.batch_size=0 used to end in a ZeroDivisionError after the BM25 evaluation."""
    proc = subprocess.run(
        [str(BIN / "dr-train"), "data.batch_size=0", f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["dr-train: error: data.batch_size=0: expected a positive integer"]
    assert "faiss.loader" not in proc.stdout  # FAISS's loader messages stay below the default level
    assert not (tmp_path / "out" / "config.yaml").exists()


def test_regular_install_finds_its_configs(tmp_path):
    """A non-editable `pip install .` ships conf/ inside the package: dr-eval works from anywhere."""
    target = tmp_path / "site"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        cwd=tmp_path,
    )
    assert (target / "dr" / "conf" / "train.yaml").is_file()
    assert (target / "dr" / "resources" / "trec-dl-2019" / "qrels.trec").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(target)}
    proc = run([sys.executable, "-c", "import dr.cli; print(dr.cli.config_dir())"], cwd=elsewhere, env=env)
    assert proc.stdout.strip() == str(target / "dr" / "conf")
    out = elsewhere / "out"
    run(
        [str(target / "bin" / "dr-eval"), "preset=dl19", f"run_file={DATA / 'BM25_dl19.run'}", f"hydra.run.dir={out}"],
        cwd=elsewhere,
        env=env,
    )
    assert abs(json.loads((out / "metrics.json").read_text())["nDCG@10"] - 0.5058) < 5e-5
    proc = run([str(target / "bin" / "dr-train"), "--cfg", "job"], cwd=elsewhere, env=env)
    assert "RetrievalDataModule" in proc.stdout
