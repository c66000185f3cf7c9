"""The record that ties an index folder's two files together.

:meth:`dr.retrieval.index.DenseIndex.save` replaces ``index`` and ``docid`` one after the
other; a crash between the two renames would pair new docids with old vectors, and counts alone
do not show it when both saves hold as many passages. So each save ends by writing
``index.json``: the sha256 of both files as written. Loading checks both (one more read of the
index file, from the page cache just after FAISS read it). A save stopped between the renames
leaves the previous record, which matches neither mix; a save that failed before renaming
anything leaves the previous index, record and all, as it was. A folder from before this record
(no ``index.json``) is loaded with the count check only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dr.data.io import DataError, write_json

SAVE_FILE = "index.json"


def write_save_record(out: Path, index_bytes: bytes, docid_bytes: bytes, ntotal: int) -> None:
    write_json(
        out / SAVE_FILE,
        {
            "format": 1,
            "ntotal": int(ntotal),
            "index_sha256": hashlib.sha256(index_bytes).hexdigest(),
            "docid_sha256": hashlib.sha256(docid_bytes).hexdigest(),
        },
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def check_save_record(index_dir: str | os.PathLike, num_docids: int) -> None:
    """Raise :class:`DataError` when ``index`` and ``docid`` are not the files of one save."""
    from dr.retrieval.index import DOCID_FILE, INDEX_FILE

    index_dir = Path(index_dir)
    record_path = index_dir / SAVE_FILE
    if not record_path.is_file():
        return  # a folder written before the record existed
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        expected = (record["index_sha256"], record["docid_sha256"])
    except DataError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DataError(
            record_path,
            None,
            "expected the save record of a dr index (JSON with both files' sha256), got a "
            "damaged file; build the index again (dr-encode)",
        ) from None
    if (_sha256(index_dir / INDEX_FILE), _sha256(index_dir / DOCID_FILE)) != expected:
        raise DataError(
            index_dir,
            None,
            f"{INDEX_FILE} and {DOCID_FILE} are not from the same save (a save was interrupted, "
            "or one file was copied from another index); build the index again (dr-encode)",
        )
