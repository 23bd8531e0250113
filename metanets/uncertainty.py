"""Uncertainty of the benchmark's scores: bootstrap CIs, matched accuracy, paired zoo comparisons.

Every score is computed under a weight per test net (:mod:`metanets.metrics`'
``weighted_*``), which gives three *views* of one set of predictions:

* ``all`` — every test net (weight 1): the plain score;
* ``matched`` — nets reweighted to a common accuracy histogram, the overlap of the
  zoos' test-target histograms (:func:`matched_weights`), so a gap between zoos cannot
  come from one zoo holding more untrained nets;
* ``above_chance`` — only nets whose accuracy exceeds chance (1 / number of classes).

A 95% CI over test nets comes from ``B`` seeded resamples: each resample draws
``n_eff`` nets (Kish's effective sample size of the view's weights; all test nets for
``all``) with probabilities proportional to the weights, every seed is scored on the same
resample, the seeds are resampled too (with replacement), and the percentile interval of the
seed-mean is reported: seeds that disagree widen the CI, so it covers what a rerun (another
CPU's rounding, another seed) moves, not only which nets were tested. The paired comparison
of two zoos resamples the seeds of each zoo in the same way.
"""
from __future__ import annotations

import math

import numpy as np

from zoo.seeding import derived_seed

from .metrics import undefined_reason, weighted_r2, weighted_tau

VIEWS = ("all", "matched", "above_chance")
METRICS = ("r2", "tau")
#: Equal-width bins of the pooled test-target range used to match histograms.
MATCH_BINS = 10


def kish_n(w: np.ndarray) -> float:
    """Kish's effective sample size (Σw)² / Σw² of weights ``w``."""
    s2 = float((w ** 2).sum())
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def matched_weights(targets: dict, bins: int = MATCH_BINS) -> tuple[dict, float]:
    """Per zoo, a weight per test net that reshapes its target histogram into the common one.

    ``targets``: zoo -> ``[n]`` test targets. The common histogram is, per bin of the
    pooled range, the smallest share any zoo has there; a net's weight is the common
    share of its bin over its zoo's share (0 outside the overlap). Returns
    ``(zoo -> weights, overlap)`` with ``overlap`` the common histogram's mass in [0, 1]."""
    pooled = np.concatenate([np.asarray(t, np.float64) for t in targets.values()])
    lo, hi = float(pooled.min()), float(pooled.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    idx = {z: np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1) for z, t in targets.items()}
    share = {z: np.bincount(i, minlength=bins) / len(i) for z, i in idx.items()}
    common = np.min(np.stack(list(share.values())), 0)
    out = {}
    for z, i in idx.items():
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(share[z] > 0, common / share[z], 0.0)
        out[z] = ratio[i]
    return out, float(common.sum())


def chance_weights(y: np.ndarray, chance: float | None) -> np.ndarray | None:
    """1 for nets above chance accuracy, 0 otherwise; None when chance is unknown."""
    return None if chance is None else (np.asarray(y) > chance).astype(np.float64)


def resamples(w: np.ndarray, B: int, rng: np.random.Generator) -> np.ndarray:
    """``[B, n]`` resample counts: ``round(n_eff)`` draws each, probabilities ∝ ``w``."""
    n_draw = max(2, int(round(kish_n(w))))
    return rng.multinomial(n_draw, w / w.sum(), size=B).astype(np.float64)


def score(y, preds, w, B: int, rng) -> dict:
    """Point scores per seed under weights ``w`` and ``[B, S]`` bootstrap scores, per metric.

    ``preds``: ``[S, n]`` test predictions of the usable seeds."""
    y, preds, w = np.asarray(y, np.float64), np.asarray(preds, np.float64), np.asarray(w, np.float64)
    W = resamples(w, B, rng)
    return {"r2": (weighted_r2(y, preds, w[None])[0], weighted_r2(y, preds, W)),
            "tau": (weighted_tau(y, preds, w[None])[0], weighted_tau(y, preds, W)),
            "n_eff": kish_n(w)}


def interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of finite ``draws``; (nan, nan) when fewer than half are finite
    (e.g. resamples of a nearly constant target)."""
    d = draws[np.isfinite(draws)]
    if len(d) < max(2, len(draws) // 2):
        return math.nan, math.nan
    a = (1 - level) / 2
    return float(np.quantile(d, a)), float(np.quantile(d, 1 - a))


def summarize(result: dict, *, B: int = 1000, seed: int = 0, match: bool = False) -> tuple[list, list]:
    """Summary rows (metanet x zoo x view) and paired zoo comparisons of a benchmark result.

    Needs ``result["predictions"]`` (test predictions per run, usable runs only) and
    ``result["zoos"]`` (with ``chance`` for the above-chance view)."""
    zoos = [z["zoo"] for z in result["zoos"]]
    chance = {z["zoo"]: z.get("chance") for z in result["zoos"]}
    preds = {}
    for p in result["predictions"]:
        preds.setdefault((p["metanet"], p["zoo"]), []).append(p)
    targets = {}
    for p in result["predictions"]:
        targets.setdefault(p["zoo"], np.asarray(p["target"], np.float64))
    views = ["all"]
    weights = {z: {"all": np.ones(len(t))} for z, t in targets.items()}
    if match and len(targets) >= 2:
        mw, overlap = matched_weights(targets)
        for z in targets:
            weights[z]["matched"] = mw[z]
            weights[z]["above_chance"] = chance_weights(targets[z], chance.get(z))
        views += ["matched", "above_chance"]
        result["match"] = {"bins": MATCH_BINS, "overlap": overlap,
                           "n_eff": {z: kish_n(mw[z]) for z in targets}}
    elif match:
        for z in targets:
            weights[z]["above_chance"] = chance_weights(targets[z], chance.get(z))
        views += ["above_chance"]
    rows, boots = [], {}
    skipped = {(k["metanet"], k["zoo"]): k["reason"] for k in result.get("skipped", [])}
    metanets = list(dict.fromkeys([r["metanet"] for r in result["runs"]] + [m for m, _ in skipped]))
    for m in metanets:
        for z in zoos:
            if (m, z) in skipped:
                rows += [{"metanet": m, "zoo": z, "view": v, "seeds_total": 0, "seeds_counted": 0, "n_eff": None,
                          "note": f"n/a: {skipped[m, z]}",
                          **{f"{k}_{s}": None for k in METRICS for s in ("mean", "std", "lo", "hi")}} for v in views]
                continue
            runs = [r for r in result["runs"] if r["metanet"] == m and r["zoo"] == z]
            if not runs:
                continue
            usable = sorted(preds.get((m, z), []), key=lambda p: p["seed"])
            for view in views:
                row = {"metanet": m, "zoo": z, "view": view, "seeds_total": len(runs),
                       "seeds_counted": len(usable), "note": _note(runs)}
                w = weights.get(z, {}).get(view)
                if not usable or w is None or w.sum() < 2:
                    reason = row["note"] or ("chance accuracy unknown for this target" if w is None
                                             else "fewer than 2 nets in this view")
                    rows.append({**row, "n_eff": None, "note": reason,
                                 **{f"{k}_{s}": None for k in METRICS for s in ("mean", "std", "lo", "hi")}})
                    continue
                y = usable[0]["target"]
                rng = np.random.default_rng(derived_seed(seed, "bootstrap", z, view))
                sc = score(y, np.stack([p["prediction"] for p in usable]), w, B, rng)
                boots[(m, z, view)] = sc
                row["n_eff"] = round(sc["n_eff"], 1)
                # The CI resamples the seeds as well as the test nets (as the paired comparison
                # does): seeds that disagree widen it, so it covers the spread a rerun on another
                # CPU shows, not only the spread of the test nets.
                srng = np.random.default_rng(derived_seed(seed, "seeds", m, z, view))
                for k in METRICS:
                    point, draws = sc[k]
                    lo, hi = interval(_seed_resampled(draws, srng))
                    finite = point[np.isfinite(point)]
                    row.update({f"{k}_mean": float(finite.mean()) if len(finite) else None,
                                # sample std (ddof 1): a few seeds stand for all of them
                                f"{k}_std": float(finite.std(ddof=1)) if len(finite) > 1 else None,
                                f"{k}_lo": _none(lo), f"{k}_hi": _none(hi)})
                    if not len(finite):
                        keep = w > 0
                        why = undefined_reason(np.asarray(y)[keep], usable[0]["prediction"][keep], k)
                        row["note"] = "; ".join(x for x in (row["note"], f"{'R²' if k == 'r2' else 'τ'} undefined: "
                                                            f"{why or 'no finite score'}") if x)
                rows.append(row)
    comps = []
    for m in metanets:
        for z in zoos[1:]:
            for view in views:
                a, b = boots.get((m, zoos[0], view)), boots.get((m, z, view))
                if a is None or b is None:
                    continue
                rng = np.random.default_rng(derived_seed(seed, "paired", m, z, view))
                row = {"metanet": m, "zoo": z, "vs": zoos[0], "view": view}
                for k in METRICS:
                    da, db = _seed_resampled(a[k][1], rng), _seed_resampled(b[k][1], rng)
                    diff = float(_nanmean(b[k][0][None])[0] - _nanmean(a[k][0][None])[0])
                    lo, hi = interval(db - da)
                    row.update({f"{k}_diff": _none(diff), f"{k}_lo": _none(lo), f"{k}_hi": _none(hi)})
                comps.append(row)
    return rows, comps


def _nanmean(draws: np.ndarray) -> np.ndarray:
    """Row means over finite entries; nan for a row without any (no warning)."""
    ok = np.isfinite(draws)
    with np.errstate(all="ignore"):
        return np.where(ok, draws, 0).sum(1) / ok.sum(1)


def _seed_resampled(draws: np.ndarray, rng) -> np.ndarray:
    """``[B]`` seed-means of ``[B, S]`` bootstrap scores with the seeds resampled per draw."""
    B, S = draws.shape
    return _nanmean(np.take_along_axis(draws, rng.integers(0, S, size=(B, S)), 1))


def _note(runs) -> str:
    bad = [r for r in runs if r.get("status", "ok") != "ok"]
    if not bad:
        return ""
    kinds = sorted({r["status"] for r in bad})
    return "; ".join(f"{k.replace('_', ' ')}: seed {', '.join(str(r['seed']) for r in bad if r['status'] == k)}"
                     for k in kinds)


def _none(v):
    return None if v is None or not np.isfinite(v) else float(v)
