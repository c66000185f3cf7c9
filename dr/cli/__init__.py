"""Console scripts: one module per command (``dr/cli/<command>.py``), each a ``run(cfg, out)`` that
does the work and a ``main()`` that Hydra wraps around it.

The configs ship inside the package (``conf/`` is installed as ``dr.conf``), so an installed
``dr-train`` finds them from any working directory; in a source checkout without installation
the repository's ``conf/`` is used. Each command's Hydra job name is its module's name, so a run
lands in ``outputs/<command>/<date>`` and logs to ``<command>.log``.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

#: Console script -> (module under dr.cli, primary config in conf/). pyproject's [project.scripts]
#: registers each as ``dr.cli.<module>:main``; tests check the two agree.
COMMANDS: dict[str, tuple[str, str]] = {
    "dr-train": ("train", "train"),
    "dr-encode": ("encode", "encode"),
    "dr-search": ("search", "search"),
    "dr-eval": ("evaluate", "evaluate"),
    "dr-export": ("export", "export"),
    "dr-mine": ("mine", "mine"),
    "dr-score": ("score", "score"),
    "dr-cluster": ("cluster", "cluster"),
}


def config_dir() -> str:
    """Absolute path of the config tree, for installed and source layouts alike."""
    try:
        from importlib.resources import files

        path = Path(str(files("dr.conf")))
        if (path / "train.yaml").is_file():
            return str(path)
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    path = Path(__file__).resolve().parent.parent.parent / "conf"
    if (path / "train.yaml").is_file():
        return str(path)
    raise FileNotFoundError("dr's config tree was not found; reinstall the package (pip install .)")


def run_dir() -> Path:
    """The output directory of the running Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def hydra_command(config_name: str, run: Callable) -> Callable[[], None]:
    """The ``main()`` of a command: ``run(cfg, run_dir)`` under ``hydra.main`` with ``config_name``.

    The task function wraps ``run``, so Hydra names the job after ``run``'s module
    (``dr.cli.train`` -> ``train``). Its return value goes back to Hydra (sweepers use it).
    """
    import hydra

    @functools.wraps(run)
    def task(cfg):
        return run(cfg, run_dir())

    app = hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)(task)

    def main() -> None:
        try:
            app()
        except KeyboardInterrupt:
            sys.exit(130)

    return main


def encoder_from_config(cfg, backend: str = "torch"):
    """The encoder a command's ``model=`` (and ``encoder=`` overrides) names, for inference with
    ``backend`` (``torch``, ``onnx`` or ``onnx-int8``; see :func:`dr.models.load_encoder`)."""
    from dr.models import load_encoder

    if not cfg.get("model"):
        raise ValueError("model=... is required: a hub name, a saved model folder or a .ckpt of a dr-train run")
    return load_encoder(cfg.model, cfg.get("encoder"), backend=backend, cache_dir=cfg.get("onnx_cache_dir"))
