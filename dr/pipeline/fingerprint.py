"""A stage's fingerprint: the key under which its output is cached (``<cache>/<stage>-<key>/``).

The key covers everything that decides the output: the command, its fully composed and resolved
config (so a changed default in ``conf/`` changes the key, not only a changed override), the
version of every input file the config names (path, size and modification time, as for the
zero-shot run cache, :func:`dr.retrieval.cache.file_stamp`; a model folder stamps each of its
files) and dr's version and source (a digest of every ``.py`` file of the installed ``dr``, its
``dr.losses`` and ``dr.miners`` included: code edited in a checkout reruns the stages, instead of
reusing outputs the old code made). Other stages' outputs are named by their own folders, whose names carry
their keys, so a stage's key changes whenever an input stage's does. Settings that only say where
side files go or how a run reports (``paths``, ``hydra``, cache folders, progress bars) are left
out, and the stage's own folder is written ``<out>``: the same work has the same key wherever the
cache lives.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import dr
from dr.data.corpus import IRDS_PREFIX, resolve_path
from dr.retrieval.cache import file_stamp

#: config keys (at any depth) that do not change a stage's output
IGNORED_KEYS = frozenset(
    {"paths", "hydra", "cache_dir", "onnx_cache_dir", "embeddings_cache", "show_progress", "enable_progress_bar"}
)

#: the most files stamped inside one input folder (a model folder has a handful)
MAX_FOLDER_FILES = 200


def _strip(node: Any, replace: list[tuple[str, str]], files: dict[str, list]) -> Any:
    """``node`` without :data:`IGNORED_KEYS`, with the ``replace`` prefixes rewritten; the input
    files its strings name (outside the replaced folders) are stamped into ``files``."""
    if isinstance(node, dict):
        return {k: _strip(v, replace, files) for k, v in node.items() if k not in IGNORED_KEYS}
    if isinstance(node, list):
        return [_strip(v, replace, files) for v in node]
    if not isinstance(node, str):
        return node
    replaced = node
    for prefix, token in replace:
        replaced = replaced.replace(prefix, token)
    if replaced == node:
        _stamp_input(node, files)
    return replaced


def _stamp_input(value: str, files: dict[str, list]) -> None:
    """Stamp ``value`` when it names a file or folder: a path (with a ``/`` or a suffix) or a
    bundled ``name:role``; a bare word (``cls``, ``flat``) is a setting, even if a folder has its name."""
    if not value or len(value) > 4096 or "\n" in value or not any(c in value for c in "/.:"):
        return
    try:
        path = resolve_path(value)
    except FileNotFoundError:
        return
    if path.startswith(IRDS_PREFIX) or not os.path.exists(path):
        return
    if os.path.isfile(path):
        files[value] = file_stamp(path)
        return
    stamps = []
    for root, _, names in sorted(os.walk(path)):
        for name in sorted(names):
            full = os.path.join(root, name)
            stat = os.stat(full)
            stamps.append([os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns])
            if len(stamps) >= MAX_FOLDER_FILES:
                break
    files[value] = [os.path.abspath(path), stamps]


def source_digest(roots: tuple[str, ...]) -> str:
    """sha256 over the relative path and bytes of every ``.py`` file under ``roots`` (sorted)."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            digest.update(f"{Path(root).name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def dr_source() -> str:
    """:func:`source_digest` of this installed dr: its package and the ``dr.losses`` and
    ``dr.miners`` folders (which an editable install maps from the repository's top level)."""
    import dr.losses
    import dr.miners

    return source_digest(tuple(str(Path(m.__file__).parent) for m in (dr, dr.losses, dr.miners)))


def stage_fingerprint(
    command: str, config: dict, cache_root: str | os.PathLike, own_dir: str | None = None
) -> tuple[str, dict]:
    """``(key, described)``: a 16-hex-digit key of the stage and what it covers (written next to
    the output as ``fingerprint.json``). ``config`` is the resolved container of the stage's
    config; ``own_dir`` is the placeholder the stage's own folder has in it, if any."""
    replace = ([(own_dir, "<out>")] if own_dir else []) + [(str(Path(cache_root)), "<cache>")]
    files: dict[str, list] = {}
    described = {
        "command": command,
        "config": _strip(config, replace, files),
        "files": files,
        "dr": dr.__version__,
        "dr_source": dr_source(),
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], json.loads(text)


def embeddings_path(cache_root: str | os.PathLike, model: str, corpus: str, settings: dict) -> Path:
    """Where the corpus embeddings of ``model`` (with encoder ``settings`` and precision) live in the
    cache, shared by every stage that encodes that corpus with that model. The ``.npy``'s own
    ``.json`` (:func:`dr.miners.candidates.corpus_embeddings`) still checks the weights before reuse."""
    files: dict[str, list] = {}
    for value in (model, corpus):
        _stamp_input(value, files)
    text = json.dumps(
        {"model": model, "corpus": corpus, "settings": settings, "files": files}, sort_keys=True, default=str
    )
    return Path(cache_root) / "embeddings" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.npy"
