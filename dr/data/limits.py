"""Bounds on what one line or one text may cost, whatever the input holds.

- Lines: every reader goes through :func:`dr.data.io.numbered_lines`, which refuses a line longer
  than :func:`max_line_bytes` (1 MiB, or ``DR_MAX_LINE_BYTES``) with a :class:`DataError` naming
  the file and line, after reading at most that many bytes of it. A passage or query is a few
  KB; a 300 MB line is a damaged or wrong file, and reading it whole took 1.5 GB.
- Texts: a tokenizer turns all of a text into tokens before truncating to ``max_length``
  (2.2 GB for one 10 MB query). :func:`cut_texts` first cuts each text to
  ``CHARS_PER_TOKEN × max_length`` characters. A WordPiece or BPE token covers a few characters
  of ordinary text (one word piece; a word longer than 100 characters is one ``[UNK]``), so the
  first ``max_length`` tokens lie well within the cut and the result is the same tokens.
"""

from __future__ import annotations

import os
from typing import Iterable

DEFAULT_MAX_LINE_BYTES = 1 << 20
#: characters kept per token of the maximum length before tokenising (far above any real text's)
CHARS_PER_TOKEN = 32


def max_line_bytes() -> int:
    """The longest line the readers accept, in bytes: ``DR_MAX_LINE_BYTES`` or 1 MiB."""
    value = os.environ.get("DR_MAX_LINE_BYTES", "").strip()
    if not value:
        return DEFAULT_MAX_LINE_BYTES
    from dr.config import ConfigError

    try:
        limit = int(value)
    except ValueError:
        raise ConfigError(f"DR_MAX_LINE_BYTES={value}: expected a positive number of bytes") from None
    if limit <= 0:
        raise ConfigError(f"DR_MAX_LINE_BYTES={value}: expected a positive number of bytes")
    return limit


def cut_texts(texts: Iterable[str], max_length: int | None) -> list[str]:
    """``texts`` cut to ``CHARS_PER_TOKEN × max_length`` characters each (unchanged without a max length)."""
    texts = list(texts)
    if not max_length:
        return texts
    limit = CHARS_PER_TOKEN * int(max_length)
    return [t[:limit] if isinstance(t, str) and len(t) > limit else t for t in texts]
