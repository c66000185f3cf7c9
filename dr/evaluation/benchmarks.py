"""Evaluation beyond one test set: interpolation vs extrapolation (a ``dr-split`` folder), and a
summary over several benchmark folders.

:func:`split_metrics` scores a run separately on the interpolation and the extrapolation test
queries of a :class:`dr.evaluation.splits.QuerySplit` and gives the gap (interpolation minus
extrapolation) of each measure; :func:`split_rows` lays it out for :func:`format_table`.
"""

from __future__ import annotations

import math
from typing import Mapping

from dr.evaluation.evaluate import evaluate_run
from dr.evaluation.splits import QuerySplit

SPLIT_MEASURES = ["nDCG@10", "R@100"]


def split_metrics(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    split: QuerySplit,
    measures: list[str] | None = None,
) -> dict[str, float]:
    """``{interpolation/<m>, extrapolation/<m>, gap/<m>, interpolation/queries, extrapolation/queries}``.

    Each side averages over its test queries that are in the run and have qrels (the trec_eval
    convention of :func:`evaluate_run`); a side without such a query gives NaN.
    """
    measures = list(measures or SPLIT_MEASURES)
    out: dict[str, float] = {}
    for label in ("interpolation", "extrapolation"):
        qids = [q for q in split.qids(label) if q in qrels and q in run]
        sub_qrels = {q: qrels[q] for q in qids}
        values = (
            evaluate_run({q: run[q] for q in qids}, sub_qrels, measures) if qids else {m: math.nan for m in measures}
        )
        out.update({f"{label}/{m}": v for m, v in values.items()})
        out[f"{label}/queries"] = float(len(qids))
    for m in measures:
        out[f"gap/{m}"] = out[f"interpolation/{m}"] - out[f"extrapolation/{m}"]
    return out


def split_rows(metrics: Mapping[str, float], measures: list[str], prefix: str = "") -> dict[str, dict[str, float]]:
    """Table rows ``interpolation``, ``extrapolation`` and ``gap`` (with a ``queries`` column) from
    :func:`split_metrics`'s output; ``prefix`` names the system (``"trained "``)."""
    rows: dict[str, dict[str, float]] = {}
    for label in ("interpolation", "extrapolation", "gap"):
        row = {m: metrics[f"{label}/{m}"] for m in measures}
        if label != "gap":
            row["queries"] = int(metrics[f"{label}/queries"])
        rows[f"{prefix}{label}"] = row
    return rows


def summary_rows(results: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """One row per dataset plus their unweighted ``mean`` over the measures every dataset has."""
    rows = {name: dict(values) for name, values in results.items()}
    if len(rows) > 1:
        common = [m for m in next(iter(rows.values())) if all(m in r for r in rows.values())]
        rows["mean"] = {m: sum(r[m] for r in results.values()) / len(results) for m in common}
    return rows
