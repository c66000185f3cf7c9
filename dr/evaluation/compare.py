"""Is system B better than A? Paired significance tests of runs on the same qrels (``dr-compare``).

Per measure, each system's per-query values (:func:`dr.evaluation.evaluate.per_query`, the TREC
conventions of :mod:`dr.evaluation.evaluate`) are compared with the baseline's (the first system)
on the queries that every run answers and the qrels judge:

- the mean, and the delta against the baseline;
- a paired two-sided t-test (``scipy.stats.ttest_rel``; Student 1908), as in the TREC literature;
- a paired two-sided randomization test (Fisher 1935; for IR, Smucker, Allan & Carterette 2007,
  "A Comparison of Statistical Significance Tests for Information Retrieval Evaluation", Sec. 2.1):
  under H0 the sign of each per-query difference is exchangeable, so the p-value is the share of
  random sign flips whose mean difference is at least as far from 0 as the observed one,
  ``(1 + #{|mean(±d)| >= |mean(d)|}) / (1 + R)`` for R flips (seeded; identical runs give p = 1);
- Holm-Bonferroni (Holm 1979) over the non-baseline systems of each measure, on the randomization
  p-values: sorted p₍₁₎ <= ... <= p₍ₘ₎ get ``max_{j<=i} min(1, (m - j + 1) p₍ⱼ₎)``;
- wins, ties and losses: queries where the system scores above, equal to (within 1e-9) and below
  the baseline.

Several seeds of a system: give a group of run files; each query's value is averaged over the
group's runs before testing (the test is then over queries, with the seed noise averaged out).
"""

from __future__ import annotations

import glob
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from dr.config import ConfigError
from dr.data import read_run
from dr.evaluation.evaluate import per_query

log = logging.getLogger(__name__)

KEYS = ("system", "measure", "mean", "delta", "p_ttest", "p_randomization", "p_holm", "wins", "ties", "losses")
TIE = 1e-9


