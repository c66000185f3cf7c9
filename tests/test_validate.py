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
    "test.measures=[nDCG@x]": "test.measures=['nDCG@x']: expected ir-measures names; unknown or malformed measure "
    "'nDCG@x'",
    "data.num_negatives=41": "data.num_negatives=41: expected at most the 40 BM25 ranks [10, 50) of data.negatives",
    "data.negatives.rank_min=50": "data.negatives.rank_min=50, data.negatives.rank_max=50: expected rank_min < "
    "rank_max",
}


@pytest.mark.parametrize("override", BAD_TRAIN)
def test_bad_training_values_name_the_key(override, compose_config, tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        validate_config(_train(compose_config, tmp_path, override))
    assert str(excinfo.value).startswith(BAD_TRAIN[override])


def test_refresh_checks(compose_config, tmp_path):
    refresh = ["refresh=async", "refresh.miner.num_negatives=4"]
    validate_config(_train(compose_config, tmp_path, *refresh, "data.num_negatives=4"))
    with pytest.raises(
        ConfigError,
        match=r"^data\.num_negatives=5: expected at most the 4 negatives per query that the refresh miner keeps",
    ):
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
    validate_config(
        _train(compose_config, tmp_path, "loss=tas_b", "data.teacher_scores=teacher.tsv", "inbatch_teacher=fusion")
    )


def test_switched_off_groups_are_not_checked(compose_config, tmp_path):
    validate_config(_train(compose_config, tmp_path, "test=none"))
    validate_config(_train(compose_config, tmp_path, "test.enabled=false", "test.k=0"))


@pytest.mark.parametrize(
    "name,override,message",
    [
        ("evaluate", "k=0", "k=0: expected a positive integer"),
        ("evaluate", "preset=dl21", "preset=dl21: expected one of dl19, dl19-pool, dl20, msmarco-dev, scifact"),
        ("evaluate", "measures=[P@x]", "measures=['P@x']: expected ir-measures names"),
        ("search", "batch_size=0", "batch_size=0: expected a positive integer"),
        ("encode", "index_kind=lsh", "index_kind=lsh: expected one of auto, flat, ivf, ivfpq, hnsw"),
        ("export", "format=onnx-fp16", "format=onnx-fp16: expected one of torch, onnx, onnx-int8"),
        ("mine", "top_k=0", "top_k=0: expected a positive integer"),
        ("score", "chunk_size=-1", "chunk_size=-1: expected a positive integer"),
        ("cluster", "num_clusters=0", "num_clusters=0: expected a positive integer"),
    ],
)
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
    made_first = []  # files the user makes first: teacher scores (dr-score), the scored pool (dr-mine miner=pool)
    if cfg.loss._target_ != "dr.losses.InfoNCELoss" and not cfg.data.teacher_scores:
        made_first.append("data.teacher_scores=teacher.tsv")
    if cfg.data.pair_sampler and not cfg.data.negatives:
        made_first.append("data.negatives=pool.jsonl")
    validate_config(_train(compose_config, tmp_path, f"experiment={experiment}", *made_first))


def test_train_validates_before_any_work(cfg_train, tmp_path):
    from dr.training import train

    cfg = cfg_train("data.batch_size=0", out=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^data\.batch_size=0"):
        train(cfg)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- samplers and refresh miners (issue 23 items 4,
# 8)
SIMANS = ["sampler=simans", "data.negatives=pool.jsonl"]
REFRESH = ["refresh=async", "data.num_negatives=4"]
DEGRADED = {
    # BM25 negatives carry no positive score: every load would take the same lowest-ranked candidates
    (
        "sampler=simans",
    ): r"^data\.negatives=.*BM25Negatives.*: expected a negatives file with the candidates' and positives' scores",
    # the refresh would pre-sample with the kernel, and the sampler would apply it again at every load
    (
        *SIMANS,
        *REFRESH,
        "miner@refresh.miner=simans",
    ): r"^refresh\.miner=SimANSMiner: expected miner@refresh\.miner=pool",
    (
        *SIMANS,
        *REFRESH,
        "miner@refresh.miner=margin_simans",
    ): r"^refresh\.miner=SimANSMiner: expected miner@refresh\.miner=pool",
    # the refresh candidates carry no teacher scores: every refresh job would fail
    (*REFRESH, "miner@refresh.miner=denoise"): r"^refresh\.miner=DenoiseMiner: expected a refresh\.teacher",
}


@pytest.mark.parametrize("overrides", DEGRADED, ids=lambda o: " ".join(o))
def test_configs_that_silently_degrade_a_method_are_refused(overrides, compose_config, tmp_path):
    with pytest.raises(ConfigError, match=DEGRADED[overrides]):
        validate_config(_train(compose_config, tmp_path, *overrides))


def test_what_the_simans_sampler_and_refresh_miners_need_is_accepted(compose_config, tmp_path):
    validate_config(_train(compose_config, tmp_path, *SIMANS))
    validate_config(_train(compose_config, tmp_path, *SIMANS, *REFRESH, "miner@refresh.miner=pool"))
    # the refresh teacher's scores go to their own file for the KD lists; the negatives file keeps the student's
    validate_config(
        _train(
            compose_config, tmp_path, *SIMANS, *REFRESH, "miner@refresh.miner=pool", "+teacher@refresh.teacher=fusion"
        )
    )
    validate_config(
        _train(compose_config, tmp_path, *REFRESH, "miner@refresh.miner=simans")
    )  # uniform loads of the refreshed negatives
    validate_config(
        _train(
            compose_config, tmp_path, *REFRESH, "miner@refresh.miner=denoise", "+teacher@refresh.teacher=cross_encoder"
        )
    )


def test_dr_train_refuses_a_denoise_refresh_without_teacher_in_one_line(tiny_bert, scifact_slice, tmp_path):
    import subprocess
    import sys

    from conftest import tiny_train_overrides

    out = tmp_path / "run"
    args = tiny_train_overrides(tiny_bert, scifact_slice, out) + [
        *REFRESH,
        "miner@refresh.miner=denoise",
        "test.enabled=false",
    ]
    dr_train = Path(sys.executable).parent / "dr-train"
    result = subprocess.run([str(dr_train), *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "dr-train: error: refresh.miner=DenoiseMiner: expected a refresh.teacher"
    )
    assert not (out / "checkpoints").exists()


def test_a_denoise_threshold_needs_a_teacher_with_probabilities(compose_config, tmp_path):
    """Issue 23 item 2: the threshold is a probability of relevance; the fusion teacher's per-query
    normalised scores have no map onto it (0.1 would be a relative cut)."""
    with pytest.raises(
        ConfigError, match=r"^miner\.threshold=0\.1: expected a teacher whose scores map to a probability"
    ):
        validate_config(compose_config("mine", ["miner=denoise", "teacher=fusion"]))
    validate_config(compose_config("mine", ["miner=denoise", "teacher=cross_encoder"]))
    validate_config(
        compose_config("mine", ["miner=denoise", "teacher=fusion", "miner.threshold=null", "miner.margin=0.2"])
    )
    with pytest.raises(ConfigError, match=r"^refresh\.miner\.threshold=0\.1: expected a teacher whose scores map"):
        validate_config(
            _train(compose_config, tmp_path, *REFRESH, "miner@refresh.miner=denoise", "+teacher@refresh.teacher=fusion")
        )


def test_the_ms_marco_data_config_works_with_an_index_refresh(compose_config, tmp_path):
    """Issue 23 item 10: conf/data/msmarco.yaml shipped num_workers=2, which every refresh refuses."""
    validate_config(
        _train(
            compose_config,
            tmp_path,
            "experiment=msmarco_infonce",
            "refresh=async",
            "miner@refresh.miner=topk",
            "refresh.miner.num_negatives=4",
        )
    )
