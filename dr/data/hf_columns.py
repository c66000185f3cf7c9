"""Which column of a training dataset plays which role, and the validated example of each row.

The conventions read (:mod:`dr.data.hf` reads the rows, from a ``datasets`` folder, parquet or JSONL):

- sentence-transformers (ST): ``(anchor|query, positive[, negative | negative_1..negative_n])``,
  one positive text per row, with an optional ``scores`` list ``[positive score, negative_1 score,
  ...]`` (what ``sentence_transformers.util.mine_hard_negatives(..., output_scores=True)`` writes
  for its ``triplet`` and ``n-tuple`` formats); a list column ``negatives`` is read as well. Where
  the query or positive column has another name, ST's own rule applies: the first columns of the
  table, in order (``mine_hard_negatives`` keeps its input's names, e.g. ``(query, answer, negative_1, ...)``).
- FlagEmbedding: ``{"query", "pos": [...], "neg": [...]}`` with optional ``pos_scores`` and
  ``neg_scores`` (one per text; its ``prompt`` and ``type`` fields are ignored: prompts are
  ``encoder.query_prompt``).

``columns`` maps roles to other names (``{query: question, positive: answer}``; ``negative`` takes
one column or a list); ``ignore`` names columns to leave out. Any other column is an error, since ST
would feed it to the loss as one more text. ST's labelled formats (``label``, ``labels``, ``score``:
cross-encoder pairs, lists, or a Margin-MSE margin) carry no absolute scores and are refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

#: Roles a column can play, as ``data.hf.columns`` keys.
ROLES = ("query", "positive", "negative", "scores", "pos_scores", "neg_scores")
_BY_NAME = {
    "query": ("query", "anchor"),
    "positive": ("positive", "pos"),
    "scores": ("scores",),
    "pos_scores": ("pos_scores",),
    "neg_scores": ("neg_scores",),
}
_NEGATIVE = re.compile(r"negative(_(\d+))?|negatives|neg")
_NEGATIVE_LISTS = ("negatives", "neg")
_IGNORED = ("prompt", "type")  # FlagEmbedding's per-row instruction and task family
_LABELS = ("label", "labels", "score")  # sentence_transformers' DEFAULT_LABEL_COLUMNS, less "scores"


@dataclass
class Layout:
    """The columns of each role (``negatives``: in order; ``ignored``: left out)."""

    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    scores: str | None = None
    pos_scores: str | None = None
    neg_scores: str | None = None
    ignored: list[str] = field(default_factory=list)
    positional: bool = False  # the query/positive columns were taken by ST's column-order rule

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [], False)}


@dataclass
class Example:
    """One row: a query, its positive texts and negative texts, each with a score or None."""

    query: str
    positives: list[str]
    positive_scores: list[float | None]
    negatives: list[str]
    negative_scores: list[float | None]


def columns_rule(value: Any) -> str | None:
    """``data.hf.columns``: ``{role: column}`` with roles of :data:`ROLES` (``negative``: a column or a list)."""
    expected = (
        f"expected a mapping role: column with roles among {', '.join(ROLES)}, "
        "e.g. {query: question, positive: answer}"
    )
    if not hasattr(value, "items"):
        return expected
    for role, column in value.items():
        names = list(column) if role == "negative" and not isinstance(column, str) and column is not None else [column]
        if role not in ROLES or not names or not all(isinstance(c, str) and c for c in names):
            return expected
    return None


def detect_layout(
    names: list[str], columns: dict | None = None, ignore: list[str] | tuple = (), where: str = ""
) -> Layout:
    """The :class:`Layout` of a table with columns ``names`` (see the module docstring); a
    :class:`DataError` naming the columns and the fix when a role cannot be told."""
    from dr.config import ConfigError
    from dr.data.io import DataError

    columns, have = dict(columns or {}), list(names)
    mapped: dict[str, Any] = {}
    for role, column in columns.items():
        wanted = [column] if isinstance(column, str) else list(column)
        missing = [c for c in wanted if c not in have]
        if missing:
            raise ConfigError(
                f"data.hf.columns.{role}={column}: {where} has no column {missing[0]!r}; its columns: {', '.join(have)}"
            )
        mapped[role] = column if role != "negative" else wanted
    bad_ignore = [c for c in ignore if c not in have]
    if bad_ignore:
        raise ConfigError(f"data.hf.ignore: {where} has no column {bad_ignore[0]!r}; its columns: {', '.join(have)}")
    taken = {c for v in mapped.values() for c in ([v] if isinstance(v, str) else v)} | set(ignore)
    free = [c for c in have if c not in taken]
    for role, known in _BY_NAME.items():
        if role not in mapped:
            hit = next((c for c in free if c in known), None)
            if hit is not None:
                mapped[role] = hit
                free.remove(hit)
    if "negative" not in mapped:
        negatives = [c for c in free if _NEGATIVE.fullmatch(c)]
        # negative_1..negative_n by their number (negative_10 after negative_9), the others as they come
        negatives.sort(key=lambda c: (0, int(m.group(2))) if (m := _NEGATIVE.fullmatch(c)).group(2) else (1, 0))
        mapped["negative"] = negatives
        free = [c for c in free if c not in negatives]
    ignored = list(ignore) + [c for c in free if c in _IGNORED]
    free = [c for c in free if c not in _IGNORED]
    labels = [c for c in free if c in _LABELS]
    if labels:
        raise DataError(
            where,
            None,
            f"column {labels[0]!r} is a sentence-transformers label (a labelled pair or list for a "
            "cross-encoder, or a Margin-MSE margin), which gives no absolute scores; expected (query, positive, "
            "negative_1..n) with an optional 'scores' list [positive score, negative scores...], or leave it out "
            f"with data.hf.ignore=[{labels[0]}]",
        )
    positional = []
    for role in ("query", "positive"):  # sentence-transformers' rule: the first columns, in table order
        if role not in mapped and free:
            mapped[role] = free.pop(0)
            positional.append(f"{role}={mapped[role]}")
    for role in ("query", "positive"):
        if role not in mapped:
            raise DataError(
                where,
                None,
                f"no {role} column among {', '.join(have) or 'no columns'}; expected "
                f"{' or '.join(repr(n) for n in _BY_NAME[role])}, or name it: data.hf.columns={{{role}: COLUMN}}",
            )
    if free:
        raise DataError(
            where,
            None,
            f"column {free[0]!r} has no role; expected the columns query|anchor, positive|pos, "
            "negative|negative_N|negatives|neg, scores or pos_scores/neg_scores: map it (data.hf.columns="
            f"{{negative: {free[0]}}}) or leave it out (data.hf.ignore=[{free[0]}])"
            + (
                f"; by column order (sentence-transformers' rule) it took {', '.join(positional)}" if positional else ""
            ),
        )
    if mapped.get("scores") and (mapped.get("pos_scores") or mapped.get("neg_scores")):
        raise DataError(
            where,
            None,
            "both 'scores' (sentence-transformers: [positive, negatives...]) and pos_scores/neg_scores "
            "(FlagEmbedding); expected one of the two conventions",
        )
    return Layout(
        query=mapped["query"],
        positive=mapped["positive"],
        negatives=list(mapped.get("negative") or []),
        scores=mapped.get("scores"),
        pos_scores=mapped.get("pos_scores"),
        neg_scores=mapped.get("neg_scores"),
        ignored=ignored,
        positional=bool(positional),
    )


def parse_row(layout: Layout, row: dict, fail: Callable[[str], Exception]) -> Example:
    """The :class:`Example` of ``row``; ``fail(message)`` makes the error for a bad value (it names the row)."""

    def text(value, column: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise fail(f"expected column {column!r} to hold a non-empty text, got {_short(value)}")
        return value

    def texts(value, column: str, empty_ok: bool) -> list[str]:
        """A text, or a list of texts (empty only when ``empty_ok``: a list of negatives may be)."""
        if isinstance(value, str):
            return [text(value, column)]
        if not isinstance(value, (list, tuple)) or (not value and not empty_ok):
            kind = "a text or a list of texts" if empty_ok else "a text or a non-empty list of texts"
            raise fail(f"expected column {column!r} to hold {kind}, got {_short(value)}")
        return [text(v, column) for v in value]

    def scores(column: str | None, n: int, what: str) -> list[float | None]:
        if column is None or row.get(column) is None:
            return [None] * n
        value = row[column]
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise fail(f"expected column {column!r} to hold {n} numbers ({what}), got {_short(value)}")
        for v in value:
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
                raise fail(f"expected column {column!r} to hold finite numbers, got {_short(v)}")
        return [float(v) for v in value]

    for column in (layout.query, layout.positive):
        if column not in row:
            raise fail(f"expected a column {column!r}, got none (columns: {', '.join(row)})")
    query = text(row[layout.query], layout.query)
    positives = texts(row[layout.positive], layout.positive, empty_ok=False)
    negatives: list[str] = []
    for column in layout.negatives:
        if row.get(column) is None and column in _NEGATIVE_LISTS:
            continue  # FlagEmbedding's "neg" may be absent or null: no negatives for this query
        if column not in row:
            raise fail(f"expected a column {column!r}, got none (columns: {', '.join(row)})")
        negatives += texts(row[column], column, empty_ok=True)
    if layout.scores is not None and row.get(layout.scores) is not None:
        if len(positives) != 1:
            raise fail(
                f"expected one positive with column {layout.scores!r} ([positive score, negative scores...]), "
                f"got {len(positives)}; several positives take pos_scores/neg_scores (FlagEmbedding)"
            )
        values = scores(
            layout.scores, 1 + len(negatives), f"the positive's score, then one per negative, as in {layout.negatives}"
        )
        return Example(query, positives, values[:1], negatives, values[1:])
    return Example(
        query,
        positives,
        scores(layout.pos_scores, len(positives), "one per positive"),
        negatives,
        scores(layout.neg_scores, len(negatives), "one per negative"),
    )


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
