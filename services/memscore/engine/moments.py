"""Means, and variances of means, from streamed sums: what every per-example estimate with a
standard error is made of (estimators, influence, the prototypicality and dynamics metrics).
An example with no observation has no estimate: NaN, never a made-up 0."""

from __future__ import annotations

import numpy as np


def mean(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """s / n, NaN where n = 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def binary_var_of_mean(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Variance of the mean of n 0/1 outcomes summing to s, with p̃ = (s + ½)/(n + 1)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (s + 0.5) / (n + 1.0)
        return np.where(n > 0, p * (1 - p) / np.maximum(n, 1), np.nan)


def var_of_mean(s: np.ndarray, ss: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Variance of a sample mean from its sum and sum of squares: s²/n with s² Bessel-corrected;
    NaN below two observations."""
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (ss - s * s / np.maximum(n, 1)) / np.maximum(n - 1, 1)
        return np.where(n > 1, np.maximum(var, 0.0) / np.maximum(n, 1), np.nan)
