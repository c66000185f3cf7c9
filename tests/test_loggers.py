"""logger=mlflow (a local file: store) and logger=wandb (offline): a real dr-train run on the tiny
BERT records its metrics and its configuration in MLflow's store."""

from __future__ import annotations

import pytest

from dr.training import train


def test_mlflow_file_store_records_metrics_and_config(cfg_train, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra (pip install 'dr[mlflow]') is not installed")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    out = tmp_path / "run"
    metrics = train(cfg_train("logger=mlflow", "test.bm25=false", "test.before=false", "optimizer.lr=2e-3", out=out))
    store = f"file:{out / 'mlruns'}"
    client = MlflowClient(store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "dr"]
    (run,) = client.search_runs([experiment.experiment_id])
    # the configuration: flattened params, and the resolved config.yaml as an artifact
    assert run.data.params["optimizer.lr"] == "0.002"
    assert run.data.params["loss._target_"] == "dr.losses.InfoNCELoss"
    assert run.data.params["data.batch_size"] == "8"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]
    # training metrics with their history, and the run's final figures (metrics.json's)
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == [0, 1, 2, 3]
    assert run.data.metrics["val/nDCG10"] == pytest.approx(metrics["val/nDCG@10"])
    assert run.data.metrics["trained/nDCG10"] == pytest.approx(metrics["trained/nDCG@10"])
    assert run.data.metrics["train/checkpoint_step"] == metrics["train/checkpoint_step"]
    # the CSV log is still there beside it
    assert (out / "logs" / "metrics.csv").is_file()


def test_wandb_config_is_offline(compose_config, tmp_path):
    cfg = compose_config("train", ["logger=wandb", f"paths.output_dir={tmp_path}"])
    assert cfg.logger.wandb._target_ == "pytorch_lightning.loggers.WandbLogger"
    assert cfg.logger.wandb.offline is True and cfg.logger.wandb.save_dir == str(tmp_path)
    assert cfg.logger.csv._target_ == "pytorch_lightning.loggers.CSVLogger"
