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


def effective_sample_size(eligible: np.ndarray, log_weights: np.ndarray) -> np.ndarray:
    """[Q] the kernel's effective sample size 1/Σ_i p_i², p ∝ exp(log_weights) over each row's eligible columns.

    It counts the candidates a draw effectively chooses among (Kish's effective number): K for a flat kernel
    over K candidates, 1 for a kernel that always picks the same one. NaN for a row with no eligible column.
    """
    ok = eligible & (log_weights > -np.inf)
    w = np.where(ok, log_weights, -np.inf)
    top = w.max(axis=1, keepdims=True, initial=-np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(ok, np.exp(w - np.where(np.isfinite(top), top, 0.0)), 0.0)
        p = p / p.sum(axis=1, keepdims=True)
        return np.where(ok.any(axis=1), 1.0 / (p**2).sum(axis=1), np.nan)
