"""Reading model files a user hands us, safely and with errors that name the file.

- :func:`load_state_dict` (:func:`checkpoint_weights`): the ``state_dict`` of a ``dr-train`` checkpoint, unpickled with
  ``torch.load(weights_only=True)``. A pickle can run any code while it loads; the restricted
  unpickler only rebuilds tensors and plain containers, so a crafted ``.ckpt`` is refused instead
  of run. Checkpoints that Lightning writes for our modules hold nothing else.
- :func:`check_resume_checkpoint`: what ``dr-train ckpt_path=`` may be. Lightning loads remote
  (``http(s)://``) checkpoints with ``weights_only=False``, so only local files are accepted; a
  truncated file is refused before any work starts.
- :func:`model_load_errors`: the errors of loading a model folder or hub id (a truncated
  ``model.safetensors``, an empty folder, broken JSON, a hub id that is neither cached nor
  reachable) as one :class:`~dr.data.DataError` naming the folder or id. A hub id that is not
  cached fails at once when the hub is unreachable, instead of after a minute of retries.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import pickle
import socket
import zipfile
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch

from dr.config import ConfigError
from dr.data.io import DataError
from dr.data.limits import cut_texts  # noqa: F401  (the encoder's one import of its loading helpers)

_REMOTE_SCHEMES = ("http", "https", "s3", "gs", "gcs", "hdfs", "ftp", "az", "abfs")


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of the ``dr-train`` checkpoint ``path``, loaded with ``weights_only=True``.

    Raises :class:`DataError` naming ``path`` for a file that is not a complete checkpoint of
    tensors (a pickle with code or objects in it, a truncated file), FileNotFoundError when absent.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            path,
            None,
            "expected a dr-train checkpoint of tensors; it holds other objects, which "
            f"weights_only=True loading refuses since unpickling them could run code ({first})",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataError(
            path,
            None,
            f"expected a complete dr-train checkpoint, got a truncated or damaged file "
            f"({type(e).__name__}: {_first_line(e)})",
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise DataError(path, None, "expected a dr-train checkpoint (a dictionary with a state_dict)")
    return checkpoint["state_dict"]


def checkpoint_run_dir(path: str | os.PathLike) -> Path | None:
    """The ``dr-train`` run folder of a ``.ckpt``: the nearest folder above it, at most three levels
    up (``RUN/checkpoints/x.ckpt``, ``RUN/checkpoints/best/x.ckpt``), that holds the run's
    ``config.yaml``; None when there is none."""
    for run in list(Path(path).resolve().parents)[1:3]:
        if (run / "config.yaml").is_file():
            return run
    return None


def checkpoint_weights(path: str | os.PathLike, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of :func:`load_state_dict` under ``prefix``, with the prefix taken off
    (``encoder.`` gives the encoder's own ``state_dict`` from a ``dr-train`` checkpoint)."""
    return {k[len(prefix) :]: v for k, v in load_state_dict(path).items() if k.startswith(prefix)}


def check_resume_checkpoint(ckpt_path: str) -> str | None:
    """What is wrong with ``dr-train ckpt_path=`` (None when it is a local checkpoint file that can
    be opened). Reads only the zip's directory, not the weights."""
    scheme = urlparse(str(ckpt_path)).scheme
    if len(scheme) > 1 and scheme.lower() in _REMOTE_SCHEMES:
        return (
            "expected a local checkpoint file (Lightning would load a remote one with weights_only=False, "
            "which runs any code it holds); download it and pass its path"
        )
    if str(ckpt_path) in ("last", "best", "hpc", "registry"):
        return None  # Lightning's own names for checkpoints it finds itself
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        return "expected an existing checkpoint file (a .ckpt of a dr-train run), got no such file"
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        return (
            f"expected a complete checkpoint written by torch.save, got a truncated or damaged file ({_first_line(e)})"
        )
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def loader_classmethod(function: Callable) -> classmethod:
    """``classmethod(model_load_errors(function))``: a class's loader whose errors about model files name them."""
    return classmethod(model_load_errors(function))


def model_load_errors(function: Callable) -> Callable:
    """Decorate a loader whose first argument is a model folder, hub id or ``.ckpt``: its
    errors about the files become one :class:`DataError` naming them."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs)
        names = [v for k, v in bound.arguments.items() if k not in ("cls", "self")]
        name = str(names[0]) if names else "model"
        if not name.endswith(".ckpt"):
            check_model_folder(name)
            check_hub_reachable(name)
        try:
            return function(*args, **kwargs)
        except (DataError, ConfigError, FileNotFoundError, torch.OutOfMemoryError, MemoryError):
            raise
        except json.JSONDecodeError as e:
            raise DataError(
                name,
                None,
                f"expected a model folder whose JSON files read, got invalid JSON ({e.msg}, line {e.lineno})",
            ) from None
        except (OSError, ValueError, RuntimeError, EOFError) as e:
            if isinstance(e, RuntimeError) and "CUDA" in str(e):  # the device, not the files
                raise
            raise DataError(name, None, _explain(e)) from None
        except Exception as e:
            if type(e).__name__ == "SafetensorError":  # safetensors' own class, not importable under a stable name
                raise DataError(
                    name,
                    None,
                    f"expected complete model weights, got a truncated or damaged model.safetensors ({_first_line(e)})",
                ) from None
            raise

    return wrapper


def check_model_folder(name: str) -> None:
    """A folder given as a model must hold one: ``config.json`` or ``adapter_config.json`` (or our two
    towers' folders)."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return
    configs = ("config.json", "adapter_config.json")  # a model, or LoRA adapters on a base model (export.lora=adapter)
    if not any((path / f).is_file() or (path / "query" / f).is_file() for f in configs):
        raise DataError(
            path,
            None,
            "expected a model folder with config.json and weights (a saved, exported or Hugging Face "
            "model), got a folder without config.json",
        )
    for file in (
        "dr_config.json",
        "modules.json",
        "config.json",
        "adapter_config.json",
    ):  # the files dr reads itself, and the model's config
        if (path / file).is_file():
            try:
                json.loads((path / file).read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise DataError(path / file, None, f"expected JSON, got a damaged file ({_first_line(e)})") from None


def _explain(e: BaseException) -> str:
    text = _first_line(e)
    if (
        "does not appear to have a file named" in text
        or "Can't load" in text
        or "is not a valid model identifier" in text
    ):
        return f"expected a model folder with config.json and weights, or a hub id ({text})"
    return f"expected a model folder or hub id that loads ({type(e).__name__}: {text})"


def _is_hub_id(name: str) -> bool:
    if Path(name).expanduser().exists() or name.startswith(("/", "./", "../", "~")):
        return False
    return name.count("/") <= 1 and bool(name) and not name.endswith(".ckpt")


def check_hub_reachable(name: str) -> None:
    """Fail at once, with :class:`DataError`, for a hub id that is neither a folder, nor cached,
    nor fetchable (offline mode, or no connection to the hub within 3 s)."""
    from dr.models.encoder import resolve_model_name

    resolved = resolve_model_name(name)
    if not _is_hub_id(resolved):
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(resolved, "config.json"), str):
            return
    except Exception:  # not a valid repo id: let the loader say what is wrong with it
        return
    offline = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the hub does not answer"
        raise DataError(
            name,
            None,
            f"no such model folder, and no network to fetch hub id {resolved} ({why}); "
            "pass a local model folder, or a hub id once online",
        )


@functools.lru_cache(maxsize=None)
def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False
