"""Evaluation of runs against qrels with `ir-measures`_ (trec_eval semantics via pytrec_eval).

Measures are ir-measures strings, e.g. ``nDCG@10``, ``RR@10``, ``AP(rel=2)``, ``R(rel=2)@1000``.
Graded qrels: nDCG uses the grades as gains; binary measures count a document relevant when its
grade is >= ``rel`` (default 1), so ``RR@10`` counts grade >= 1 and ``AP(rel=2)`` grade >= 2.

Which queries are averaged (the trec_eval default, used by pyserini and the TREC-DL overviews): the
queries that appear in the run *and* have qrels. A query of the qrels that is missing from the run
is left out of the mean (a warning is logged), not counted as 0; a query present in the run with an
empty ranking counts as 0. Queries of the run without qrels are ignored. (ir-measures itself would
count missing queries as 0, like ``trec_eval -c``; :func:`evaluate_run` removes them first.)

.. _ir-measures: https://ir-measur.es
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from typing import Any, Mapping

import ir_measures

from dr.config import ConfigError
from dr.data.io import write_json

log = logging.getLogger(__name__)

TREC_DL_MEASURES = ["nDCG@10", "RR@10", "AP(rel=2)", "R(rel=2)@1000"]

#: Standard evaluation settings: measures plus where the queries and qrels come from (any spec
#: accepted by :func:`dr.data.read_queries` / :func:`dr.data.read_qrels`).
PRESETS: dict[str, dict[str, Any]] = {
    "dl19": {
        "measures": TREC_DL_MEASURES,
        "corpus": "irds:msmarco-passage",
        "queries": "dl19:queries",
        "qrels": "dl19:qrels",
        "description": "TREC DL 2019 passages, 43 judged queries (bundled); nDCG@10 over grades 0-3, "
        "RR@10 with grade >= 1, AP and R@1000 with grade >= 2",
    },
    "dl19-pool": {
        "measures": ["nDCG@10", "R(rel=2)@100"],
        "corpus": "dl19:pool_corpus",
        "queries": "dl19:queries",
        "qrels": "dl19:pool_qrels",
        "description": "TREC DL 2019 passages, 43 judged queries over the bundled 30,045-passage judged pool "
        "(offline); nDCG@10 over grades 0-3, R@100 with grade >= 2",
    },
    "dl20": {
        "measures": TREC_DL_MEASURES,
        "corpus": "irds:msmarco-passage",
        "queries": "irds:msmarco-passage/trec-dl-2020/judged",
        "qrels": "irds:msmarco-passage/trec-dl-2020/judged",
        "description": "TREC DL 2020 passages, 54 judged queries (needs ir_datasets and a download); "
        "nDCG@10 over grades 0-3, RR@10 with grade >= 1, AP and R@1000 with grade >= 2",
    },
    "msmarco-dev": {
        "measures": ["RR@10", "R@1000"],
        "corpus": "irds:msmarco-passage",
        "queries": "irds:msmarco-passage/dev/small",
        "qrels": "irds:msmarco-passage/dev/small",
        "description": "MS MARCO passage dev (small), 6,980 queries (needs ir_datasets and a download); "
        "RR@10 (MRR@10, ranking cut at 10) and R@1000, grade >= 1",
    },
    "scifact": {
        "measures": ["nDCG@10", "R@100"],
        "corpus": "scifact:corpus",
        "queries": "scifact:test_queries",
        "qrels": "scifact:test_qrels",
        "description": "BEIR SciFact test split, 300 queries (bundled)",
    },
}


def parse_measures(names: list[str]) -> list:
    """Parse ir-measures names into measure objects; raise :class:`ConfigError` naming any bad one."""
    measures = []
    for name in names:
        try:
            measures.append(ir_measures.parse_measure(name))
        except Exception as e:  # ir-measures raises NameError, ValueError or SyntaxError
            raise ConfigError(f"unknown or malformed measure {name!r}: {e}") from None
    return measures


def _prepare(
    run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]
) -> tuple[dict[str, dict[str, float]], dict[str, Mapping[str, int]]]:
    """Plain-float run (pytrec_eval rejects numpy scalars) and qrels restricted to the run's queries."""
    plain = {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.items()}
    missing = [q for q in qrels if q not in plain]
    if missing:
        log.warning(
            "%d of %d judged queries are missing from the run and are left out of the mean (e.g. %s)",
            len(missing),
            len(qrels),
            ", ".join(sorted(missing)[:5]),
        )
    return plain, {q: judged for q, judged in qrels.items() if q in plain}


def evaluate_run(
    run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]], measures: list[str]
) -> dict[str, float]:
    """Mean of each measure over the judged queries of the run, keyed by the names as given."""
    parsed = parse_measures(measures)
    plain, judged = _prepare(run, qrels)
    if not judged:
        log.warning("no query of the run has qrels: every measure is NaN")
        return {name: math.nan for name in measures}
    values = ir_measures.calc_aggregate(parsed, judged, plain)
    return {name: float(values[measure]) for name, measure in zip(measures, parsed)}


def per_query(
    run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]], measures: list[str]
) -> dict[str, dict[str, float]]:
    """Each measure for each judged query of the run: ``{qid: {measure name: value}}``."""
    parsed = parse_measures(measures)
    names: dict[Any, list[str]] = {}
    for name, measure in zip(measures, parsed):
        names.setdefault(measure, []).append(name)
    plain, judged = _prepare(run, qrels)
    results: dict[str, dict[str, float]] = {}
    for metric in ir_measures.iter_calc(parsed, judged, plain):
        for name in names[metric.measure]:
            results.setdefault(metric.query_id, {})[name] = float(metric.value)
    return {qid: {name: results[qid][name] for name in measures} for qid in sorted(results)}


def format_table(rows: Mapping[str, Mapping[str, float]] | Mapping[str, float], title: str | None = None) -> str:
    """Aligned plain-text table with 4 decimals.

    ``{system: {measure: value}}`` gives one row per system and one column per measure (missing
    values shown as ``-``); a flat ``{measure: value}`` gives a single row without a label column.
    """
    flat = all(not isinstance(v, Mapping) for v in rows.values())
    table: Mapping[str, Mapping[str, float]] = {"": rows} if flat else rows  # type: ignore[dict-item]
    columns = list(dict.fromkeys(m for values in table.values() for m in values))

    def cell(value: Any) -> str:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return str(value)  # counts (e.g. a ``queries`` column)
        return f"{value:.4f}" if isinstance(value, numbers.Real) else str(value)

    body = [[label] + [cell(values[c]) if c in values else "-" for c in columns] for label, values in table.items()]
    lines = [[""] + columns] + body
    if flat:
        lines = [line[1:] for line in lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]

    def render(line: list[str]) -> str:
        cells = [text.rjust(w) for text, w in zip(line, widths)]
        if not flat:  # left-align the row labels
            cells[0] = line[0].ljust(widths[0])
        return "  ".join(cells).rstrip()

    out = [title] if title else []
    return "\n".join(out + [render(line) for line in lines])


def write_metrics(metrics: Mapping[str, float], path: str | os.PathLike) -> None:
    """Write ``{measure: value}`` as a flat JSON object, atomically (numbers as floats; a few
    entries, such as ``backend/choice``, are names)."""
    write_json(path, {str(name): value if isinstance(value, str) else float(value) for name, value in metrics.items()})
