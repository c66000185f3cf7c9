"""Small I/O helpers shared by the whole package.

Every file the framework writes goes through :func:`atomic_write`: the content is written to a
temporary file in the same directory and renamed over the target only once it is complete, so a
run killed at any moment never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
import zlib
from pathlib import Path
from typing import IO, Iterator


class DataError(ValueError):
    """Bad input: the message names the file, the line and what was expected."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched. ``.gz`` targets
    are gzip-compressed transparently. ``mode`` is ``"w"`` (text) or ``"wb"`` (bytes).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
    try:
        if path.suffix == ".gz":
            handle = gzip.open(tmp, "wb" if "b" in mode else "wt", encoding=None if "b" in mode else encoding)
        else:
            handle = open(tmp, mode, encoding=None if "b" in mode else encoding)
        with handle:
            yield handle
            handle.flush()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=indent, sort_keys=False)
        f.write("\n")


@contextlib.contextmanager
def numbered_lines(path: str | os.PathLike) -> Iterator[Iterator[tuple[int, str]]]:
    """``(1-based line number, line)`` of a UTF-8 text file, transparently decompressing ``.gz``.

    Lines are decoded one at a time, so a line that is not UTF-8 raises a :class:`DataError`
    naming that very line (text-mode reading would fail somewhere in an 8 KB block instead); a
    damaged ``.gz`` raises one naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")

    def lines() -> Iterator[tuple[int, str]]:
        line_no = 0
        try:
            for line_no, data in enumerate(raw, 1):
                try:
                    yield line_no, data.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(path, line_no, f"expected UTF-8 text, got the byte {data[e.start]:#04x} at column {e.start + 1}") from None
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise DataError(path, line_no + 1, f"expected a complete gzip file, got a damaged one ({e})") from None

    with raw:
        yield lines()


def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a text file for reading, transparently decompressing ``.gz``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")