def paired_ttest(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of ``scipy.stats.ttest_rel(b, a)``; 1.0 when every difference is 0
    (scipy returns NaN there: no evidence of a difference)."""
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.all(np.abs(b - a) <= TIE):
        return 1.0
    return float(stats.ttest_rel(b, a).pvalue)


def randomization_test(
    a: np.ndarray, b: np.ndarray, permutations: int = 10_000, seed: int = 0, chunk: int = 2_000
) -> float:
    """Two-sided paired randomization (sign-flip) test of mean(b - a) = 0; see the module docstring."""
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    if permutations < 1:
        raise ValueError(f"permutations must be positive, got {permutations}")
    if not len(d):
        return math.nan
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    at_least = 0
    for start in range(0, permutations, chunk):
        n = min(chunk, permutations - start)
        signs = rng.integers(0, 2, size=(n, len(d)), dtype=np.int8) * 2 - 1
        # relative tolerance: a flip that reproduces the observed mean must count despite rounding
        at_least += int(np.count_nonzero(np.abs(signs @ d) / len(d) >= observed - 1e-12 * max(1.0, observed)))
    return (1 + at_least) / (1 + permutations)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given (NaN stays NaN and is not counted)."""
    p = np.asarray(p_values, np.float64)
    adjusted = np.full(len(p), math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def expand_run_files(spec) -> list[list[str]]:
    """Groups of run files from ``[A, B]`` (one run each), ``[[A1, A2], [B1, B2]]`` (seeds) or globs
    (``runs/full_seed*.trec``: one group of every match, sorted)."""
    if isinstance(spec, (str, os.PathLike)) or not spec:
        raise ConfigError(f"run_files={spec}: expected a list of two or more run files (or groups of seed runs)")
    groups = []
    for item in spec:
        parts = [item] if isinstance(item, (str, os.PathLike)) else list(item)
        files: list[str] = []
        for part in parts:
            part = str(part)
            if glob.has_magic(part):
                matches = sorted(glob.glob(part))
                if not matches:
                    raise FileNotFoundError(f"run_files: no file matches {part}")
                files += matches
            else:
                files.append(part)
        if not files:
            raise ConfigError(f"run_files: an empty group in {spec}")
        groups.append(files)
    if len(groups) < 2:
        raise ConfigError(f"run_files={spec}: expected at least two systems, the first being the baseline")
    return groups


def system_name(files: Sequence[str]) -> str:
    """A run file's stem (``.gz`` dropped too); for a group of seeds, the stems' common prefix
    without trailing separators (the first stem if they share none)."""
    stems = [Path(Path(f).name.removesuffix(".gz")).stem for f in files]
    if len(stems) == 1:
        return stems[0]
    prefix = os.path.commonprefix(stems).rstrip("_-. ")
    return prefix or stems[0]


@dataclass
class Comparison:
    """The outcome of :func:`compare_runs`: per-query values and one row per system and measure."""

    systems: list[str]
    files: list[list[str]]
    measures: list[str]
    qids: list[str]
    values: dict[str, np.ndarray]  # measure -> [systems, queries]
    rows: list[dict] = field(default_factory=list)
    permutations: int = 10_000
    seed: int = 0
    missing: int = 0  # judged queries that some run answers and another does not (left out of the comparison)

    def to_json(self) -> list[dict]:
        """Rows with NaN as null (strict JSON)."""
        return [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in self.rows
        ]


def compare_runs(
    groups: Sequence[Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    measures: list[str],
    names: Sequence[str] | None = None,
    permutations: int = 10_000,
    seed: int = 0,
    on_missing: str = "warn",
) -> Comparison:
    """Compare each group of run files with the first group (the baseline); see the module docstring.

    Judged queries that not every run answers are left out with a warning (``on_missing="warn"``;
    the table's header counts them) or refused (``"error"``), naming a run that lacks one."""
    names = list(names) if names else [system_name(g) for g in groups]
    if len(names) != len(groups):
        raise ConfigError(f"names={names}: expected one name per system ({len(groups)})")
    if len(set(names)) != len(names):
        names = [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]
    tables = [[per_query(read_run(f), qrels, measures) for f in files] for files in groups]
    common = set.intersection(*(set(t) for group in tables for t in group))
    every = set.union(*(set(t) for group in tables for t in group))
    if every - common and on_missing == "error":
        lacking = next(f for group, t_group in zip(groups, tables) for f, t in zip(group, t_group) if every - set(t))
        example = sorted(every - common)[0]
        raise ConfigError(
            f"on_missing=error: {len(every - common)} of {len(every)} judged queries are not answered by every "
            f"run (e.g. query {example}; {lacking} lacks some); expected the same query set in every run"
        )
    if every - common:
        log.warning(
            "%d judged queries are missing from some runs; comparing on the %d that all runs answer",
            len(every - common),
            len(common),
        )
    if not common:
        raise ConfigError("no judged query is answered by every run: nothing to compare")
    qids = sorted(common)
    values = {
        m: np.array([[np.mean([t[q][m] for t in group]) for q in qids] for group in tables], np.float64)
        for m in measures
    }
    result = Comparison(
        names,
        [list(g) for g in groups],
        list(measures),
        qids,
        values,
        permutations=permutations,
        seed=seed,
        missing=len(every - common),
    )
    for m in measures:
        base = values[m][0]
        rows = []
        for s, name in enumerate(names):
            x = values[m][s]
            d = x - base
            row = {"system": name, "measure": m, "mean": float(x.mean()), "delta": float(d.mean())}
            if s == 0:
                row.update(
                    p_ttest=math.nan, p_randomization=math.nan, p_holm=math.nan, wins=None, ties=None, losses=None
                )
            else:
                row.update(
                    p_ttest=paired_ttest(base, x),
                    p_randomization=randomization_test(base, x, permutations, seed),
                    p_holm=math.nan,
                    wins=int(np.sum(d > TIE)),
                    ties=int(np.sum(np.abs(d) <= TIE)),
                    losses=int(np.sum(d < -TIE)),
                )
            rows.append(row)
        for row, p in zip(rows[1:], holm([r["p_randomization"] for r in rows[1:]])):
            row["p_holm"] = p
        result.rows += rows
    return result


def markdown_table(result: Comparison, alpha: float = 0.05) -> str:
    """The rows as a markdown table, with a header that says what was tested on what."""

    def p(value) -> str:
        return (
            ""
            if value is None or (isinstance(value, float) and math.isnan(value))
            else f"{value:.4f}"
            if value >= 1e-4
            else f"{value:.1e}"
        )

    seeds = [len(f) for f in result.files]
    lines = [
        f"Baseline: {result.systems[0]}. {len(result.qids)} queries (judged, answered by every run"
        + (f"; {result.missing} judged queries that not every run answers are left out" if result.missing else "")
        + "). "
        f"Paired two-sided tests: t-test, and randomization with {result.permutations:,} sign flips (seed "
        f"{result.seed}; "
        f"its smallest p is 1/{result.permutations + 1:,}); "
        f"Holm over the {len(result.systems) - 1} other system(s) per measure, on the randomization p; "
        f"† = p_holm < {alpha}.",
    ]
    if max(seeds) > 1:
        lines.append(
            "Several seeds: each query's value is the mean over the system's runs ("
            + ", ".join(f"{n}: {k}" for n, k in zip(result.systems, seeds))
            + " runs) before testing."
        )
    lines += [
        "",
        "| system | measure | mean | Δ | p (t-test) | p (rand.) | p (Holm) | W/T/L |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result.rows:
        mark = " †" if isinstance(r["p_holm"], float) and r["p_holm"] < alpha else ""
        wtl = "" if r["wins"] is None else f"{r['wins']}/{r['ties']}/{r['losses']}"
        delta = "" if r["wins"] is None else f"{r['delta']:+.4f}"
        lines.append(
            f"| {r['system']} | {r['measure']} | {r['mean']:.4f} | {delta}{mark} | {p(r['p_ttest'])} | "
            f"{p(r['p_randomization'])} | {p(r['p_holm'])} | {wtl} |"
        )
    return "\n".join(lines)
