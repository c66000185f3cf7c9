"""Where the Arrow copies of corpora live, and how old ones go.

:func:`dr.data.read_corpus` turns a corpus file into an Arrow table that is memory mapped. The
table is rebuilt when the file's size or modification time changes; left in the ``datasets``
cache, every version of every corpus stayed there for good. The tables now live in dr's own cache
(``$DR_CACHE_DIR/datasets``, default ``~/.cache/dr/datasets``, or the ``cache_dir`` a caller
gives), and ``corpora.json`` there records which table holds which corpus: when a corpus is
built again (its file changed), the table of its previous version is deleted. So the cache holds
one table per corpus path; delete the folder to reclaim all of it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from dr.data.io import write_json

log = logging.getLogger(__name__)

INDEX = "corpora.json"


def corpus_cache_dir(cache_dir: str | os.PathLike | None = None) -> str:
    """``cache_dir``, else ``$DR_CACHE_DIR/datasets``, else ``~/.cache/dr/datasets``."""
    if cache_dir is not None:
        return str(Path(cache_dir).expanduser())
    root = os.environ.get("DR_CACHE_DIR") or "~/.cache/dr"
    return str(Path(root).expanduser() / "datasets")


def _table_folder(cache_dir: Path, filename: str) -> Path | None:
    """The per-version folder (``generator/default-<hash>``) of an Arrow file under ``cache_dir``."""
    try:
        relative = Path(filename).resolve().relative_to(cache_dir.resolve())
    except ValueError:
        return None
    return cache_dir / relative.parts[0] / relative.parts[1] if len(relative.parts) > 2 else None


def forget_old_versions(cache_dir: str | os.PathLike, corpus: str, cache_files: list[dict]) -> list[str]:
    """Record that ``corpus`` is now held by the table of ``cache_files``; delete the table of its
    previous version when that was another one (a folder this cache made). Returns what went."""
    cache_dir = Path(cache_dir)
    folders = {f for f in (_table_folder(cache_dir, c.get("filename", "")) for c in cache_files) if f is not None}
    if len(folders) != 1:
        return []
    (current,) = folders
    index_path = cache_dir / INDEX
    try:
        index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {}
        index = index if isinstance(index, dict) else {}
    except (OSError, ValueError):
        index = {}  # a damaged record only means an old table is not cleaned up
    previous = index.get(corpus)
    key = str(current.relative_to(cache_dir))
    removed = []
    if previous and previous != key and previous not in {v for k, v in index.items() if k != corpus}:
        old = cache_dir / previous
        if old.parent.parent == cache_dir and old.name.startswith("default-") and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
            removed.append(previous)
            log.info("corpus cache: removed the table of an earlier version of %s (%s)", corpus, old)
    if previous != key:
        index[corpus] = key
        try:
            write_json(index_path, index)
        except (OSError, ValueError) as e:  # a cache that cannot be written to still reads
            log.warning("corpus cache: could not record %s (%s)", index_path, e)
    return removed
