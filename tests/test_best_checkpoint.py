"""Best checkpoint on the validation measure, early stopping, export.checkpoint=best|last: real
Lightning runs of the tiny BERT on the SciFact slice."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dr.config import ConfigError
from dr.training import train
from dr.validate import validate_config

TEXTS = ["a claim about cells", "another sentence about proteins"]


def _val_scores(run) -> dict[int, float]:
    """step -> val/nDCG@10 as the run's CSV log holds it (the step of a validation is the step it followed)."""
    out = {}
    with open(run / "logs" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("val/nDCG@10"):
                out[int(row["step"])] = float(row["val/nDCG@10"])
    return out


def _embeddings(path) -> np.ndarray:
    from dr.models.encoder import BiEncoder

    return BiEncoder.load(str(path), device="cpu").encode_passages(TEXTS, show_progress=False)


def _ckpt_embeddings(run, ckpt) -> np.ndarray:
    from dr.models.encoder import BiEncoder

    encoder = BiEncoder.from_pretrained(str(run / "export"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    encoder.load_state_dict(
        {k[len("encoder.") :]: v for k, v in state["state_dict"].items() if k.startswith("encoder.")}
    )
    return encoder.eval().encode_passages(TEXTS, show_progress=False)


def test_best_checkpoint_is_evaluated_and_exported(cfg_train, tmp_path):
    out = tmp_path / "best"
    metrics = train(cfg_train("test.bm25=false", "test.before=false", "optimizer.lr=3e-3", out=out, max_steps=8))

    scores = _val_scores(out)
    assert len(scores) == 4  # every 2 steps
    best_step = max(scores, key=lambda s: (scores[s], -s)) + 1  # the first best; logged at step-1
    assert metrics["train/checkpoint_best"] == 1.0
    assert metrics["train/checkpoint_step"] == best_step
    assert metrics["train/best_score"] == pytest.approx(max(scores.values()), abs=1e-6)
    assert json.loads((out / "metrics.json").read_text())["train/checkpoint_step"] == best_step
    (best_file,) = (out / "checkpoints" / "best").glob("*.ckpt")
    assert best_file.name == f"step{best_step:06d}.ckpt"
    # The export holds the best weights, not the last ones (unless the last are the best).
    np.testing.assert_allclose(_embeddings(out / "export"), _ckpt_embeddings(out, best_file), atol=1e-5)
    if best_step != 8:
        assert not np.allclose(
            _embeddings(out / "export"), _ckpt_embeddings(out, out / "checkpoints" / "last.ckpt"), atol=1e-4
        )
    assert f"step {best_step} of 8" in (out / "export" / "README.md").read_text()
    # The best checkpoint itself is a model= for every command (its run's config.yaml is three levels up)
    from dr.models.encoder import BiEncoder

    loaded = BiEncoder.load(str(best_file), device="cpu").encode_passages(TEXTS, show_progress=False)
    np.testing.assert_allclose(loaded, _embeddings(out / "export"), atol=1e-5)


def test_export_checkpoint_last_keeps_the_last_weights(cfg_train, tmp_path):
    out = tmp_path / "last"
    metrics = train(
        cfg_train("test.enabled=false", "export.checkpoint=last", "optimizer.lr=3e-3", out=out, max_steps=6)
    )
    assert metrics["train/checkpoint_step"] == 6 and metrics["train/checkpoint_best"] == 0.0
    np.testing.assert_allclose(
        _embeddings(out / "export"), _ckpt_embeddings(out, out / "checkpoints" / "last.ckpt"), atol=1e-5
    )


def test_without_validation_the_last_weights_are_used(cfg_train, tmp_path):
    out = tmp_path / "noval"
    metrics = train(cfg_train("test.enabled=false", "data.val_fraction=0", out=out, max_steps=2))
    assert metrics["train/checkpoint_step"] == 2 and metrics["train/checkpoint_best"] == 0.0
    assert not (out / "checkpoints" / "best").exists()


def test_early_stopping_stops_when_the_measure_stalls(cfg_train, tmp_path):
    """At a learning rate of 1e-12 the weights do not move, so validation never improves: with
    patience 1 the run stops at the second validation (step 4) of 20 planned steps."""
    out = tmp_path / "stop"
    metrics = train(
        cfg_train(
            "test.enabled=false",
            "export.enabled=false",
            "optimizer.lr=1e-12",
            "trainer.early_stopping=1",
            out=out,
            max_steps=20,
        )
    )
    assert metrics["train/global_step"] == 4
    assert sorted(_val_scores(out)) == [1, 3]


def test_validation_every_n_steps_crosses_epoch_ends(cfg_train, tmp_path):
    """58 training queries in batches of 8 are 8 batches an epoch; validating every 5 steps for 12
    steps validates at steps 5 and 10, the second one inside the second epoch."""
    out = tmp_path / "every"
    train(
        cfg_train("test.enabled=false", "export.enabled=false", "trainer.val_check_interval=5", out=out, max_steps=12)
    )
    assert sorted(_val_scores(out)) == [4, 9]


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "callbacks.best_checkpoint.monitor=val/MAP@5",
            "callbacks.best_checkpoint.monitor=val/MAP@5: expected one of the validation measures",
        ),
        ("trainer.early_stopping=0", "trainer.early_stopping=0: expected a positive integer"),
        ("export.checkpoint=middle", "export.checkpoint=middle: expected one of"),
    ],
)
def test_bad_checkpoint_settings_are_refused(cfg_train, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        validate_config(cfg_train(override))


def test_early_stopping_without_validation_is_refused(cfg_train):
    with pytest.raises(ConfigError, match="trainer.early_stopping=2: expected validation queries"):
        validate_config(cfg_train("trainer.early_stopping=2", "data.val_fraction=0"))


def test_dr_train_command_line_early_stopping(tiny_bert, scifact_slice, tmp_path):
    """The console script: a bad monitor is one line on stderr and exit 2."""
    from conftest import tiny_train_overrides

    overrides = tiny_train_overrides(tiny_bert, scifact_slice, tmp_path / "cli") + [
        "callbacks.best_checkpoint.monitor=val/P@3"
    ]
    dr_train = str(__import__("pathlib").Path(sys.executable).parent / "dr-train")
    done = subprocess.run([dr_train, *overrides], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert (
        "dr-train: error: callbacks.best_checkpoint.monitor=val/P@3: expected one of the validation measures"
        in done.stderr
    )
