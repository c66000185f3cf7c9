"""``dr-pipeline`` (issue #24): the two-stage job of conf/pipeline/scifact.yaml on a tiny random BERT
and a SciFact slice: every stage runs once, a second run is all cache hits, a run stopped between
stages (``until``, or a SIGKILL) resumes at the first unfinished stage, a half-written stage is
redone, another stage-2 seed reuses everything before stage 2, and ``--dry-run`` runs nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dr.cli.pipeline import compose_command
from dr.cli.pipeline import run as run_pipeline
from dr.config import ConfigError
from dr.pipeline import cache_lock, job_specs, plan

VENV_BIN = Path(sys.executable).parent
ROWS = ["BM25", "zero-shot", "stage 1", "fusion teacher", "stage 2"]

TINY_TRAIN = [
    "encoder.pooling=cls",
    "encoder.query_max_length=16",
    "encoder.passage_max_length=48",
    "data.batch_size=8",
    "data.val_fraction=0.1",
    "data.val_depth=10",
    "test.batch_size=32",
    "test.bf16=false",
    "test.backend=torch",
    "test.cache_dir=null",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.max_steps=4",
    "trainer.enable_progress_bar=false",
    "trainer.val_check_interval=2",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "optimizer.lr=1e-3",
    "scheduler.num_warmup_steps=1",
    "refresh.enabled=false",
]


@pytest.fixture
def pipeline_cfg(tiny_bert, scifact_slice, tmp_path, compose_config):
    """``pipeline_cfg(*overrides)``: conf/pipeline.yaml (pipeline=scifact) on the tiny BERT and the slice;
    the slice's test split also stands in for the out-of-domain set."""
    data = scifact_slice

    def _cfg(*overrides: str):
        cfg = compose_config(
            "pipeline",
            [
                f"cache_dir={tmp_path / 'cache'}",
                f"zero_shot={tiny_bert}",
                "bf16=false",
                f"dataset.corpus={data['corpus']}",
                f"dataset.train_queries={data['train_queries']}",
                f"dataset.train_qrels={data['train_qrels']}",
                f"dataset.test_queries={data['test_queries']}",
                f"dataset.test_qrels={data['test_qrels']}",
                "ood.enabled=true",
                f"ood.corpus={data['corpus']}",
                f"ood.queries={data['test_queries']}",
                f"ood.qrels={data['test_qrels']}",
                *overrides,
            ],
        )
        OmegaConf.update(
            cfg,
            "extra",
            {
                "dr-train": TINY_TRAIN,
                "dr-mine": ["top_k=20", "batch_size=32"],
                "dr-score": [
                    "max_negatives=5",
                    "teacher.query_max_length=16",
                    "teacher.passage_max_length=48",
                    "teacher.batch_size=32",
                ],
                "dr-eval": ["batch_size=32"],
                "dr-split": ["batch_size=32"],
                "dr-compare": ["permutations=200"],
                "dr-plot": [],
            },
            merge=True,  # the test's own extra.<stage>, if any, stays
        )
        return cfg

    return _cfg


def _save_as_group(cfg, path: Path) -> None:
    """``cfg`` as a ``pipeline`` group file (the primary config keeps cache_dir, dry_run and until)."""
    saved = OmegaConf.to_container(cfg)
    for key in ("cache_dir", "dry_run", "until"):
        saved.pop(key)
    path.write_text("# @package _global_\n" + OmegaConf.to_yaml(saved))


def _lines(text: str) -> dict[str, str]:
    """Stage name -> its progress line's state (cached / running / to run)."""
    states = {}
    for line in text.splitlines():
        if line.startswith("[") and "] " in line:
            name_and_rest = line.split("] ", 1)[1]
            for state in ("cached", "running", "to run"):
                if f" {state} " in f"{name_and_rest} ":
                    states[name_and_rest.split("  ")[0].strip()] = state
                    break
    return states


