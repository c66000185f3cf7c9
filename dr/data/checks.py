"""Referential checks: ids that a qrels, negatives or teacher-score file names but the corpus or
the queries lack.

One helper, :func:`check_ids`, serves training (:class:`dr.training.RetrievalDataModule`) and
``dr-mine``, ``dr-score`` and ``dr-eval``. It counts the unknown ids and names the first few;
``on_missing`` (``data.on_missing`` in training, ``on_missing`` in the commands) chooses what
follows: ``"warn"`` (the default) logs the count and the caller drops those ids, ``"error"`` raises
a :class:`dr.data.DataError` naming the file. The count is logged either way, so a silent loss
of judged documents, negatives or teacher pairs cannot happen.
"""

from __future__ import annotations

import logging
import os
from typing import Container, Iterable

from dr.config import ConfigError
from dr.data.io import DataError

log = logging.getLogger(__name__)

#: The values of ``data.on_missing`` / ``on_missing``.
ON_MISSING = ("warn", "error")
#: How many of the unknown ids a message names.
SHOWN = 5


def check_ids(
    ids: Iterable[str],
    known: Container[str],
    *,
    source: str | os.PathLike,
    what: str,
    where: str | os.PathLike,
    on_missing: str = "warn",
    key: str = "data.on_missing",
) -> set[str]:
    """The ids of ``ids`` that are not in ``known`` (empty when all are).

    Args:
        ids: the ids the file names (repeats count once).
        known: the ids that exist (a corpus's ``row_of``, a queries dict).
        source: the file that names them (it is what the message blames).
        what: what the ids are, plural, e.g. ``"judged docids"``, ``"qids"``.
        where: what lacks them, e.g. the corpus's path.
        on_missing: ``"warn"``: log ``<source>: <n> <what> are not in <where> (e.g. ...); dropped``
            and return them for the caller to drop; ``"error"``: raise :class:`DataError`.
        key: the config key that sets ``on_missing`` (named in the messages).
    """
    if on_missing not in ON_MISSING:
        raise ConfigError(f"{key}={on_missing}: expected one of {', '.join(ON_MISSING)}")
    missing = [i for i in dict.fromkeys(ids) if i not in known]
    if not missing:
        return set()
    shown = ", ".join(missing[:SHOWN]) + (", ..." if len(missing) > SHOWN else "")
    problem = f"{len(missing)} {what} are not in {where} (e.g. {shown})"
    if on_missing == "error":
        raise DataError(source, None, f"expected every id to exist; {problem}. Set {key}=warn to drop them")
    log.warning("%s: %s; they are dropped (%s=warn)", source, problem, key)
    return set(missing)
