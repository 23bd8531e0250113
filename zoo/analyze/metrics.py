"""Curve metrics of linear interpolations, on plain numpy arrays.

A *curve* is a metric (loss, or error = 1 - accuracy) at the points ``alphas`` of a line
in weight space, ``alphas[0] = 0`` and ``alphas[-1] = 1``. Everything here is pure: no
nets, no torch, so every number a report prints can be checked by hand
(``tests/test_analyze_metrics.py``).

LMC barriers (lower is better; ``L0``, ``L1`` are the endpoints):

- ``mid``: ``L(1/2) - (L0 + L1) / 2``, the paper's ("test loss barrier at the midpoint";
  upstream ``gnn/main_arxiv.py``);
- ``max_mean``: ``max_a L(a) - (L0 + L1) / 2``, Git Re-Basin's;
- ``max_chord``: ``max_a [L(a) - ((1 - a) L0 + a L1)]``, the gap to the chord (Frankle et al.).

MLI statistics of an init -> final curve (upstream ``metanet_data/interp.py::mli_stats``,
uniform grid, ``h = alphas[1] - alphas[0]``):

- ``delta``: the largest *single-step* increase ``max_i L[i+1] - L[i]`` (not a bump height:
  a rise spread over several steps scores lower);
- ``monotonic``: ``delta <= tol`` (upstream: tol 0);
- ``local_convexity``: the fraction of interior points whose second difference is >= 0;
- ``global_convexity``: the fraction of interior points on or below the chord from
  ``(0, L0)`` to ``(1, L1)``. Upstream draws its line as ``L0 + (L[1] - L0) * alpha``,
  through the first two grid values, although its comment says "between 0 and 1"; so any
  decreasing curve scores 1.0 there. ``upstream_compat=True`` reproduces that line;
- ``min_second_diff``: ``min_i (L[i+1] - 2 L[i] + L[i-1]) / h**2`` (upstream ``convexity1``).
"""
from __future__ import annotations

import math

import numpy as np

BARRIERS = ("mid", "max_mean", "max_chord")
MLI_STATS = ("delta", "monotonic", "local_convexity", "global_convexity", "min_second_diff")


def _check(curve, alphas) -> tuple[np.ndarray, np.ndarray]:
    L = np.asarray(curve, dtype=np.float64)
    a = np.asarray(alphas, dtype=np.float64)
    if L.ndim != 1 or L.shape != a.shape:
        raise ValueError(f"curve {L.shape} and alphas {a.shape} must be 1-d of one length")
    if len(a) < 3:
        raise ValueError(f"need at least 3 points, got {len(a)}")
    if a[0] != 0 or a[-1] != 1 or np.any(np.diff(a) <= 0):
        raise ValueError("alphas must increase from 0 to 1")
    return L, a


def barriers(curve, alphas) -> dict:
    """``{"mid", "max_mean", "max_chord"}`` of one curve (see the module docstring).

    ``mid`` reads ``L(1/2)`` off the grid (linearly interpolated when 1/2 is not a grid
    point, i.e. for an even number of points)."""
    L, a = _check(curve, alphas)
    ends = 0.5 * (L[0] + L[-1])
    chord = (1 - a) * L[0] + a * L[-1]
    return {"mid": float(np.interp(0.5, a, L) - ends),
            "max_mean": float(L.max() - ends),
            "max_chord": float((L - chord).max())}


def mli_stats(curve, alphas, tol: float = 0.0, upstream_compat: bool = False) -> dict:
    """The MLI statistics of one init -> final curve (see the module docstring)."""
    L, a = _check(curve, alphas)
    h = np.diff(a)
    if not np.allclose(h, h[0], rtol=1e-6, atol=1e-12):
        raise ValueError("MLI statistics need a uniform alpha grid")
    h = float(h[0])
    delta = float(np.max(np.diff(L)))
    d2 = L[2:] - 2 * L[1:-1] + L[:-2]
    line = L[0] + ((L[1] - L[0]) if upstream_compat else (L[-1] - L[0])) * a
    return {"delta": delta,
            "monotonic": bool(delta <= tol),
            "local_convexity": float(np.mean(d2 >= 0)),
            "global_convexity": float(np.mean(L[1:-1] <= line[1:-1])),
            "min_second_diff": float(np.min(d2) / h ** 2)}


# ------------------------------------------------------------ summaries

def bootstrap_ci(values, B: int = 2000, seed: int = 0, level: float = 0.95, stat=np.mean) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` (the mean) over ``values`` (one per pair or
    net), seeded; (nan, nan) for fewer than two values.

    (metanets/uncertainty.py has a weighted version for metanet scores; zoo never imports
    metanets, so this small one lives here.)"""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(B, len(v)))
    draws = stat(v[idx], axis=1)
    lo = (1 - level) / 2
    return float(np.quantile(draws, lo)), float(np.quantile(draws, 1 - lo))


def summarize(values, B: int = 2000, seed: int = 0) -> dict:
    """``{"n", "mean", "std" (sample, ddof=1), "ci_low", "ci_high"}`` of finite ``values``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    lo, hi = bootstrap_ci(v, B, seed)
    return {"n": int(len(v)), "mean": float(v.mean()) if len(v) else math.nan,
            "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "ci_low": lo, "ci_high": hi}


def paired_diff(a: dict, b: dict, B: int = 2000, seed: int = 0) -> dict:
    """Mean of ``b[k] - a[k]`` over the keys both hold (pairs matched by id), with its
    bootstrap interval: the paired comparison of two zoos (or of aligned vs. naive)."""
    keys = sorted(set(a) & set(b))
    d = np.array([b[k] - a[k] for k in keys], dtype=np.float64)
    return {**summarize(d, B, seed), "matched": len(keys)}


def unpaired_diff(a, b, B: int = 2000, seed: int = 0) -> dict:
    """Mean of ``b`` minus mean of ``a`` (two independent samples), each resampled on its own."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    out = {"n": int(min(len(a), len(b))), "mean": float(b.mean() - a.mean()) if len(a) and len(b) else math.nan,
           "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "matched": 0}
    if len(a) > 1 and len(b) > 1:
        rng = np.random.default_rng(seed)
        d = b[rng.integers(0, len(b), (B, len(b)))].mean(1) - a[rng.integers(0, len(a), (B, len(a)))].mean(1)
        out["ci_low"], out["ci_high"] = float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))
    return out


def band(curves, B: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean curve of ``curves [n, K]`` and its pointwise 95% bootstrap interval (for plots)."""
    c = np.asarray(curves, dtype=np.float64)
    mean = c.mean(0)
    if len(c) < 2:
        return mean, mean, mean
    idx = np.random.default_rng(seed).integers(0, len(c), (B, len(c)))
    draws = c[idx].mean(1)
    return mean, np.quantile(draws, 0.025, axis=0), np.quantile(draws, 0.975, axis=0)
