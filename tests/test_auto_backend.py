"""backend=auto: a calibrated choice within the stated tolerance of fp32, cached per machine and model
shape; the quantiser's per-tensor INFO lines stay out of the logs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from dr.models import BiEncoder
from dr.models.auto_backend import TOLERANCE, calibration_passages, choose_backend, encoder_for


@pytest.fixture(scope="module")
def encoder(tiny_bert):
    return BiEncoder.from_pretrained(tiny_bert, pooling="mean", normalize=True, passage_max_length=64).eval()


def test_choice_is_within_tolerance_and_cached(encoder, tmp_path):
    texts = calibration_passages(24)
    assert len(texts) == 24 and all(isinstance(t, str) and t for t in texts)
    choice = choose_backend(encoder, tmp_path, texts)
    assert {"torch-fp32", "onnx", "onnx-int8"} <= set(choice.measured)
    assert choice.measured[choice.name]["one_minus_cos"] <= TOLERANCE
    within = {n: m["passages_per_s"] for n, m in choice.measured.items() if m["one_minus_cos"] <= TOLERANCE}
    assert choice.name == max(within, key=within.get)  # the fastest of those within the tolerance
    files = list((tmp_path / "backend").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["calibration"]["tolerance"] == TOLERANCE
    again = choose_backend(encoder, tmp_path, texts)
    assert again.cached and again.name == choice.name and not choice.cached
    chosen, bf16 = encoder_for(encoder, choice, tmp_path)
    got = chosen.encode(texts, "passage", bf16=bf16, show_progress=False)
    ref = encoder.encode(texts, "passage", show_progress=False)
    cos = np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert float(np.mean(1 - cos)) <= TOLERANCE
    assert choice.summary()["backend/choice"] == choice.name


def test_a_damaged_calibration_file_is_measured_again(encoder, tmp_path, caplog):
    texts = calibration_passages(8)
    choose_backend(encoder, tmp_path, texts)
    path = next((tmp_path / "backend").glob("*.json"))
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        choice = choose_backend(encoder, tmp_path, texts)
    assert not choice.cached and "safe to delete" in caplog.text
    assert json.loads(path.read_text())["backend"] == choice.backend


def test_quantiser_info_lines_stay_out_of_the_log(encoder, tmp_path, caplog):
    from dr.models.onnx import onnx_encoder

    with caplog.at_level(logging.INFO):
        onnx_encoder(encoder, int8=True, cache_dir=tmp_path)
        assert logging.getLogger().level == logging.INFO  # the root logger's level is put back
    assert "Quantization parameters" not in caplog.text


def test_the_refresh_encodes_with_the_calibrated_backend(
    tiny_bert, scifact_slice, compose_config, tmp_path, monkeypatch
):
    """refresh.backend=auto (the default): resolved once at train start for the student; each
    version's stats name the choice, which is the calibration cached under dr's cache."""
    from conftest import merge_overrides, tiny_train_overrides
    from dr.refresh import verified_manifest
    from dr.training import train

    monkeypatch.setenv("DR_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    cfg = compose_config(
        "train",
        merge_overrides(
            tiny_train_overrides(tiny_bert, scifact_slice, out, max_steps=3),
            [
                "encoder.passage_max_length=32",
                "data.val_fraction=0",
                "test.enabled=false",
                "export.enabled=false",
                "refresh=sync",
                "refresh.every_n_steps=2",
                "refresh.top_k=20",
                "miner@refresh.miner=topk",
                "refresh.miner.num_negatives=4",
            ],
        ),
    )
    assert cfg.refresh.backend == "auto"
    metrics = train(cfg)
    assert metrics["refresh/versions_used"] == 1 and metrics["refresh/failures"] == 0
    (calibration,) = (tmp_path / "cache" / "backend").glob("*.json")
    choice = json.loads(calibration.read_text())
    stats = verified_manifest(out / "refresh" / "v0001")["stats"]
    assert stats["backend"] == choice["backend"]
