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
from typing import IO, Any, Iterator

from dr.data.limits import max_line_bytes


class DataError(ValueError):
    """Bad input: the message names the file, the line and what was expected."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def parse_json(path: str | os.PathLike, line_no: int, line: str, expected: str) -> Any:
    """The JSON value of one line of ``path``; a :class:`DataError` ``"<expected>, got ..."`` when
    the line is not JSON, or holds what no text file can (an unpaired surrogate escape)."""
    try:
        value = json.loads(line.rstrip("\r\n"))  # a column past the newline would read as "column 1"
    except json.JSONDecodeError as e:
        raise DataError(path, line_no, f"{expected}, got invalid JSON ({e.msg}, column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # a number of thousands of digits, nesting thousands deep
        raise DataError(path, line_no, f"{expected}, got JSON that cannot be read ({type(e).__name__})") from None
    if "\\u" in line:  # only escapes can make a surrogate: UTF-8 text cannot hold one
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(
                path, line_no, f"{expected}, got a string with an unpaired surrogate escape (\\ud800-\\udfff)"
            ) from None
    return value


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched. A write that
    fails (a full disk, no permission) raises an ``OSError`` naming ``path`` (not the temporary
    file). The file gets the mode the umask gives an ordinary new file. ``.gz`` targets are
    gzip-compressed transparently. ``mode`` is ``"w"`` (text) or ``"wb"`` (bytes). A symbolic
    link at ``path`` is refused (:func:`refuse_symlink`): replacing it would surprise whoever made it.
    """
    path = Path(path)
    refuse_symlink(path)
    tmp, in_block = None, False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        if path.suffix == ".gz":
            handle = gzip.open(tmp, "wb" if "b" in mode else "wt", encoding=None if "b" in mode else encoding)
        else:
            handle = open(tmp, mode, encoding=None if "b" in mode else encoding)
        with handle:
            in_block = True
            yield handle
            in_block = False
            handle.flush()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(e, OSError) and not (in_block and e.filename not in (None, tmp)):
            # Ours (making the folder or file, a write, the rename), not another file the block used.
            raise naming(e, path) from e
        raise


def refuse_symlink(path: str | os.PathLike) -> None:
    """Raise :class:`DataError` when ``path`` is a symbolic link: dr writes only its own files and
    never through a link (which could point at anything the user may write)."""
    if os.path.islink(path):
        raise DataError(
            path,
            None,
            f"is a symbolic link (to {os.readlink(path)}); expected a regular file or no file "
            "where dr writes (it does not write through links): remove the link or choose another path",
        )


def open_nofollow(path: str | os.PathLike, mode: str = "r+b") -> IO[bytes]:
    """Open (creating when absent) the binary file ``path`` for reading and writing without
    following a symbolic link (``O_NOFOLLOW``): a link there raises :class:`DataError`."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if os.path.islink(path):
            refuse_symlink(path)
        raise naming(e, path) from e
    return os.fdopen(fd, mode)


def naming(error: OSError, path: str | os.PathLike) -> OSError:
    """``error`` again, naming ``path`` (same errno, so still e.g. a ``PermissionError``)."""
    if error.errno is None:
        return OSError(f"{path}: {error}")
    return OSError(error.errno, error.strerror or str(error), str(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_modes(root: str | os.PathLike, keep: dict[str, int] | None = None) -> None:
    """Give ``root`` and everything under it the modes the umask gives ordinary new files and
    folders (libraries that write through temporary files leave them 0600 or 0700), except the
    paths of ``keep`` (:func:`tree_stamps` of an earlier state) that have not changed since."""
    mask, keep = _umask(), keep or {}
    root = Path(root)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        st = path.stat()
        is_dir = path.is_dir()
        if str(path) in keep and (is_dir or keep[str(path)] == st.st_mtime_ns):
            continue  # a folder or file that was there before and was not rewritten
        os.chmod(path, (0o777 if is_dir else 0o666) & ~mask)


def tree_stamps(root: str | os.PathLike) -> dict[str, int]:
    """``{path: mtime_ns}`` of ``root`` and everything under it (empty when it does not exist)."""
    root = Path(root)
    if not root.exists():
        return {}
    return {str(p): p.stat().st_mtime_ns for p in [root, *root.rglob("*")] if not p.is_symlink()}


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=indent, sort_keys=False)
        f.write("\n")


@contextlib.contextmanager
def numbered_lines(path: str | os.PathLike) -> Iterator[Iterator[tuple[int, str]]]:
    """``(1-based line number, line)`` of a UTF-8 text file, transparently decompressing ``.gz``.

    A line longer than :func:`dr.data.limits.max_line_bytes` raises a :class:`DataError` once that
    many bytes of it are read. Lines are decoded one at a time, so a line that is not UTF-8 raises a :class:`DataError`
    naming that very line (text-mode reading would fail somewhere in an 8 KB block instead); a
    damaged ``.gz`` raises one naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    limit = max_line_bytes()
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")

    def lines() -> Iterator[tuple[int, str]]:
        line_no = 0
        try:
            while data := raw.readline(limit + 1):  # at most limit + 1 bytes of a line in memory
                line_no += 1
                if len(data) > limit and not (len(data) == limit + 1 and data.endswith(b"\n")):
                    raise DataError(
                        path,
                        line_no,
                        f"expected lines of at most {limit} bytes, got a longer one (a damaged "
                        "or wrong file? DR_MAX_LINE_BYTES raises the limit)",
                    )
                try:
                    yield line_no, data.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        path, line_no, f"expected UTF-8 text, got the byte {data[e.start]:#04x} at column {e.start + 1}"
                    ) from None
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
