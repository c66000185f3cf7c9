"""Vectorised ways to pick ``num_negatives`` columns per row out of a ``[Q, K]`` boolean ``eligible`` mask.

Each returns a ``[Q, K]`` bool mask, a subset of ``eligible``; rows with fewer eligible columns than
asked keep them all. ``n=None`` keeps every eligible column.
"""

from __future__ import annotations

import numpy as np


def take_first(eligible: np.ndarray, n: int | None) -> np.ndarray:
    """The ``n`` best-ranked (left-most) eligible columns of each row."""
    if n is None:
        return eligible.copy()
    return eligible & (np.cumsum(eligible, axis=1) <= n)


def take_last(eligible: np.ndarray, n: int | None) -> np.ndarray:
    """The ``n`` worst-ranked (right-most) eligible columns of each row."""
    return take_first(eligible[:, ::-1], n)[:, ::-1]


def take_weighted(eligible: np.ndarray, log_weights: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct columns per row, drawn one at a time with p ∝ exp(log_weights), excluding those drawn.

    Gumbel-top-k: the top-n of ``log_weights + Gumbel(0, 1)`` is distributed exactly as ``n`` successive
    weighted draws without replacement (Vieira 2014; Kool et al., ICML 2019, "Stochastic Beams and Where
    to Find Them", Sec. 2), and it vectorises over rows. Columns with weight 0 (log-weight -inf) are
    never drawn, so a row may return fewer than ``n``.
    """
    ok = eligible & (log_weights > -np.inf)  # False for NaN too
    if n is None:
        return ok
    keys = np.where(ok, log_weights + rng.gumbel(size=eligible.shape), -np.inf)
    order = np.argsort(-keys, axis=1, kind="stable")[:, :n]
    keep = np.zeros_like(eligible)
    rows = np.arange(eligible.shape[0])[:, None]
    keep[rows, order] = np.take_along_axis(keys, order, axis=1) > -np.inf
    return keep


def take_uniform(eligible: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct eligible columns per row, uniformly at random."""
    return take_weighted(eligible, np.zeros(eligible.shape), n, rng)
