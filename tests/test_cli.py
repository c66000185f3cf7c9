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


def test_dr_eval_run_file_from_another_directory(tmp_path):
    out = tmp_path / "out"
    proc = run(
        [str(BIN / "dr-eval"), f"run_file={DATA / 'BM25_dl19.run'}", f"qrels={DATA / 'qrels.dl19.full.trec'}",
         "measures=[nDCG@10,RR@10]", f"hydra.run.dir={out}"],
        cwd=tmp_path,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["nDCG@10", "RR@10"]
    assert abs(metrics["nDCG@10"] - 0.5058) < 5e-5
    assert "nDCG@10" in proc.stdout


def test_runs_land_in_a_folder_named_after_the_command(tmp_path):
    """Without hydra.run.dir a run goes to outputs/<command>/<date> and logs to <command>.log."""
    run([str(BIN / "dr-eval"), "preset=dl19", f"run_file={DATA / 'BM25_dl19.run'}"], cwd=tmp_path)
    (run_dir,) = (tmp_path / "outputs" / "evaluate").iterdir()
    assert (run_dir / "metrics.json").is_file() and (run_dir / "evaluate.log").is_file()


def test_dr_eval_dl19_preset_uses_bundled_qrels(tmp_path):
    out = tmp_path / "out"
    run([str(BIN / "dr-eval"), "preset=dl19", f"run_file={DATA / 'D_BERT_KD_TASB_dl19.run'}", f"hydra.run.dir={out}"], cwd=tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"nDCG@10", "RR@10", "AP(rel=2)", "R(rel=2)@1000"}
    assert abs(metrics["nDCG@10"] - 0.7210) < 5e-5


def test_encode_search_eval_export_with_a_model(tiny_bert, scifact_slice, tmp_path):
    model = [f"model={tiny_bert}", "encoder.pooling=mean", "encoder.passage_max_length=64"]
    run([str(BIN / "dr-encode"), *model, f"corpus={scifact_slice['corpus']}", f"hydra.run.dir={tmp_path / 'enc'}"], cwd=tmp_path)
    index = DenseIndex.load(tmp_path / "enc" / "index")
    assert len(index) == sum(1 for _ in open(scifact_slice["corpus"]))

    run([str(BIN / "dr-search"), *model, f"index={tmp_path / 'enc' / 'index'}", f"queries={scifact_slice['test_queries']}",
         "k=10", f"hydra.run.dir={tmp_path / 'search'}"], cwd=tmp_path)
    lines = (tmp_path / "search" / "run.trec").read_text().splitlines()
    assert len(lines) == 10 * sum(1 for _ in open(scifact_slice["test_queries"]))
    assert lines[0].split()[1] == "Q0" and lines[0].split()[3] == "1"

    run([str(BIN / "dr-eval"), *model, f"corpus={scifact_slice['corpus']}", f"queries={scifact_slice['test_queries']}",
         f"qrels={scifact_slice['test_qrels']}", f"hydra.run.dir={tmp_path / 'eval'}"], cwd=tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"nDCG@10", "R@100"} and 0 <= metrics["nDCG@10"] <= 1

    run([str(BIN / "dr-export"), *model, f"corpus={scifact_slice['corpus']}", f"output={tmp_path / 'export'}",
         f"hydra.run.dir={tmp_path / 'exp'}"], cwd=tmp_path)
    assert (tmp_path / "export" / "modules.json").is_file()
    assert len(DenseIndex.load(tmp_path / "export" / "index")) == len(index)


def test_bad_input_gives_a_clear_error(tmp_path):
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 0 d1 1\nq1 0 d2\n")
    proc = subprocess.run(
        [str(BIN / "dr-eval"), f"run_file={DATA / 'BM25_dl19.run'}", f"qrels={bad}", f"hydra.run.dir={tmp_path / 'o'}"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "bad.trec, line 2" in proc.stderr


def test_regular_install_finds_its_configs(tmp_path):
    """A non-editable `pip install .` ships conf/ inside the package: dr-eval works from anywhere."""
    target = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT)],
        cwd=tmp_path)
    assert (target / "dr" / "conf" / "train.yaml").is_file()
    assert (target / "dr" / "resources" / "trec-dl-2019" / "qrels.trec").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(target)}
    proc = run([sys.executable, "-c", "import dr.cli; print(dr.cli.config_dir())"], cwd=elsewhere, env=env)
    assert proc.stdout.strip() == str(target / "dr" / "conf")
    out = elsewhere / "out"
    run([str(target / "bin" / "dr-eval"), "preset=dl19", f"run_file={DATA / 'BM25_dl19.run'}", f"hydra.run.dir={out}"],
        cwd=elsewhere, env=env)
    assert abs(json.loads((out / "metrics.json").read_text())["nDCG@10"] - 0.5058) < 5e-5
    proc = run([str(target / "bin" / "dr-train"), "--cfg", "job"], cwd=elsewhere, env=env)
    assert "RetrievalDataModule" in proc.stdout
