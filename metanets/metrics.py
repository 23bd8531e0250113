"""Scores of a metanet's predictions: R² (scikit-learn) and Kendall's tau (scipy).

Both are undefined on some inputs: R² when the target is constant (SS_tot = 0;
scikit-learn would print 1.0 or 0.0 there), τ-b when the target or the predictions are
constant. They are then nan, and :func:`undefined_reason` says why, so a table can
print the reason instead of a number.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import kendalltau
from sklearn.metrics import r2_score


def undefined_reason(y_true, y_pred, metric: str) -> str | None:
    """Why ``metric`` ("r2" or "tau") is undefined for these values, or None if it is defined."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if len(y_true) < 2:
        return f"{len(y_true)} net(s): needs at least 2"
    if not np.isfinite(y_pred).all():
        return f"{int((~np.isfinite(y_pred)).sum())} of {len(y_pred)} predictions not finite"
    if np.ptp(y_true) == 0:
        return f"target constant ({y_true[0]:.4g} for all {len(y_true)} nets)"
    if metric == "tau" and np.ptp(y_pred) == 0:
        return "predictions constant"
    return None


def r2(y_true, y_pred) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot; nan where undefined (:func:`undefined_reason`)."""
    if undefined_reason(y_true, y_pred, "r2"):
        return math.nan
    return float(r2_score(np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)))


def kendall_tau(y_true, y_pred) -> float:
    """Kendall's tau-b rank correlation; nan where undefined (constant or non-finite values)."""
    if undefined_reason(y_true, y_pred, "tau"):
        return math.nan
    return float(kendalltau(np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)).statistic)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample std (ddof 1) over seeds, ignoring nan runs; (nan, nan) if none, std nan
    for one run."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return math.nan, math.nan
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else math.nan)


# ------------------------------------------------------------------ weighted, batched

def weighted_r2(y: np.ndarray, yhat: np.ndarray, w: np.ndarray) -> np.ndarray:
    """R² of ``yhat [S, n]`` against ``y [n]`` under net weights ``w [B, n]``: ``[B, S]``.

    A bootstrap resample is the weight vector of its counts, so ``B`` resamples are
    scored at once; integer weights give exactly the R² of the resampled nets."""
    y, yhat, w = (np.asarray(a, np.float64) for a in (y, yhat, w))
    tot_w = w.sum(1, keepdims=True)
    mean = (w @ y)[:, None] / tot_w
    ss_tot = w @ (y ** 2) - tot_w[:, 0] * mean[:, 0] ** 2
    ss_res = w @ ((y[None, :] - yhat) ** 2).T  # [B, S]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1.0 - ss_res / ss_tot[:, None]
    out[ss_tot <= 1e-12 * max(1.0, float(np.abs(y).max()) ** 2) * tot_w[:, 0]] = np.nan
    return out


def weighted_tau(y: np.ndarray, yhat: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Kendall's τ-b of ``yhat [S, n]`` against ``y [n]`` under net weights ``w [B, n]``: ``[B, S]``.

    A pair (i, j) counts ``w_i w_j`` times; with resample counts as weights this is the
    τ-b of the resampled nets (copies of one net are tied pairs, which τ-b ignores).
    Costs two ``[B, n] @ [n, n]`` products per seed."""
    y, yhat, w = np.asarray(y, np.float64), np.asarray(yhat, np.float64), np.asarray(w, np.float64)
    def quad(m):  # w_b^T m w_b for every row b
        return ((w @ m) * w).sum(1)

    sy = np.sign(y[:, None] - y[None, :])
    ty = quad(np.abs(sy))
    out = np.empty((len(w), len(yhat)))
    for s, p in enumerate(yhat):
        sp = np.sign(p[:, None] - p[None, :])
        num, tp = quad(sy * sp), quad(np.abs(sp))
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, s] = num / np.sqrt(ty * tp)
        out[(ty == 0) | (tp == 0), s] = np.nan
    return out
