"""A run's configuration without the machine's absolute paths, for model cards that may be published.

The resolved ``config.yaml`` of a run holds absolute paths: the run folder, data files, a local
base model, caches, all under someone's home folder, with their user name. :func:`portable_config`
writes a path inside the run folder relative to it (``checkpoints/last.ckpt``) and any other
absolute path as ``<local>/`` and its last component (``<local>/corpus.jsonl``): what the file
was remains readable, where it was on that machine does not.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Mapping

#: An absolute path standing alone: POSIX (``/...``) or a Windows drive (``~/...`` names no user: kept).
_ABSOLUTE = re.compile(r"^(/|[A-Za-z]:[\\/])")
#: An absolute POSIX path inside a longer string (``file=/home/x/a.tsv``, a command line).
_EMBEDDED = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\",;]+/)+[^\s/'\",;]*")

LOCAL = "<local>"


def portable_config(config: Mapping | None) -> dict | None:
    """``config`` with its absolute paths made relative to the run or reduced to their last component."""
    if config is None:
        return None
    run_dir = ((config.get("paths") or {}).get("output_dir")) if isinstance(config.get("paths"), Mapping) else None
    return _walk(dict(config), str(run_dir).rstrip("/") if run_dir and _ABSOLUTE.match(str(run_dir)) else None)


def _walk(value: Any, run_dir: str | None) -> Any:
    if isinstance(value, Mapping):
        return {k: _walk(v, run_dir) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_walk(v, run_dir) for v in value]
    if isinstance(value, str):
        return portable_path(value, run_dir)
    return value


def portable_path(text: str, run_dir: str | None = None) -> str:
    """One string of a config with its absolute paths rewritten (see the module docstring)."""
    if _ABSOLUTE.match(text) and not any(c.isspace() for c in text):
        return _one(text, run_dir)
    return _EMBEDDED.sub(lambda m: _one(m.group(0), run_dir), text)


def _one(path: str, run_dir: str | None) -> str:
    if run_dir and (path == run_dir or path.startswith(run_dir + "/")):
        return path[len(run_dir) + 1 :] or "."
    name = (PureWindowsPath(path) if re.match(r"^[A-Za-z]:", path) else PurePosixPath(path)).name
    return f"{LOCAL}/{name}" if name else LOCAL
