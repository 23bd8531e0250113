"""Summaries, paired comparisons, files (results.md/JSON/CSV, curves CSV) and plots of the
analyses, in the spirit of ``metanets bench``'s report: mean ± sample std and a 95%
bootstrap interval of the mean over pairs (LMC: over tuples, a tuple's pairs averaged first)
or nets (MLI)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..console import pyplot
from ..fs import strict_json, write_json, write_text
from . import metrics

LMC_COLS = [f"{b}_{m}" for m in ("loss", "err") for b in metrics.BARRIERS]
HEADLINE = "mid_loss"
MLI_COLS = ["delta", "monotonic", "local_convexity", "global_convexity", "min_second_diff", "acc_final"]


def _num(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _cell(s: dict, digits: int = 3, pct: bool = False) -> str:
    if not _num(s.get("mean")):
        return "n/a"
    f = (lambda v: f"{100 * v:.{max(0, digits - 2)}f}%") if pct else (lambda v: f"{v:.{digits}f}")
    text = f(s["mean"])
    if _num(s.get("std")):
        text += f" ± {f(s['std'])}"
    if _num(s.get("ci_low")):
        text += f" [{f(s['ci_low'])}, {f(s['ci_high'])}]"
    return text


# ------------------------------------------------------------------ LMC

def lmc_units(records: list[dict], col: str) -> dict:
    """(zoo, method) -> {tuple id: the mean of ``col`` over the tuple's pairs}."""
    df = pd.DataFrame(records)
    out = {}
    for (zoo, method), g in df.groupby(["zoo", "method"], sort=False):
        out[(zoo, method)] = g.groupby("pair")[col].mean().to_dict()
    return out


def lmc_summary(results: list[dict], B: int = 2000, seed: int = 0) -> list[dict]:
    rows = []
    for r in results:
        df = pd.DataFrame(r["records"])
        for method in r["methods"]:
            g = df[df.method == method]
            if g.empty:
                continue
            row = {"zoo": r["zoo"], "variant": r["variant"], "method": method,
                   "pairs": int(len(g)), "tuples": int(g["pair"].nunique())}
            per = g.groupby("pair")
            ends = per.apply(lambda x: np.mean([x["acc_a"].mean(), x["acc_b"].mean()]), include_groups=False)
            for k, v in metrics.summarize(ends.to_numpy(), B, seed).items():
                row[f"end_acc_{k}"] = v
            for col in LMC_COLS + (["max_abs_dlogits", "distance_before", "distance_after", "moved_channels"]
                                   if "max_abs_dlogits" in g else []):
                for k, v in metrics.summarize(per[col].mean().to_numpy(), B, seed).items():
                    row[f"{col}_{k}"] = v
            rows.append(row)
    return rows


def lmc_comparisons(results: list[dict], cols=(HEADLINE, "max_mean_loss", "mid_err"), B: int = 2000,
                    seed: int = 0) -> list[dict]:
    """Each (zoo, method) against the first: paired over tuple ids when both zoos' tuples have
    the same hyper-parameters (same spec seed and recipe, or one zoo with and without
    alignment), else unpaired."""
    keys = [(r["zoo"], m) for r in results for m in r["methods"]]
    if len(keys) < 2:
        return []
    hp = {r["zoo"]: r["hparams"] for r in results}
    recs = [x for r in results for x in r["records"]]
    ref = keys[0]
    out = []
    for key in keys[1:]:
        common = set(hp[ref[0]]) & set(hp[key[0]])
        paired = bool(common) and all(_close(hp[ref[0]][p], hp[key[0]][p]) for p in common)
        row = {"reference": f"{ref[0]} ({ref[1]})", "versus": f"{key[0]} ({key[1]})", "paired": paired}
        for col in cols:
            units = lmc_units(recs, col)
            a, b = units[ref], units[key]
            d = metrics.paired_diff(a, b, B, seed) if paired else \
                metrics.unpaired_diff(list(a.values()), list(b.values()), B, seed)
            row.update({f"{col}_diff": d["mean"], f"{col}_lo": d["ci_low"], f"{col}_hi": d["ci_high"],
                        "matched": d.get("matched", 0)})
        out.append(row)
    return out


def _close(x: dict, y: dict) -> bool:
    return set(x) == set(y) and all(abs(x[k] - y[k]) <= 1e-9 * max(1.0, abs(x[k])) for k in x)


def _sub(row: dict, col: str) -> dict:
    return {k: row.get(f"{col}_{k}") for k in ("mean", "std", "ci_low", "ci_high", "n")}


def lmc_markdown(results, summary, comparisons, command: str = "") -> str:
    lines = ["# Linear mode connectivity", ""]
    if command:
        lines += [f"`{command}`", ""]
    a = results[0]["alphas"]
    lines += [f"Test-split loss and error (1 - accuracy) along {len(a)} points alpha in [0, 1] between the two "
              "nets of each pair. Barriers: **mid** = L(1/2) - (L(0) + L(1))/2 (the paper's), max_mean = "
              "max L - (L(0) + L(1))/2 (Git Re-Basin's), max_chord = max [L(alpha) - chord]. "
              "Cells: mean ± sample std [95% bootstrap CI of the mean] over tuples.", "",
              "| zoo | variant | method | pairs | endpoint acc | **mid (loss)** | max_mean (loss) | max_chord (loss) "
              "| mid (error) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary:
        lines.append(f"| {r['zoo']} | {r['variant']} | {r['method']} | {r['pairs']} | {_cell(_sub(r, 'end_acc'))} "
                     f"| **{_cell(_sub(r, 'mid_loss'))}** | {_cell(_sub(r, 'max_mean_loss'))} "
                     f"| {_cell(_sub(r, 'max_chord_loss'))} | {_cell(_sub(r, 'mid_err'))} |")
    aligned = [r for r in summary if _num(r.get("max_abs_dlogits_mean"))]
    if aligned:
        lines += ["", "Weight matching: L2 distance between the nets before and after, channels of B that moved, "
                  "and the function check (max |dlogits| between net B and permuted B on 256 test images; "
                  "largest over pairs).", "",
                  "| zoo | method | distance before | distance after | channels moved | max abs dlogits |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in aligned:
            lines.append(f"| {r['zoo']} | {r['method']} | {_cell(_sub(r, 'distance_before'), 2)} "
                         f"| {_cell(_sub(r, 'distance_after'), 2)} | {_cell(_sub(r, 'moved_channels'), 1)} "
                         f"| {_max_dlogits(results, r):.2g} |")
    if comparisons:
        lines += ["", f"Differences against {comparisons[0]['reference']} (versus minus reference; 95% bootstrap "
                  "CI; paired over tuples with the same hyper-parameters where the zoos have them).", "",
                  "| versus | paired | mid (loss) | max_mean (loss) | mid (error) |", "| --- | --- | --- | --- | --- |"]
        for c in comparisons:
            lines.append(f"| {c['versus']} | {'yes (' + str(c['matched']) + ')' if c['paired'] else 'no'} | "
                         + " | ".join(_diff(c, k) for k in (HEADLINE, "max_mean_loss", "mid_err")) + " |")
    notes = [n for r in results for n in r.get("notes", [])]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _max_dlogits(results, row) -> float:
    return max(x["max_abs_dlogits"] for r in results for x in r["records"]
               if x["zoo"] == row["zoo"] and x["method"] == row["method"])


def _diff(c, k) -> str:
    if not _num(c.get(f"{k}_diff")):
        return "n/a"
    ci = f" [{c[f'{k}_lo']:+.3f}, {c[f'{k}_hi']:+.3f}]" if _num(c.get(f"{k}_lo")) else ""
    return f"{c[f'{k}_diff']:+.3f}{ci}"


def write_lmc(results: list[dict], out, command: str = "", B: int = 2000, seed: int = 0) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = lmc_summary(results, B, seed)
    comparisons = lmc_comparisons(results, B=B, seed=seed)
    files = {}
    write_json(out / "results.json", strict_json({"command": command, "summary": summary, "comparisons": comparisons,
                                              "results": [{k: v for k, v in r.items() if k != "curves"}
                                                          for r in results]}))
    files["json"] = out / "results.json"
    pd.DataFrame(summary).to_csv(out / "summary.csv", index=False)
    pd.DataFrame([x for r in results for x in r["records"]]).to_csv(out / "pairs.csv", index=False)
    _curves_frame([c for r in results for c in r["curves"]]).to_csv(out / "curves.csv", index=False)
    files.update(summary=out / "summary.csv", pairs=out / "pairs.csv", curves=out / "curves.csv")
    if comparisons:
        pd.DataFrame(comparisons).to_csv(out / "comparisons.csv", index=False)
        files["comparisons"] = out / "comparisons.csv"
    md = lmc_markdown(results, summary, comparisons, command)
    write_text(out / "results.md", md)
    files["md"] = out / "results.md"
    files["curves_png"] = plot_curves([c for r in results for c in r["curves"]], out / "curves.png",
                                      key=("zoo", "method"), panels=(("loss", "test loss"), ("err", "test error")))
    files["barriers_png"] = plot_bars(summary, out / "barriers.png", key=("zoo", "method"),
                                      cols=((HEADLINE, "midpoint barrier (test loss)"),
                                            ("max_mean_loss", "max - endpoint mean (test loss)"),
                                            ("mid_err", "midpoint barrier (test error)")))
    return {"summary": summary, "comparisons": comparisons, "markdown": md, "files": files}


def _curves_frame(curves: list[dict]) -> pd.DataFrame:
    rows = []
    for c in curves:
        ident = {k: v for k, v in c.items() if k not in ("alpha", "loss", "acc")}
        for a, lo, ac in zip(c["alpha"], c["loss"], c["acc"]):
            rows.append({**ident, "alpha": a, "loss": lo, "acc": ac})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ MLI

def mli_summary(results: list[dict], B: int = 2000, seed: int = 0) -> list[dict]:
    rows = []
    for r in results:
        df = pd.DataFrame(r["records"])
        row = {"zoo": r["zoo"], "variant": r["variant"], "nets": int(len(df))}
        for col in MLI_COLS:
            for k, v in metrics.summarize(df[col].astype(float).to_numpy(), B, seed).items():
                row[f"{col}_{k}"] = v
        rows.append(row)
    return rows


def mli_comparisons(results: list[dict], cols=("delta", "monotonic", "global_convexity"), B: int = 2000,
                    seed: int = 0) -> list[dict]:
    """Each zoo against the first (unpaired: the nets of two zoos are independent draws)."""
    out = []
    ref = results[0]
    for r in results[1:]:
        row = {"reference": ref["zoo"], "versus": r["zoo"]}
        for col in cols:
            d = metrics.unpaired_diff([x[col] for x in ref["records"]], [x[col] for x in r["records"]], B, seed)
            row.update({f"{col}_diff": d["mean"], f"{col}_lo": d["ci_low"], f"{col}_hi": d["ci_high"]})
        out.append(row)
    return out


def mli_markdown(results, summary, comparisons, command: str = "") -> str:
    r0 = results[0]
    chord = "through the first two points, as upstream (--upstream-compat)" if r0["upstream_compat"] \
        else "from (0, L(0)) to (1, L(1))"
    lines = ["# Monotonic linear interpolation", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += [f"Train loss (plain cross-entropy, {r0['subset']} fixed unaugmented training images) along "
              f"{len(r0['alphas'])} points from each net's epoch-0 weights to its final ones. Δ = largest one-step "
              f"increase; monotonic = Δ <= {r0['tol']:g}; local convexity = share of interior points with second "
              f"difference >= 0; global convexity = share of interior points on or below the chord {chord}. "
              "Cells: mean ± sample std [95% bootstrap CI of the mean] over nets.", "",
              "| zoo | variant | nets | final acc (train subset) | Δ | % monotonic | local convexity "
              "| global convexity | min second diff |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary:
        mono = _sub(r, "monotonic")
        mono_text = f"{100 * mono['mean']:.0f}% [{100 * mono['ci_low']:.0f}, {100 * mono['ci_high']:.0f}]" \
            if _num(mono["ci_low"]) else (f"{100 * mono['mean']:.0f}%" if _num(mono["mean"]) else "n/a")
        lines.append(f"| {r['zoo']} | {r['variant']} | {r['nets']} | {_cell(_sub(r, 'acc_final'))} | "
                     f"{_cell(_sub(r, 'delta'), 4)} | {mono_text} | {_cell(_sub(r, 'local_convexity'))} | "
                     f"{_cell(_sub(r, 'global_convexity'))} | {_cell(_sub(r, 'min_second_diff'), 2)} |")
    if comparisons:
        lines += ["", f"Differences against {comparisons[0]['reference']} (versus minus reference; unpaired 95% "
                  "bootstrap CI).", "", "| versus | Δ | monotonic (fraction) | global convexity |",
                  "| --- | --- | --- | --- |"]
        for c in comparisons:
            lines.append(f"| {c['versus']} | " + " | ".join(_diff(c, k) for k in ("delta", "monotonic",
                                                                                   "global_convexity")) + " |")
    notes = [n for r in results for n in r.get("notes", [])]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_mli(results: list[dict], out, command: str = "", B: int = 2000, seed: int = 0) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = mli_summary(results, B, seed)
    comparisons = mli_comparisons(results, B=B, seed=seed)
    write_json(out / "results.json", strict_json({"command": command, "summary": summary, "comparisons": comparisons,
                                              "results": [{k: v for k, v in r.items() if k != "curves"}
                                                          for r in results]}))
    pd.DataFrame(summary).to_csv(out / "summary.csv", index=False)
    pd.DataFrame([x for r in results for x in r["records"]]).to_csv(out / "nets.csv", index=False)
    _curves_frame([c for r in results for c in r["curves"]]).to_csv(out / "curves.csv", index=False)
    md = mli_markdown(results, summary, comparisons, command)
    write_text(out / "results.md", md)
    files = {"json": out / "results.json", "summary": out / "summary.csv", "nets": out / "nets.csv",
             "curves": out / "curves.csv", "md": out / "results.md"}
    files["curves_png"] = plot_curves([c for r in results for c in r["curves"]], out / "curves.png", key=("zoo",),
                                      panels=(("loss", "train loss (init -> final)"),))
    files["bars_png"] = plot_bars(summary, out / "mli.png", key=("zoo",),
                                  cols=(("delta", "Δ (largest one-step increase)"), ("monotonic", "fraction monotonic"),
                                        ("global_convexity", "global convexity")))
    return {"summary": summary, "comparisons": comparisons, "markdown": md, "files": files}


# ------------------------------------------------------------------ align

def align_markdown(results: list[dict], command: str = "") -> str:
    lines = ["# Weight matching", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += ["Per pair: L2 distance between the nets before and after permuting B onto A, the matching "
              "objective sum <W_a, P W_b> before and after, coordinate-descent sweeps, and max |dlogits| "
              "between B and permuted B on 256 test images (the function check).", "",
              "| zoo | pair | a | b | distance before | distance after | objective before | objective | sweeps "
              "| max abs dlogits |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for x in r["records"]:
            lines.append(f"| {x['zoo']} | {x['pair']} | {x['a']} | {x['b']} | {x['distance_before']:.3f} | "
                         f"{x['distance_after']:.3f} | {x['objective_before']:.4g} | {x['objective']:.4g} | "
                         f"{x['sweeps']} | {x['max_abs_dlogits']:.2g} |")
    return "\n".join(lines) + "\n"


def write_align(results: list[dict], out, command: str = "") -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([x for r in results for x in r["records"]]).to_csv(out / "align.csv", index=False)
    md = align_markdown(results, command)
    write_text(out / "results.md", md)
    write_json(out / "results.json", strict_json({"command": command, "results": results}))
    return {"markdown": md, "files": {"csv": out / "align.csv", "md": out / "results.md",
                                      "json": out / "results.json"}}


# ------------------------------------------------------------------ plots


def plot_curves(curves: list[dict], path, key, panels) -> Path:
    """Mean curve per group (``key`` fields) with its pointwise 95% bootstrap band."""
    plt = pyplot()
    groups: dict = {}
    for c in curves:
        groups.setdefault(tuple(c[k] for k in key), []).append(c)
    rows = -(-len(groups) // 2)  # legend rows, under the panels
    height = 3.8 + 0.18 * rows + 0.1
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), height), squeeze=False)
    for ax, (field, title) in zip(axes[0], panels):
        for g, cs in groups.items():
            a = np.asarray(cs[0]["alpha"])
            y = np.array([1 - np.asarray(c["acc"]) if field == "err" else c[field] for c in cs])
            mean, lo, hi = metrics.band(y)
            (line,) = ax.plot(a, mean, label=" / ".join(map(str, g)) + f" (n={len(cs)})")
            ax.fill_between(a, lo, hi, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("alpha")
        ax.set_title(f"{title}: mean, 95% CI band", fontsize=9)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, (0.18 * rows + 0.1) / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_bars(summary: list[dict], path, key, cols) -> Path:
    """One bar per row of ``summary`` for each metric, error bars = 95% bootstrap CI."""
    plt = pyplot()
    labels = ["\n".join(str(r[k]) for k in key) for r in summary]
    fig, axes = plt.subplots(1, len(cols), figsize=(max(4.0, 1.3 * len(summary)) * len(cols) / 1.4, 3.8),
                             squeeze=False)
    x = np.arange(len(summary))
    for ax, (col, title) in zip(axes[0], cols):
        mean = np.array([r.get(f"{col}_mean", np.nan) for r in summary], dtype=float)
        lo = np.array([r.get(f"{col}_ci_low", np.nan) for r in summary], dtype=float)
        hi = np.array([r.get(f"{col}_ci_high", np.nan) for r in summary], dtype=float)
        err = np.nan_to_num(np.stack([mean - lo, hi - mean]).clip(0))
        ax.bar(x, mean, yerr=err, capsize=3, color=[f"C{i}" for i in range(len(summary))])
        ax.set_xticks(x, labels, fontsize=6)
        ax.set_title(f"{title} (95% CI)", fontsize=9)
        ax.axhline(0, color="k", lw=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


