"""Console scripts: one module per command (``dr/cli/<command>.py``), each a ``run(cfg, out)`` that
does the work and a ``main()`` that Hydra wraps around it.

The configs ship inside the package (``conf/`` is installed as ``dr.conf``), so an installed
``dr-train`` finds them from any working directory; in a source checkout without installation
the repository's ``conf/`` is used. Each command's Hydra job name is its module's name, so a run
lands in ``outputs/<command>/<date>`` and logs to ``<command>.log``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

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
    "dr-split": ("split", "split"),
    "dr-plot": ("plot", "plot"),
    "dr-compare": ("compare", "compare"),
    "dr-pipeline": ("pipeline", "pipeline"),
}


def config_dir() -> str:
    """Absolute path of the config tree, for installed and source layouts alike.

    A source checkout's own ``conf/`` comes first: with the checkout on ``PYTHONPATH`` and another
    copy of dr installed, ``dr.conf`` would be the other copy's configs."""
    source = Path(__file__).resolve().parent.parent.parent / "conf"
    if (source / "train.yaml").is_file() and (source.parent / "dr" / "__init__.py").is_file():
        return str(source)
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


def _command_name(config_name: str) -> str:
    return next((name for name, (_, config) in COMMANDS.items() if config == config_name), f"dr-{config_name}")


def user_error(e: BaseException) -> BaseException | None:
    """The error a user can act on without a traceback, or None for an unexpected one.

    Bad data (:class:`dr.data.DataError`), bad config (:class:`dr.config.ConfigError`, and Hydra's
    override and composition errors), a file or model that is not there or cannot be written
    (``FileNotFoundError``, ``PermissionError``, a full disk). Hydra's instantiation errors are
    looked through to their cause, so a model folder that does not exist reads the same from a
    ``_target_`` node as from a command.
    """
    from hydra.errors import CompactHydraException, InstantiationException

    from dr.config import ConfigError
    from dr.data.io import DataError

    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    if isinstance(e, (DataError, ConfigError, FileNotFoundError, PermissionError)):
        return e
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
        return e
    if isinstance(e, CompactHydraException) and not isinstance(e, InstantiationException):
        return e
    return None


_WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
}


def one_line(e: BaseException) -> str:
    """``e``'s message on one line (Hydra's composition errors span several, with their cause)."""
    from omegaconf.errors import OmegaConfBaseException

    lines = [
        line.strip() for line in str(e).splitlines() if line.strip() and not line.strip().startswith("See https://")
    ]
    if isinstance(e.__cause__, OmegaConfBaseException):
        lines += str(e.__cause__).strip().splitlines()[:1]
    if not lines:
        return type(e).__name__
    if len(lines) > 1:
        lines = [line if line[-1] in ".:;!?" else line + "." for line in lines]
    return " ".join(lines)


