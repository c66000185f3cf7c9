"""Console scripts: thin Hydra wrappers around the library functions.

The configs ship inside the package (``conf/`` is installed as ``dr.conf``), so an installed
``dr-train`` finds them from any working directory; in a source checkout without installation
the repository's ``conf/`` is used.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def config_dir() -> str:
    """Absolute path of the config tree, for installed and source layouts alike."""
    try:
        from importlib.resources import files

        path = Path(str(files("dr.conf")))
        if (path / "train.yaml").is_file():
            return str(path)
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    path = Path(__file__).resolve().parent.parent / "conf"
    if (path / "train.yaml").is_file():
        return str(path)
    raise FileNotFoundError("dr's config tree was not found; reinstall the package (pip install .)")


def run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _hydra_app(config_name: str):
    def wrap(fn):
        return hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)(fn)

    return wrap


# ---------------------------------------------------------------------- apps
@_hydra_app("train")
def _train(cfg: DictConfig) -> float | None:
    from dr.train import train

    metrics = train(cfg)
    # Returning the optimised value lets Hydra sweepers (e.g. Optuna) use multirun sweeps.
    return metrics.get(cfg.get("optimized_metric", "trained/nDCG@10"))


@_hydra_app("encode")
def _encode(cfg: DictConfig) -> None:
    from dr.commands import encode

    encode(cfg, run_dir())


@_hydra_app("search")
def _search(cfg: DictConfig) -> None:
    from dr.commands import search

    search(cfg, run_dir())


@_hydra_app("evaluate")
def _evaluate(cfg: DictConfig) -> None:
    from dr.commands import evaluate

    evaluate(cfg, run_dir())


@_hydra_app("export")
def _export(cfg: DictConfig) -> None:
    from dr.commands import export_model

    export_model(cfg, run_dir())


@_hydra_app("mine")
def _mine(cfg: DictConfig) -> None:
    from dr.mine import mine

    mine(cfg, run_dir())


@_hydra_app("score")
def _score(cfg: DictConfig) -> None:
    from dr.score import score

    score(cfg, run_dir())


@_hydra_app("cluster")
def _cluster(cfg: DictConfig) -> None:
    from dr.cluster import cluster

    cluster(cfg, run_dir())


def _main(app) -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


def train_main() -> None:
    _main(_train)


def encode_main() -> None:
    _main(_encode)


def search_main() -> None:
    _main(_search)


def evaluate_main() -> None:
    _main(_evaluate)


def export_main() -> None:
    _main(_export)


def mine_main() -> None:
    _main(_mine)



def score_main() -> None:
    _main(_score)


def cluster_main() -> None:
    _main(_cluster)
