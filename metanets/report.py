"""Writing a benchmark's results: results.json, results.csv, results.md, predictions.csv, PNGs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from zoo.console import pyplot
from zoo.fs import strict_json, write_json

from .bench import PAPER_LR


VIEW_TITLES = {"all": "all test nets",
               "matched": "test nets resampled to the zoos' common accuracy histogram (--match-accuracy)",
               "above_chance": "test nets above chance accuracy"}


def summary(result: dict) -> pd.DataFrame:
    """One row per (metanet, zoo, view): mean ± std over counted seeds, 95% bootstrap CI, seeds counted."""
    return pd.DataFrame(result.get("summary") or [])


def _num(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _fmt(v) -> str:
    return f"{v:.3f}" if _num(v) else "n/a"


def _cell(r, k: str) -> str:
    if not _num(r[f"{k}_mean"]):
        return "n/a"
    # one counted seed has no spread to show
    text = f"{r[f'{k}_mean']:.3f}" + (f" ± {r[f'{k}_std']:.3f}" if _num(r[f"{k}_std"]) else "")
    if _num(r[f"{k}_lo"]):
        text += f" [{r[f'{k}_lo']:.2f}, {r[f'{k}_hi']:.2f}]"
    if r["seeds_counted"] < r["seeds_total"]:
        text += f" ({r['seeds_counted']}/{r['seeds_total']} seeds)"
    return text


def _table(s: pd.DataFrame, zoos, metanets, view: str) -> list[str]:
    lines = ["| metanet | " + " | ".join(f"{z} R² | {z} τ" for z in zoos) + " |",
             "| --- |" + " --- | --- |" * len(zoos)]
    for m in metanets:
        cells = []
        for z in zoos:
            r = s[(s.metanet == m) & (s.zoo == z) & (s.view == view)]
            cells += ["", ""] if r.empty else [_cell(r.iloc[0], "r2"), _cell(r.iloc[0], "tau")]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def _diff(c, k) -> str:
    if c is None or not _num(c[f"{k}_diff"]):
        return "n/a"
    ci = f" [{c[f'{k}_lo']:+.2f}, {c[f'{k}_hi']:+.2f}]" if _num(c[f"{k}_lo"]) else ""
    return f"{c[f'{k}_diff']:+.3f}{ci}"


def markdown(result: dict) -> str:
    """Tables (rows = metanets, columns = zoo x {R², τ}) per view, paired zoo comparisons, notes."""
    s = summary(result)
    zoos = [z["zoo"] for z in result["zoos"]]
    metanets = list(dict.fromkeys(s["metanet"])) if len(s) else []
    views = list(dict.fromkeys(s["view"])) if len(s) else ["all"]
    target = result["zoos"][0]["target"] if result["zoos"] else "?"
    cfg = result["config"]
    parts = []
    for v in views:
        head = [] if v == "all" else [f"**{VIEW_TITLES[v]}**", ""]
        parts.append("\n".join(head + _table(s, zoos, metanets, v)))
    comps = pd.DataFrame(result.get("comparisons") or [])
    if len(comps):
        lines = [f"**paired comparison: zoo minus {comps.vs.iloc[0]}** (difference of seed means, "
                 f"95% CI over seeds and test-net resamples)", "",
                 "| metanet | zoo | " + " | ".join(f"ΔR² {v} | Δτ {v}" for v in views) + " |",
                 "| --- | --- |" + " --- | --- |" * len(views)]
        for (m, z), g in comps.groupby(["metanet", "zoo"], sort=False):
            by = {r.view: r._asdict() for r in g.itertuples()}
            cells = [x for v in views for x in (_diff(by.get(v), "r2"), _diff(by.get(v), "tau"))]
            lines.append(f"| {m} | {z} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    if result.get("sweeps") and cfg.get("lr_select") == "seeds":
        parts.append(_lr_choice(result["sweeps"]))
    lr = cfg["lr"]
    # what ran: metanets with a learning rate (not the gradient-boosted ones) whose rate was swept
    names = cfg.get("metanets") or list(dict.fromkeys(r["metanet"] for r in result["runs"]))
    with_lr = [m for m in names if any(r["metanet"] == m and r.get("lr") is not None for r in result["runs"])]
    given = lr if isinstance(lr, dict) else {m: lr for m in with_lr}
    swept = [m for m in with_lr if given.get(m, "auto") == "auto"
             or (given.get(m) == "paper" and m not in PAPER_LR)]
    fixed = {m: v for m, v in given.items() if m in with_lr and m not in swept}
    how = ", ".join(f"{k} {v}" for k, v in fixed.items())
    if swept:
        rule = ("the best mean validation R² of the seeds, every seed trained at every rate; the chosen "
                "rate's seeds are scored" if cfg.get("lr_select", "sweep") == "seeds"
                else "best validation R², one sweep run per rate, then fresh seeds")
        how = (how + "; " if how else "") + f"auto for {', '.join(swept)} (over {cfg['lr_grid']}: {rule})"
    notes = [f"Test-split R² and Kendall τ predicting `{target}` from weights ({cfg['params']} parameters): "
             f"mean ± sample std (ddof 1) over the seeds counted (runs that diverged or predicted nan are not counted), "
             f"[95% bootstrap CI over seeds and test nets, {cfg['bootstrap']} seeded resamples]; "
             f"seeds {_per(cfg['seeds'])}, epochs {_per(cfg['epochs'])}, batch {cfg['batch_size']}, AdamW wd {cfg.get('weight_decay', 1e-2):g}, "
             f"lr {how or 'none (no metanet with a learning rate)'}; protocol {cfg.get('protocol', 'custom')}."]
    if result.get("match"):
        mt = result["match"]
        notes.append(f"- matched: {mt['bins']} equal-width bins of the pooled test-target range; the common "
                     f"histogram holds {mt['overlap']:.0%} of each zoo's test nets; effective nets per zoo: "
                     + ", ".join(f"{z} {n:.0f}" for z, n in mt["n_eff"].items()))
    runs = pd.DataFrame(result["runs"], columns=["zoo", "metanet", "lr"])
    for z in result["zoos"]:
        lrs = ", ".join(f"{m} {g['lr'].iloc[0]:g}" for m, g in runs[runs.zoo == z["zoo"]].groupby("metanet", sort=False)
                        if _num(g["lr"].iloc[0]))
        chance = f", chance {z['chance']:.3g}" if z.get("chance") else ""
        notes.append(f"- {z['zoo']}: {z['n_train']}/{z['n_val']}/{z['n_test']} train/val/test nets, "
                     f"{z['num_inputs']} inputs, {z['diverged_excluded']} diverged nets excluded{chance}"
                     + (f"; lr: {lrs}" if lrs else ""))
    for r in s[s.view == "all"].itertuples() if len(s) else []:
        if r.note.startswith("n/a: "):
            notes.append(f"- n/a: {r.metanet} on {r.zoo}: {r.note[5:]}")
        elif r.note:
            notes.append(f"- {r.metanet} on {r.zoo}: {r.note}")
    return "\n\n".join(parts) + "\n\n" + "\n".join(notes) + "\n"


def _lr_choice(sweeps) -> str:
    """Validation R² of every rate (mean ± sample std over seeds), the chosen one in bold: how
    clear the choice was. A rate where a seed diverged shows how many did."""
    df = pd.DataFrame(sweeps)
    rates = sorted(df["lr"].unique())
    lines = ["**learning-rate choice** (validation R², mean ± sample std over seeds; **chosen**)", "",
             "| metanet | zoo | " + " | ".join(f"{r:g}" for r in rates) + " |",
             "| --- | --- |" + " --- |" * len(rates)]
    for (m, z), g in df.groupby(["metanet", "zoo"], sort=False):
        cells, means = {}, {}
        for r, gr in g.groupby("lr"):
            v = gr["val_r2"].astype(float)
            bad = int(((gr["status"] != "ok") | ~np.isfinite(v)).sum())
            if bad:
                cells[r] = f"{bad}/{len(gr)} diverged"
                continue
            means[r] = v.mean()
            cells[r] = f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else "")
        best = max(means, key=means.get) if means else None
        lines.append(f"| {m} | {z} | " + " | ".join(
            (f"**{cells[r]}**" if r == best else cells.get(r, "")) for r in rates) + " |")
    return "\n".join(lines)


def _per(v) -> str:
    """``20`` or ``{"*": 20, "dmc": 5}`` -> ``"20"`` / ``"20 (dmc 5)"``."""
    if not isinstance(v, dict):
        return str(v)
    rest = ", ".join(f"{k} {x}" for k, x in v.items() if k != "*")
    return f"{v.get('*')} ({rest})" if rest else str(v.get("*"))



def write(result: dict, out) -> dict:
    """Write every result file into ``out``; return name -> path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    body = strict_json({k: v for k, v in result.items() if k != "predictions"})
    write_json(out / "results.json", body)
    files["json"] = out / "results.json"
    pd.DataFrame(result["runs"]).to_csv(out / "results.csv", index=False)
    files["csv"] = out / "results.csv"
    summary(result).to_csv(out / "summary.csv", index=False)
    files["summary"] = out / "summary.csv"
    if result.get("comparisons"):
        pd.DataFrame(result["comparisons"]).to_csv(out / "comparisons.csv", index=False)
        files["comparisons"] = out / "comparisons.csv"
    (out / "results.md").write_text(markdown(result))
    files["md"] = out / "results.md"
    if result.get("predictions"):
        frames = [pd.DataFrame({"zoo": p["zoo"], "metanet": p["metanet"], "seed": p["seed"],
                                "model_id": p["model_id"], "target": p["target"], "prediction": p["prediction"]})
                  for p in result["predictions"]]
        pd.concat(frames, ignore_index=True).to_csv(out / "predictions.csv", index=False)
        files["predictions"] = out / "predictions.csv"
        files["scatter"] = plot_scatter(result, out / "pred_vs_true.png")
    if len(summary(result)):
        files["bars"] = plot_bars(result, out / "zoos_bar.png")
    return files