def save_run_config(cfg) -> None:
    """Write ``<run dir>/.hydra/`` (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``, as Hydra
    would with its ``output_subdir``, which ``conf/hydra/default.yaml`` turns off): each file
    atomically, so a full disk leaves no truncated config and the error names the file."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from dr.data.io import atomic_write

    hydra_cfg = HydraConfig.get()
    folder = run_dir() / ".hydra"
    files = {
        "config.yaml": cfg,
        "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
        "overrides.yaml": hydra_cfg.overrides.task,
    }
    for filename, node in files.items():
        with atomic_write(folder / filename) as f:
            f.write(OmegaConf.to_yaml(node))


def hydra_command(config_name: str, run: Callable, validate: bool = True) -> Callable[[], None]:
    """The ``main()`` of a command: ``run(cfg, run_dir)`` under ``hydra.main`` with ``config_name``.

    The task function validates the config (:func:`dr.validate.validate_config`), then calls
    ``run``; ``validate=False`` for a ``run`` that validates its config itself first
    (``dr-train``: :func:`dr.training.train`), so that every command checks it once; Hydra names the job after
    ``run``'s module (``dr.cli.train`` -> ``train``) and gets
    its return value (sweepers use it).

    Errors: a user error (:func:`user_error`) prints ``dr-<cmd>: error: <message>`` on one line
    and exits with status 2; anything else keeps its traceback (exit status 1).
    ``HYDRA_FULL_ERROR=1`` or ``--debug`` shows the traceback of user errors too. Hydra prints
    its own report of an exception and exits, unless ``HYDRA_FULL_ERROR=1``: so the variable is
    set while Hydra runs (composition errors then reach us as exceptions), and put back to the
    user's value while the task runs (so worker processes inherit what the user set).
    """
    import hydra

    name = _command_name(config_name)

    @functools.wraps(run)
    def task(cfg):
        from dr.validate import validate_config

        with _environ(FULL_ERROR, _users_full_error):
            try:
                save_run_config(cfg)
                if validate:
                    validate_config(cfg)
                return run(cfg, run_dir())
            except Exception as e:
                # Here, not after Hydra: a job that raises gets Hydra's "Error executing job" line.
                _exit_on_user_error(name, e)
                e._dr_task_error = True  # not an override error of Hydra's (see main)
                raise

    app = hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)(task)

    def main() -> None:
        global _users_full_error
        if name in ALLOCATOR_COMMANDS and _is_console_script(name):
            from dr.allocator import reexec_with_jemalloc

            reexec_with_jemalloc(name)  # returns unless it replaces this process (see dr.allocator)
        if "--debug" in sys.argv[1:]:
            sys.argv.remove("--debug")
            os.environ[FULL_ERROR] = "1"
        overwrite = "--overwrite" in sys.argv[1:]
        if overwrite:
            sys.argv.remove("--overwrite")
        from dr.cli.run_folder import check_run_folder

        check_run_folder(name, sys.argv[1:], overwrite)  # before Hydra writes .hydra/ and the log into it
        _users_full_error = os.environ.get(FULL_ERROR)
        try:
            with _environ(FULL_ERROR, "1"):
                app()
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as e:  # Hydra's override and composition errors
            if type(e) is ValueError and not getattr(e, "_dr_task_error", False):
                # Hydra's own check of an override (encoder=5 where encoder is a config group)
                from dr.config import ConfigError

                e = ConfigError(f"{one_line(e)} (an override of the command line)")
            _exit_on_user_error(name, e)
            raise

    return main


#: the commands that run a model: they start under jemalloc when there is one (:mod:`dr.allocator`)
ALLOCATOR_COMMANDS = {
    "dr-train",
    "dr-encode",
    "dr-search",
    "dr-eval",
    "dr-export",
    "dr-mine",
    "dr-score",
    "dr-cluster",
    "dr-split",
    "dr-pipeline",
}


def _is_console_script(name: str, argv: list[str] | None = None) -> bool:
    """Whether this process was started as the command itself (``<venv>/bin/dr-train ...`` or
    ``python -m dr.cli.train ...``, read from the interpreter's own command line), not as a
    caller of its ``main()``, such as a test that sets ``sys.argv``."""
    argv = list(getattr(sys, "orig_argv", []) if argv is None else argv)
    if len(argv) < 2:
        return False
    if argv[1] == "-m":
        return len(argv) > 2 and argv[2] == f"dr.cli.{COMMANDS[name][0]}"
    return Path(argv[1]).name == name


def _exit_on_user_error(name: str, e: Exception) -> None:
    """For a user error, print ``<name>: error: <message>`` and exit with status 2 (unless the
    user asked for tracebacks); return for anything else."""
    error = user_error(e)
    if error is None or _users_full_error == "1":
        return
    print(f"{name}: error: {one_line(error)}", file=sys.stderr)
    sys.exit(2)


FULL_ERROR = "HYDRA_FULL_ERROR"
_users_full_error: str | None = None


@contextlib.contextmanager
def _environ(key: str, value: str | None) -> Iterator[None]:
    """Set (or, with None, unset) an environment variable for the block."""
    before = os.environ.get(key)
    _set_env(key, value)
    try:
        yield
    finally:
        _set_env(key, before)


def _set_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def encoder_from_config(cfg, backend: str = "torch"):
    """The encoder a command's ``model=`` (and ``encoder=`` overrides) names, for inference with
    ``backend`` (``torch``, ``onnx`` or ``onnx-int8``; see :func:`dr.models.load_encoder`)."""
    from dr.models import load_encoder

    if not cfg.get("model"):
        from dr.config import ConfigError

        raise ConfigError(
            "model=null: expected a model (model=...): a hub name, a saved model folder or a .ckpt of a dr-train run"
        )
    _refuse_truncated_onnx(cfg.model, backend)
    if backend == "auto":
        return _auto_encoder(cfg)
    return load_encoder(cfg.model, cfg.get("encoder"), backend=backend, cache_dir=cfg.get("onnx_cache_dir"))


def _auto_encoder(cfg):
    """``backend=auto`` (:mod:`dr.models.auto_backend`): the calibrated choice for this machine;
    ``cfg.bf16`` is set to the choice's precision, so the command encodes as calibrated."""
    import logging

    from omegaconf import open_dict

    from dr.models import BiEncoder
    from dr.models.auto_backend import choose_and_log, default_cache_dir, encoder_for

    encoder = BiEncoder.load(cfg.model, cfg.get("encoder"))
    if (
        encoder.truncate_dim is not None
    ):  # a Matryoshka model cut to its first dims: ONNX has no truncation, torch it is
        return encoder
    cache = cfg.get("cache_dir") or default_cache_dir()
    choice = choose_and_log(encoder, cache, logging.getLogger("dr.cli"))
    chosen, bf16 = encoder_for(encoder, choice, cache)
    with open_dict(cfg):
        cfg.bf16 = bf16
    return chosen


def _refuse_truncated_onnx(model: str, backend: str) -> None:
    """An export with ``truncate_dim`` (a Matryoshka model cut to its first dims) runs on torch only:
    the ONNX graph outputs the full pooled embedding (backend=auto keeps such a model on torch)."""
    import json

    from dr.config import ConfigError
    from dr.models.encoder import DR_CONFIG

    config = Path(model).expanduser() / DR_CONFIG
    dim = (
        json.loads(config.read_text()).get("truncate_dim")
        if backend not in ("torch", "auto") and config.is_file()
        else None
    )
    if dim:
        raise ConfigError(
            f"backend={backend}: {model} embeds its first {dim} dims (truncate_dim in {DR_CONFIG}), "
            "which the ONNX graph does not do; expected backend=torch"
        )