def test_two_stage_pipeline_caches_resumes_and_reports(pipeline_cfg, tmp_path, capsys):
    out = tmp_path / "job"
    # 1. stopped after the pool: split, stage 1 and pool run, nothing else
    reached = run_pipeline(pipeline_cfg("until=pool"), out)
    assert list(reached) == ["split", "stage1", "pool"] and not any(r["cached"] for r in reached.values())
    assert not (out / "table.md").read_text().strip().startswith("stage")
    first = capsys.readouterr().out
    assert all(state == "running" for state in _lines(first).values()), first

    # 2. the teacher stage was killed half-way: its folder exists without DONE.json
    stages = {s.name: s for s in plan(job_specs(pipeline_cfg()), tmp_path / "cache", compose_command)}
    stages["teacher"].dir.mkdir(parents=True)
    (stages["teacher"].dir / "teacher.tsv").write_text("half a line")

    # 3. the whole job: the first three stages are reused, the rest run (the teacher again, from scratch)
    reached = run_pipeline(pipeline_cfg(), out)
    second = capsys.readouterr().out
    states = _lines(second)
    assert [n for n, s in states.items() if s == "cached"] == ["split", "stage1", "pool"], second
    assert len(states) == len(stages) and all(
        states[n] == "running" for n in stages if n not in ("split", "stage1", "pool")
    )
    assert "half a line" not in (stages["teacher"].dir / "teacher.tsv").read_text()
    assert all((Path(r["dir"]) / "DONE.json").is_file() for r in reached.values())

    result = json.loads((out / "table.json").read_text())
    assert list(result["table"]) == ROWS
    for row in ROWS:
        columns = result["table"][row]
        assert {
            "test nDCG@10",
            "test R@100",
            "interp. nDCG@10",
            "extrap. R@100",
            "dl19 nDCG@10",
            "dl19 R(rel=2)@100",
        } <= set(columns), row
        assert 0.0 <= columns["test nDCG@10"] <= 1.0
    # stage 1's and stage 2's test rows are their training runs' own files, scored again: the same figures
    stage1_metrics = json.loads((Path(reached["stage1"]["dir"]) / "metrics.json").read_text())
    assert result["table"]["stage 1"]["test nDCG@10"] == pytest.approx(stage1_metrics["trained/nDCG@10"])
    assert len(result["verdict"]) == 2 and result["verdict"][0].startswith("stage2 vs stage1, nDCG@10")
    assert "wins/ties/losses" in result["verdict"][0]
    assert (Path(reached["stage2"]["dir"]) / "export" / "config.json").is_file()
    assert "exported model:" in second and "fusion teacher" in second
    assert (
        (Path(reached["curves"]["dir"]) / "training.png").is_file()
        and "compare.png" in second
        and "training.png" in second
    )
    assert result["stages"]["stage1"]["cached"] and not result["stages"]["stage2"]["cached"]
    # encode once: the zero-shot model's embeddings (its test and out-of-domain rows: the slice stands in for
    # both), stage 1's (its out-of-domain row and the fusion row there), stage 2's; the pool and the teacher
    # read stage 1's exported index.
    files = sorted((tmp_path / "cache" / "embeddings").glob("*.npy.json"))
    described = [(d["weights"], d["corpus"]) for d in (json.loads(f.read_text()) for f in files)]
    assert len(set(described)) == len(files) == 3, described

    # 4. again: every stage is a cache hit, the table is the same
    run_pipeline(pipeline_cfg(), out)
    third = capsys.readouterr().out
    assert set(_lines(third).values()) == {"cached"}, third
    assert json.loads((out / "table.json").read_text())["table"] == result["table"]

    # 5. another seed of stage 2 (dry run): only stage 2 and what reads it are to run
    run_pipeline(pipeline_cfg("seed=1", "dry_run=true"), out)
    states = _lines(capsys.readouterr().out)
    assert sorted(n for n, s in states.items() if s == "to run") == [
        "compare",
        "curves",
        "eval stage 2 ood",
        "eval stage 2 test",
        "stage2",
    ]


def test_bad_stage_references_and_until_are_config_errors(pipeline_cfg, tmp_path, capsys):
    cfg = pipeline_cfg("until=nope", "dry_run=true")
    with pytest.raises(ConfigError, match="until=nope: expected one of the stages split, stage1"):
        run_pipeline(cfg, tmp_path / "job")
    cfg = pipeline_cfg()
    cfg.stages.pool.overrides.append("qrels={teacher}/x")  # the teacher comes after the pool
    with pytest.raises(ConfigError, match=r"stages.pool: \{teacher\} names no earlier stage"):
        run_pipeline(cfg, tmp_path / "job")
    assert not (tmp_path / "cache").exists()
    with (
        cache_lock(tmp_path / "cache"),
        pytest.raises(ConfigError, match="another dr-pipeline is running on this cache"),
    ):
        run_pipeline(pipeline_cfg(), tmp_path / "job")
    assert list((tmp_path / "cache").iterdir()) == [tmp_path / "cache" / ".lock"]  # no stage started
    cfg = pipeline_cfg("until=split")
    cfg.stages.split.overrides.append(
        "threshold=2.5"
    )  # a stage's own error: the stage is named, nothing is marked done
    with pytest.raises(ConfigError, match="threshold"):
        run_pipeline(cfg, tmp_path / "job")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "] split" in last and " failed " in last, last
    assert not list((tmp_path / "cache").glob("split-*/DONE.json"))


