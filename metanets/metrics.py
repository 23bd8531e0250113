"""Scores of a metanet's predictions: R² (scikit-learn) and Kendall's tau (scipy)."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import kendalltau
from sklearn.metrics import r2_score


def r2(y_true, y_pred) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot; nan if a prediction is not finite."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if not np.isfinite(y_pred).all():
        return math.nan
    return float(r2_score(y_true, y_pred))


def kendall_tau(y_true, y_pred) -> float:
    """Kendall's tau-b rank correlation; nan for constant or non-finite predictions."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if not np.isfinite(y_pred).all() or np.ptp(y_pred) == 0:
        return math.nan
    return float(kendalltau(y_true, y_pred).statistic)


def mean_std(values) -> tuple[float, float]:
    """Mean and population std (ddof=0) over seeds, ignoring nan runs; (nan, nan) if none."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return math.nan, math.nan
    return float(v.mean()), float(v.std())