def plot_scatter(result: dict, path) -> Path:
    """Predicted vs true target on the test split, one panel per (metanet, zoo), seed 0."""
    plt = pyplot()
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
            r = s[(s.metanet == m) & (s.zoo == z) & (s.view == "all")].iloc[0]
            ax.set_title(f"{m} | {z} | seed 0\nR² {_fmt(r.r2_mean)}  τ {_fmt(r.tau_mean)} (seed mean)", fontsize=8)
            ax.set_xlabel(f"true {result['zoos'][j]['target']}", fontsize=8)
            ax.set_ylabel("predicted", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_bars(result: dict, path) -> Path:
    """Test R² and tau (seed mean, error bar = 95% bootstrap CI) of each metanet, one bar per zoo."""
    plt = pyplot()
    s = summary(result)
    s = s[s.view == "all"].astype({c: float for c in ("r2_mean", "r2_lo", "r2_hi", "tau_mean", "tau_lo", "tau_hi")})
    zoos = [z["zoo"] for z in result["zoos"]]
    mets = list(dict.fromkeys(s["metanet"]))
    x = np.arange(len(mets))
    width = 0.8 / max(1, len(zoos))
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(mets)) * 2 / 1.5, 3.6))
    for ax, (col, name) in zip(axes, (("r2", "test R²"), ("tau", "test Kendall τ"))):
        for k, z in enumerate(zoos):
            vals = [s[(s.metanet == m) & (s.zoo == z)] for m in mets]
            mean = np.array([v[f"{col}_mean"].iloc[0] if len(v) else np.nan for v in vals])
            lo = np.array([v[f"{col}_lo"].iloc[0] if len(v) else np.nan for v in vals])
            hi = np.array([v[f"{col}_hi"].iloc[0] if len(v) else np.nan for v in vals])
            err = np.nan_to_num(np.stack([mean - lo, hi - mean]).clip(0))
            ax.bar(x + (k - (len(zoos) - 1) / 2) * width, mean, width, yerr=err, capsize=3, label=z)
        ax.set_xticks(x, mets, fontsize=8)
        ax.set_title(f"{name} (95% CI)")
        ax.axhline(0, color="k", lw=0.6)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(zoos), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