def test_a_changed_input_file_or_default_changes_the_key(pipeline_cfg, tmp_path, scifact_slice):
    before = {s.name: s.key for s in plan(job_specs(pipeline_cfg()), tmp_path / "cache", compose_command)}
    again = {s.name: s.key for s in plan(job_specs(pipeline_cfg()), tmp_path / "elsewhere", compose_command)}
    assert again == before  # the key does not depend on where the cache lives
    os.utime(scifact_slice["train_qrels"], ns=(time.time_ns(), time.time_ns() + 10**9))
    after = {s.name: s.key for s in plan(job_specs(pipeline_cfg()), tmp_path / "cache", compose_command)}
    changed = {n for n in before if before[n] != after[n]}
    # the training qrels feed the split, both trainings and the pool; everything downstream follows
    assert {"split", "stage1", "pool", "teacher", "stage2", "compare", "eval stage 1 test"} <= changed
    assert "eval BM25 ood" not in changed


def test_extra_overrides_for_one_stage_make_a_variant_that_reuses_the_stages_before_it(pipeline_cfg, tmp_path):
    base = {s.name: s for s in plan(job_specs(pipeline_cfg()), tmp_path / "cache", compose_command)}
    variant = {
        s.name: s
        for s in plan(job_specs(pipeline_cfg("+extra.stage2=['loss.alpha=0.5']")), tmp_path / "cache", compose_command)
    }
    changed = {n for n in base if base[n].key != variant[n].key}
    assert "stage2" in changed and variant["stage2"].cfg.loss.alpha == 0.5 != base["stage2"].cfg.loss.alpha
    assert not changed & {"split", "stage1", "pool", "teacher", "eval stage 1 test", "eval BM25 ood"}
    assert {"compare", "eval stage 2 test", "eval stage 2 ood"} <= changed  # they read stage 2's folder
    with pytest.raises(ConfigError, match=r"extra.stage3: expected a command of the pipeline or one of its stages"):
        job_specs(pipeline_cfg("+extra.stage3=['seed=1']"))


def test_the_key_covers_drs_source_code(tmp_path):
    """Code edited in a checkout must not reuse what the old code made (the version alone did)."""
    from dr.pipeline.fingerprint import dr_source, source_digest, stage_fingerprint

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    first = source_digest((str(pkg),))
    (pkg / "sub" / "__pycache__").mkdir()
    (pkg / "sub" / "__pycache__" / "b.cpython-311.pyc").write_bytes(b"compiled")
    (pkg / "notes.txt").write_text("not code")
    assert source_digest((str(pkg),)) == first
    (pkg / "sub" / "b.py").write_text("y = 3\n")
    assert source_digest((str(pkg),)) != first
    key, described = stage_fingerprint("dr-train", {"seed": 1}, tmp_path / "cache")
    assert described["dr_source"] == dr_source() and len(dr_source()) == 16


@pytest.mark.slow
def test_a_killed_run_resumes_at_the_first_unfinished_stage(pipeline_cfg, tmp_path):
    """The console script: ``--dry-run`` runs nothing; SIGKILL during the run (after stage 1 is done),
    then the same command again."""
    conf = tmp_path / "conf" / "pipeline"
    conf.mkdir(parents=True)
    _save_as_group(pipeline_cfg(), conf / "tiny.yaml")
    cmd = [
        str(VENV_BIN / "dr-pipeline"),
        "--config-dir",
        str(tmp_path / "conf"),
        "pipeline=tiny",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'cli'}",
    ]
    dry = subprocess.run(cmd + ["--dry-run"], check=False, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert set(_lines(dry.stdout).values()) == {"to run"} and len(_lines(dry.stdout)) == 17, dry.stdout
    assert not (tmp_path / "cache").exists() and not (tmp_path / "cli" / "table.md").exists()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.split("] ", 1)[-1].startswith("pool") and " running " in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    states = _lines(done.stdout)
    assert [n for n, s in states.items() if s == "cached"] == ["split", "stage1"], done.stdout
    assert states["pool"] == "running" and (tmp_path / "cli" / "table.md").is_file()
    again = subprocess.run(cmd + ["--dry-run"], check=False, capture_output=True, text=True, timeout=300)
    assert set(_lines(again.stdout).values()) == {"cached"}, again.stdout


def test_experiment_baseline_is_the_one_stage_default(compose_config, tmp_path):
    plain = compose_config("train", [f"paths.output_dir={tmp_path}"])
    baseline = compose_config("train", [f"paths.output_dir={tmp_path}", "experiment=baseline"])
    assert OmegaConf.to_container(baseline, resolve=True) == OmegaConf.to_container(plain, resolve=True)
