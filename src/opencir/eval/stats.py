"""Confidence intervals and paired tests over per-query results.

Every metric OpenCIR reports is a mean over queries of a per-query value (a 1/0 hit for
recalls, an AP for mAP), saved by :func:`opencir.eval.evaluate.evaluate` in
``EvalResult.per_query``. From those values this module gives

- :func:`summarize`: the metric with its 95% confidence interval. One run: a percentile
  bootstrap over queries. Several runs of one row (training seeds) on the same queries:
  mean ± sd over runs, and a two-level bootstrap that resamples the runs *and* the queries,
  so the interval covers both the seed-to-seed and the query-sampling variation.
- :func:`paired_test`: the difference between two rows measured on the same queries, its
  95% CI (the same two-level bootstrap, queries resampled jointly for both rows) and a
  two-sided p-value. Two single runs: a sign-flip randomisation test on the per-query
  differences (for 1/0 hits this is McNemar's exact test, approximated by resampling).
  A row of several runs: the bootstrap p-value of the same two-level draws the CI comes
  from, so it carries the seed-to-seed variation too and agrees with the CI (p < 0.05
  exactly when the 95% CI excludes 0, up to resampling ties).

All values are in percent (×100), as the tables print them. Resampling is seeded, so the
same inputs always give the same intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_LEVEL = 0.95
PAIRED_TESTS = ("auto", "sign-flip")
_CHUNK_ELEMENTS = 4_000_000  # draws per resampling chunk: bounds memory at any size


@dataclass(frozen=True)
class Summary:
    """One metric of one row: mean over runs of the per-run metric, with its CI.

    ``sd`` is the standard deviation over runs (None for a single run).
    """

    mean: float
    low: float
    high: float
    sd: float | None
    runs: int
    queries: int


@dataclass(frozen=True)
class PairedTest:
    """``row − baseline`` on the same queries: the difference, its CI and the p-value."""

    delta: float
    low: float
    high: float
    p_value: float
    queries: int


def as_runs(values: Sequence[float] | Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Per-query values as a ``[runs, queries]`` float array (one run may be given as 1-D)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"per-query values must be [queries] or [runs, queries] with at least one of each, "
            f"got shape {tuple(np.shape(values))}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("per-query values must be finite numbers")
    return array


def summarize(
    values: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Summary:
    """Mean ×100 with its percentile-bootstrap CI over queries (and runs, when several)."""
    runs = as_runs(values)
    _check_level(level, resamples)
    means = runs.mean(axis=1) * 100.0
    draws = _two_level_bootstrap([runs], resamples, np.random.default_rng(seed))[0] * 100.0
    low, high = _percentile_interval(draws, level)
    sd = float(means.std(ddof=1)) if len(means) > 1 else None
    return Summary(float(means.mean()), low, high, sd, runs.shape[0], runs.shape[1])


def paired_test(
    values: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
    baseline: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    test: str = "auto",
) -> PairedTest:
    """``values − baseline`` (×100) over the same queries, each row one or several runs.

    ``test`` picks the p-value: ``"auto"`` the sign-flip test when both rows are single
    runs and the two-level bootstrap's otherwise (see the module docstring);
    ``"sign-flip"`` the sign-flip test on the run-averaged differences whatever the runs —
    right when the runs of both rows share one design (the same random picks in both rows,
    run by run), so that their variation is not a difference between the rows.
    """
    if test not in PAIRED_TESTS:
        raise ValueError(f"test must be one of {PAIRED_TESTS}, got {test!r}")
    row, base = as_runs(values), as_runs(baseline)
    if row.shape[1] != base.shape[1]:
        raise ValueError(
            f"a paired test needs the same queries in both rows: {row.shape[1]} vs "
            f"{base.shape[1]} per-query values"
        )
    _check_level(level, resamples)
    rng = np.random.default_rng(seed)
    row_draws, base_draws = _two_level_bootstrap([row, base], resamples, rng)
    draws = (row_draws - base_draws) * 100.0
    low, high = _percentile_interval(draws, level)
    differences = row.mean(axis=0) - base.mean(axis=0)
    if test == "sign-flip" or row.shape[0] == base.shape[0] == 1:
        p_value = _sign_flip_p_value(differences, resamples, rng)
    else:
        p_value = _bootstrap_p_value(draws)
    delta = float(differences.mean() * 100.0)
    return PairedTest(delta, low, high, p_value, row.shape[1])


def _check_level(level: float, resamples: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100 for a usable interval, got {resamples}")


def _two_level_bootstrap(
    rows: list[np.ndarray], resamples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Bootstrap means of each ``[runs, queries]`` row; queries resampled jointly for all.

    Each resample draws the queries once (shared by every row, which keeps the pairing)
    and, per row, its runs with replacement; the statistic is the mean over the drawn runs
    of their means over the drawn queries. With one run this is the plain bootstrap.
    """
    n_queries = rows[0].shape[1]
    chunk = max(1, _CHUNK_ELEMENTS // n_queries)
    out = [np.empty(resamples) for _ in rows]
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        queries = rng.integers(0, n_queries, size=(size, n_queries))
        for row, draws in zip(rows, out, strict=True):
            per_run = row[:, queries].mean(axis=2)  # [runs, size]
            if row.shape[0] == 1:
                draws[start : start + size] = per_run[0]
                continue
            picked = rng.integers(0, row.shape[0], size=(size, row.shape[0]))
            draws[start : start + size] = np.take_along_axis(per_run.T, picked, 1).mean(1)
    return out


def _percentile_interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return float(low), float(high)


def _bootstrap_p_value(draws: np.ndarray) -> float:
    """Two-sided p-value of a difference 0 from bootstrap draws of the difference.

    Twice the share of draws on the far side of 0 from the point estimate (the smallest
    level at which the percentile interval would reach 0), with the ``(1 + k) / (1 + n)``
    correction so that no finite number of draws claims p = 0; draws that are all exactly
    0 (identical rows) give 1.
    """
    if not np.any(draws):
        return 1.0
    beyond = min(np.count_nonzero(draws <= 0.0), np.count_nonzero(draws >= 0.0))
    return min(1.0, 2.0 * (1 + beyond) / (1 + draws.size))


def _sign_flip_p_value(differences: np.ndarray, resamples: int, rng: np.random.Generator) -> float:
    """Two-sided randomisation test of mean difference 0: flip each query's sign at random.

    Under the null hypothesis the two rows are exchangeable on every query, so each
    per-query difference is as likely to have either sign. ``p = (1 + #{|T*| >= |T|}) /
    (1 + resamples)``; identical rows give exactly 1.
    """
    nonzero = differences[differences != 0.0]
    if nonzero.size == 0:
        return 1.0
    observed = abs(nonzero.sum())
    chunk = max(1, _CHUNK_ELEMENTS // nonzero.size)
    extreme = 0
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        signs = rng.integers(0, 2, size=(size, nonzero.size)) * 2 - 1
        flipped = np.abs(signs @ nonzero)
        extreme += int(np.count_nonzero(flipped >= observed - 1e-12 * max(1.0, observed)))
    return (1 + extreme) / (1 + resamples)
