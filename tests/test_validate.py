"""Config validation (dr/validate.py): out-of-range and inconsistent values are rejected before
any work, with the key's name; every shipped config passes."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dr.config import ConfigError
from dr.validate import miner_keeps, validate_config

CONF = Path(__file__).resolve().parent.parent / "conf"


def _train(compose_config, tmp_path, *overrides):
    return compose_config("train", [f"paths.output_dir={tmp_path}", *overrides])


BAD_TRAIN = {
    "data.batch_size=0": "data.batch_size=0: expected a positive integer",
    "data.batch_size=-8": "data.batch_size=-8: expected a positive integer",
    "data.num_negatives=-1": "data.num_negatives=-1: expected an integer >= 0",
    "loss.temperature=0": "loss.temperature=0: expected a positive number",
    "loss.temperature=-0.05": "loss.temperature=-0.05: expected a positive number",
    "trainer.max_steps=0": "trainer.max_steps=0: expected a positive number of steps (or -1: no step limit)",
    "optimizer.lr=0": "optimizer.lr=0: expected a positive number",
    "optimizer.lr=-1e-5": "optimizer.lr=-1e-05: expected a positive number",
    "test.k=0": "test.k=0: expected a positive integer",
    "data.val_fraction=1.0": "data.val_fraction=1.0: expected a fraction in [0, 1)",
    "data.val_fraction=-0.1": "data.val_fraction=-0.1: expected a fraction in [0, 1)",
    "test.measures=[nDCG@x]": "test.measures=['nDCG@x']: expected ir-measures names; unknown or malformed measure 'nDCG@x'",
    "data.num_negatives=41": "data.num_negatives=41: expected at most the 40 BM25 ranks [10, 50) of data.negatives",
    "data.negatives.rank_min=50": "data.negatives.rank_min=50, data.negatives.rank_max=50: expected rank_min < rank_max",
}


@pytest.mark.parametrize("override", BAD_TRAIN)
def test_bad_training_values_name_the_key(override, compose_config, tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        validate_config(_train(compose_config, tmp_path, override))
    assert str(excinfo.value).startswith(BAD_TRAIN[override])


def test_refresh_checks(compose_config, tmp_path):
    refresh = ["refresh=async", "refresh.miner.num_negatives=4"]
    validate_config(_train(compose_config, tmp_path, *refresh, "data.num_negatives=4"))
    with pytest.raises(ConfigError, match=r"^data\.num_negatives=5: expected at most the 4 negatives per query that the refresh miner keeps"):
        validate_config(_train(compose_config, tmp_path, *refresh, "data.num_negatives=5"))
    with pytest.raises(ConfigError, match=r"^data\.num_workers=2: expected 0 with an index refresh"):
        validate_config(_train(compose_config, tmp_path, *refresh, "data.num_workers=2"))
    with pytest.raises(ConfigError, match=r"^refresh\.every_n_steps=0: expected a positive integer"):
        validate_config(_train(compose_config, tmp_path, *refresh, "refresh.every_n_steps=0"))
    with pytest.raises(ConfigError, match=r"expected a schedule"):
        validate_config(_train(compose_config, tmp_path, *refresh, "refresh.every_n_steps=null"))
    # Loader workers are fine without a refresh.
    validate_config(_train(compose_config, tmp_path, "data.num_workers=2"))


def test_what_a_miner_keeps():
    assert miner_keeps(OmegaConf.create({"_target_": "dr.miners.SimANSMiner", "num_negatives": 15})) == 15
    assert miner_keeps(OmegaConf.create({"_target_": "dr.miners.MarginMiner", "num_negatives": None})) is None
    chain = {"_target_": "dr.miners.Chain", "miners": [{"num_negatives": None}, {"num_negatives": 7}]}
    assert miner_keeps(OmegaConf.create(chain)) == 7


def test_distillation_needs_its_teachers(compose_config, tmp_path):
    with pytest.raises(ConfigError, match=r"^loss=MarginMSELoss: expected teacher scores"):
        validate_config(_train(compose_config, tmp_path, "loss=margin_mse"))
    validate_config(_train(compose_config, tmp_path, "loss=margin_mse", "data.teacher_scores=teacher.tsv"))
    with pytest.raises(ConfigError, match=r"^module\.inbatch_teacher=null: expected an in-batch teacher"):
        validate_config(_train(compose_config, tmp_path, "loss=tas_b", "data.teacher_scores=teacher.tsv"))
    validate_config(_train(compose_config, tmp_path, "loss=tas_b", "data.teacher_scores=teacher.tsv", "inbatch_teacher=fusion"))


def test_switched_off_groups_are_not_checked(compose_config, tmp_path):
    validate_config(_train(compose_config, tmp_path, "test=none"))
    validate_config(_train(compose_config, tmp_path, "test.enabled=false", "test.k=0"))


@pytest.mark.parametrize("name,override,message", [
    ("evaluate", "k=0", "k=0: expected a positive integer"),
    ("evaluate", "preset=dl21", "preset=dl21: expected one of dl19, dl20, msmarco-dev, scifact"),
    ("evaluate", "measures=[P@x]", "measures=['P@x']: expected ir-measures names"),
    ("search", "batch_size=0", "batch_size=0: expected a positive integer"),
    ("encode", "index_kind=lsh", "index_kind=lsh: expected one of auto, flat, ivf, ivfpq, hnsw"),
    ("export", "format=onnx-fp16", "format=onnx-fp16: expected one of torch, onnx, onnx-int8"),
    ("mine", "top_k=0", "top_k=0: expected a positive integer"),
    ("score", "chunk_size=-1", "chunk_size=-1: expected a positive integer"),
    ("cluster", "num_clusters=0", "num_clusters=0: expected a positive integer"),
])
def test_bad_command_values_name_the_key(name, override, message, compose_config):
    with pytest.raises(ConfigError) as excinfo:
        validate_config(compose_config(name, [override]))
    assert str(excinfo.value).startswith(message)


@pytest.mark.parametrize("name", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_shipped_commands_validate(name, compose_config, tmp_path):
    overrides = [f"paths.output_dir={tmp_path}"] if name == "train" else []
    validate_config(compose_config(name, overrides))


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_shipped_experiments_validate(experiment, compose_config, tmp_path):
    cfg = _train(compose_config, tmp_path, f"experiment={experiment}")
    if cfg.loss._target_ != "dr.losses.InfoNCELoss" and not cfg.data.teacher_scores:  # the user makes it first (dr-score)
        cfg = _train(compose_config, tmp_path, f"experiment={experiment}", "data.teacher_scores=teacher.tsv")
    validate_config(cfg)


def test_train_validates_before_any_work(cfg_train, tmp_path):
    from dr.training import train

    cfg = cfg_train("data.batch_size=0", out=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^data\.batch_size=0"):
        train(cfg)
    assert not (tmp_path / "run").exists()
