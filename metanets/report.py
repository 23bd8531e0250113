"""Writing a benchmark's results: results.json, results.csv, results.md, predictions.csv, PNGs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.store import write_json

from .metrics import mean_std


def summary(result: dict) -> pd.DataFrame:
    """One row per (metanet, zoo): mean and std over seeds of test R² and tau, and the lr used."""
    runs = pd.DataFrame(result["runs"])
    rows = []
    if runs.empty:  # every metanet n/a on every zoo
        return pd.DataFrame(columns=["metanet", "zoo", "r2_mean", "r2_std", "tau_mean", "tau_std", "seeds", "lr"])
    for (m, z), g in runs.groupby(["metanet", "zoo"], sort=False):
        r2m, r2s = mean_std(g["test_r2"])
        tm, ts = mean_std(g["test_tau"])
        lrs = sorted({x for x in g["lr"] if x is not None and not (isinstance(x, float) and math.isnan(x))})
        rows.append({"metanet": m, "zoo": z, "r2_mean": r2m, "r2_std": r2s, "tau_mean": tm, "tau_std": ts,
                     "seeds": len(g), "lr": lrs[0] if len(lrs) == 1 else None,
                     "train_time_s": float(g["train_time_s"].sum())})
    return pd.DataFrame(rows)


def _pm(mean, std, digits=3):
    return "n/a" if not np.isfinite(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(result: dict) -> str:
    """Rows = metanets, columns = zoo x {R², tau}: test-split mean ± std over seeds."""
    s = summary(result)
    zoos = [z["zoo"] for z in result["zoos"]]
    skipped = {(k["metanet"], k["zoo"]): k["reason"] for k in result.get("skipped", [])}
    metanets = [m for m in result["config"]["metanets"] if m in set(s.get("metanet", [])) | {k[0] for k in skipped}]
    target = result["zoos"][0]["target"] if result["zoos"] else "?"
    head = "| metanet | " + " | ".join(f"{z} R² | {z} τ" for z in zoos) + " |"
    sep = "| --- |" + " --- | --- |" * len(zoos)
    lines = [head, sep]
    for m in metanets:
        cells = []
        for z in zoos:
            r = s[(s.metanet == m) & (s.zoo == z)] if len(s) else s
            if (m, z) in skipped:
                cells += ["n/a", "n/a"]
            elif r.empty:
                cells += ["", ""]
            else:
                r = r.iloc[0]
                cells += [_pm(r.r2_mean, r.r2_std), _pm(r.tau_mean, r.tau_std)]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    cfg = result["config"]
    lr = cfg["lr"]
    if isinstance(lr, dict):
        how = ", ".join(f"{k} {v}" for k, v in lr.items()) + "; others auto"
    else:
        how = str(lr)
    notes = [f"Test-split R² and Kendall τ predicting `{target}` from weights ({cfg['params']} parameters); "
             f"mean ± std over {cfg['seeds']} seed(s); {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
             f"lr {how} (auto = chosen by validation R² of seed 0 over {cfg['lr_grid']})."]
    for z in result["zoos"]:
        lrs = ", ".join(f"{r.metanet} {r.lr:g}" for r in s[s.zoo == z["zoo"]].itertuples()
                        if r.lr is not None and np.isfinite(r.lr))
        notes.append(f"- {z['zoo']}: {z['n_train']}/{z['n_val']}/{z['n_test']} train/val/test nets, "
                     f"{z['num_inputs']} inputs, {z['diverged_excluded']} diverged excluded"
                     + (f"; lr: {lrs}" if lrs else ""))
    notes += [f"- n/a: {m} on {z}: {why}" for (m, z), why in skipped.items()]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def write(result: dict, out) -> dict:
    """Write every result file into ``out``; return name -> path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    body = {k: v for k, v in result.items() if k != "predictions"}
    write_json(out / "results.json", body)
    files["json"] = out / "results.json"
    pd.DataFrame(result["runs"]).to_csv(out / "results.csv", index=False)
    files["csv"] = out / "results.csv"
    (out / "results.md").write_text(markdown(result))
    files["md"] = out / "results.md"
    if result.get("predictions"):
        frames = [pd.DataFrame({"zoo": p["zoo"], "metanet": p["metanet"], "seed": p["seed"],
                                "model_id": p["model_id"], "target": p["target"], "prediction": p["prediction"]})
                  for p in result["predictions"]]
        pd.concat(frames, ignore_index=True).to_csv(out / "predictions.csv", index=False)
        files["predictions"] = out / "predictions.csv"
        files["scatter"] = plot_scatter(result, out / "pred_vs_true.png")
    if result["runs"]:
        files["bars"] = plot_bars(result, out / "zoos_bar.png")
    return files


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_scatter(result: dict, path) -> Path:
    """Predicted vs true target on the test split, one panel per (metanet, zoo), seed 0."""
    plt = _plt()
    zoos = [z["zoo"] for z in result["zoos"]]
    mets = list(dict.fromkeys(p["metanet"] for p in result["predictions"]))
    fig, axes = plt.subplots(len(mets), len(zoos), figsize=(3.2 * len(zoos), 3.0 * len(mets)), squeeze=False)
    s = summary(result)
    for i, m in enumerate(mets):
        for j, z in enumerate(zoos):
            ax = axes[i][j]
            p = next((p for p in result["predictions"] if p["metanet"] == m and p["zoo"] == z and p["seed"] == 0), None)
            if p is None:
                ax.axis("off")
                continue
            y, yhat = np.asarray(p["target"]), np.asarray(p["prediction"])
            ax.scatter(y, yhat, s=6, alpha=0.6)
            lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            r = s[(s.metanet == m) & (s.zoo == z)].iloc[0]
            ax.set_title(f"{m} | {z}\nR² {r.r2_mean:.3f}  τ {r.tau_mean:.3f}", fontsize=8)
            ax.set_xlabel(f"true {result['zoos'][j]['target']}", fontsize=8)
            ax.set_ylabel("predicted", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_bars(result: dict, path) -> Path:
    """Test R² and tau (mean ± std over seeds) of each metanet, one bar per zoo."""
    plt = _plt()
    s = summary(result)
    zoos = [z["zoo"] for z in result["zoos"]]
    mets = list(dict.fromkeys(s["metanet"]))
    x = np.arange(len(mets))
    width = 0.8 / max(1, len(zoos))
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(mets)) * 2 / 1.5, 3.6))
    for ax, (col, name) in zip(axes, (("r2", "test R²"), ("tau", "test Kendall τ"))):
        for k, z in enumerate(zoos):
            vals = [s[(s.metanet == m) & (s.zoo == z)] for m in mets]
            mean = [v[f"{col}_mean"].iloc[0] if len(v) else np.nan for v in vals]
            std = [v[f"{col}_std"].iloc[0] if len(v) else np.nan for v in vals]
            ax.bar(x + (k - (len(zoos) - 1) / 2) * width, mean, width, yerr=std, capsize=3, label=z)
        ax.set_xticks(x, mets, fontsize=8)
        ax.set_title(name)
        ax.axhline(0, color="k", lw=0.6)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(zoos), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

