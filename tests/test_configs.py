"""Every config in conf/ composes and instantiates; every experiment file runs (or, when its data
is online-only, instantiates) through a real Trainer."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dr.cli import config_dir
from dr.training import train
from dr.training.best_checkpoint import trainer_arguments
from dr.training.loggers import allow_file_store

CONF = Path(config_dir())
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
GROUPS = {
    group.name: sorted(p.stem for p in group.glob("*.yaml"))
    for group in sorted(CONF.iterdir())
    if group.is_dir()
    and group.name
    not in ("hydra", "__pycache__", "experiment", "pipeline")  # pipeline: dr-pipeline's (test_pipeline_stages.py)
}
TRAIN_GROUPS = {
    next(iter(d)) for d in OmegaConf.to_container(OmegaConf.load(CONF / "train.yaml").defaults) if isinstance(d, dict)
}
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
ONLINE_DATA = {"msmarco"}


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=overrides)


def test_primary_configs_exist():
    assert {"train", "encode", "search", "evaluate", "export"} <= set(PRIMARY)


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_config_composes(name, tmp_path):
    cfg = _compose(name, [f"paths.output_dir={tmp_path}"] if name == "train" else [])
    OmegaConf.to_container(cfg, resolve=True)


# Groups whose options are placed somewhere else than under their own name (# @package).
PACKAGES = {"sampler": "data", "inbatch_teacher": "module.inbatch_teacher"}


@pytest.mark.parametrize("group,option", [(g, o) for g, options in GROUPS.items() for o in options])
def test_group_option_instantiates(group, option, tiny_bert, tmp_path):
    # Groups that train.yaml does not select by default (e.g. miner) are added with '+'.
    prefix = "" if group in TRAIN_GROUPS else "+"
    overrides = [f"{prefix}{group}={option}", f"paths.output_dir={tmp_path}", f"encoder.name_or_path={tiny_bert}"]
    if group == "trainer" and not torch.cuda.is_available():
        # GPU trainers are checked on the CPU here: same config, CPU accelerator (DDP over 2 processes).
        overrides += ["trainer.accelerator=cpu", "trainer.devices=2" if option == "ddp" else "trainer.devices=1"]
    cfg = _compose("train", overrides)
    node = OmegaConf.select(cfg, PACKAGES.get(group, group))
    if node is None:  # an option that switches a component off (e.g. inbatch_teacher=none)
        return
    OmegaConf.to_container(node, resolve=True)
    if group == "logger" and option in ("mlflow", "wandb"):
        pytest.importorskip(option, reason=f"the {option} extra (pip install 'dr[{option}]') is not installed")
    if group == "logger":
        allow_file_store(cfg)  # as train(cfg) does: logger=mlflow's file: store under MLflow 3
    if group == "trainer":
        node = trainer_arguments(cfg)[0]  # as train(cfg) does: trainer.early_stopping is dr's key, not Lightning's
    if group == "logger" or group == "callbacks":
        objects = [hydra.utils.instantiate(n) for n in node.values()]
        assert all(o is not None for o in objects)
    elif "_target_" in node:
        obj = hydra.utils.instantiate(node)
        assert obj is not None


def _teacher_file(data, tmp_path: Path) -> Path:
    """Teacher scores for every training query: its positives against 3 other queries' positives."""
    from dr.data import read_qrels
    from dr.data.teacher_scores import write_teacher_scores

    qrels = read_qrels(data.train_qrels)
    qids = sorted(qrels)
    rows = [
        (1.0, 0.1 * k, q, p, n)
        for i, q in enumerate(qids)
        for p in qrels[q]
        for k in range(1, 4)
        for n in qrels[qids[(i + k) % len(qids)]]
        if n not in qrels[q]
    ]
    path = tmp_path / "teacher.tsv"
    write_teacher_scores(path, rows)
    return path


def _pool_file(data, tmp_path: Path) -> Path:
    """A scored pool as dr-mine miner=pool writes it: 3 other queries' positives per query, scored, and the positives'
    scores."""
    from dr.data import NegativesRecord, read_qrels, write_negatives

    qrels = read_qrels(data.train_qrels)
    qids = sorted(qrels)
    records = []
    for i, q in enumerate(qids):
        negatives = list(
            dict.fromkeys(n for k in range(1, 4) for n in qrels[qids[(i + k) % len(qids)]] if n not in qrels[q])
        )
        records.append(
            NegativesRecord(
                q, sorted(qrels[q]), negatives, [0.5 - 0.01 * j for j in range(len(negatives))], [0.9] * len(qrels[q])
            )
        )
    path = tmp_path / "pool.jsonl"
    write_negatives(path, records)
    return path


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment(experiment, tiny_bert, tmp_path):
    overrides = [
        f"experiment={experiment}",
        f"paths.output_dir={tmp_path}",
        f"encoder.name_or_path={tiny_bert}",
        "encoder.query_max_length=16",
        "encoder.passage_max_length=32",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "+trainer.fast_dev_run=true",
        "trainer.enable_progress_bar=false",
        "test.enabled=false",
        "export.enabled=false",
    ]
    cfg = _compose("train", overrides)
    import importlib.util

    if cfg.data.corpus.startswith("irds:") and importlib.util.find_spec("ir_datasets") is None:
        # Online-only data without the irds extra: the readers name the extra to install, in one line.
        from dr.config import ConfigError
        from dr.data import read_queries

        with pytest.raises(ConfigError, match=r"pip install 'dr\[irds\]'"):
            read_queries(cfg.data.train_queries)
        return
    if (
        cfg.loss._target_ != "dr.losses.InfoNCELoss"
        and not cfg.data.teacher_scores
        and not cfg.data.teacher_from_negatives
    ):
        # A distillation experiment whose teacher file the user makes first (dr-score): a small stand-in.
        overrides.append(f"data.teacher_scores={_teacher_file(cfg.data, tmp_path)}")
    if cfg.data.pair_sampler and not cfg.data.negatives:
        # A sampler that draws by scores, whose pool the user mines first (dr-mine miner=pool): a small stand-in.
        overrides.append(f"data.negatives={_pool_file(cfg.data, tmp_path)}")
    cfg = _compose("train", overrides)
    if cfg.data.corpus.startswith("irds:"):
        # Online-only data: check every component instantiates, without the network.
        module = hydra.utils.instantiate(cfg.module)
        datamodule = hydra.utils.instantiate(cfg.data)
        trainer_cfg = OmegaConf.to_container(cfg.trainer)
        assert module is not None and datamodule is not None and trainer_cfg["_target_"]
        return
    metrics = train(cfg)
    assert metrics["train/global_step"] == 1


@pytest.mark.parametrize("scheduler", GROUPS["scheduler"])
def test_every_scheduler_trains(scheduler, tiny_bert, scifact_slice, tmp_path):
    """The scheduler is only called inside configure_optimizers: run a real step with each."""
    overrides = [
        f"scheduler={scheduler}",
        f"paths.output_dir={tmp_path}",
        f"encoder.name_or_path={tiny_bert}",
        "encoder.passage_max_length=32",
        f"data.corpus={scifact_slice['corpus']}",
        f"data.train_queries={scifact_slice['train_queries']}",
        f"data.train_qrels={scifact_slice['train_qrels']}",
        "data.batch_size=8",
        "data.val_fraction=0",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "test.enabled=false",
        "export.enabled=false",
    ]
    metrics = train(_compose("train", overrides))
    assert metrics["train/global_step"] == 2
