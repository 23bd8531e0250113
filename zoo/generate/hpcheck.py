"""Does a zoo's hyper-parameter table match a spec's distributions?

The Small CNN Zoo presets quote their ranges from Unterthiner et al. (2020); the
hyper-parameters actually used ship with the zoo (``metrics.csv.gz``, ``config.*``
columns, kept by the importer). Comparing the two checks a preset against the data it
imitates, not against a reading of the paper: 30,000 runs per dataset span the sampled
ranges to within a fraction of a percent.

``compare(table, spec)`` gives one :class:`Row` per hyper-parameter the spec samples:
the spec's support, what the zoo holds, and a verdict -- ``ok`` (inside the support and
covering it), ``narrower`` (inside, but the zoo's runs leave part of the support unused:
so unlikely for that many draws from the spec that the runs were drawn from a narrower
range), ``OUTSIDE`` (the zoo holds values the spec
cannot draw), ``missing`` (no such column), ``unmodelled`` (a column of ``config`` that
varies across the zoo's runs although the spec does not sample it).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .spec import Dist, ZooSpec, presets

#: Upstream column names of the Small CNN Zoo (``config.`` stripped) -> our hyper-parameter names.
SMALLCNNZOO_NAMES = {"learning_rate": "lr", "l2reg": "weight_decay"}
#: The ``config.*`` columns upstream's README lists (``config.`` stripped), but the random seed:
#: one that varies across runs but that the spec does not sample is reported (``unmodelled``).
SMALLCNNZOO_CONFIG = ("activation", "b_init", "dataset", "dnn_architecture", "dropout", "epochs",
                      "epochs_between_checkpoints", "init_std", "l2reg", "learning_rate", "num_layers",
                      "num_units", "optimizer", "train_fraction", "w_init")


def smallcnnzoo_preset(dataset: str | None) -> str | None:
    """The preset imitating the Small CNN Zoo on ``dataset`` (upstream's TFDS name), if any."""
    name = f"smallcnnzoo-{ {'svhn_cropped': 'svhn'}.get(str(dataset), dataset) }"
    return name if name in presets() else None


#: ``narrower`` when the runs cover so little of the support (or leave a choice unused) that
#: draws from the spec would do so with at most this probability: a small zoo is not flagged
#: for the gaps any small sample has.
P_NARROWER = 1e-3


def p_coverage_below(c: float, n: int) -> float:
    """P(the range of ``n`` uniform draws on [0, 1] is at most ``c``): n c^(n-1) - (n-1) c^n.
    The same for log-uniform draws on the log scale."""
    if n < 2:
        return 1.0
    c = min(max(c, 0.0), 1.0)
    return n * c ** (n - 1) - (n - 1) * c ** n


def p_value_unused(k: int, n: int) -> float:
    """P(a given one of ``k`` equally likely choices is never drawn in ``n`` draws)."""
    return (1 - 1 / k) ** n


@dataclass
class Row:
    name: str
    spec: str  # the spec's distribution, in words
    zoo: str  # what the zoo holds, in words
    coverage: float | None  # fraction of a numeric support the zoo spans (None for choices)
    verdict: str
    detail: str = ""


def _snake(value) -> str:
    """'RandomNormal' -> 'random_normal' (Keras class names vs. their function names)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(value)).lower()


def _words(dist) -> str:
    """A sampled (non-constant) distribution in words, as the table prints it."""
    if dist.kind == "choice":
        return "one of " + ", ".join(str(v) for v in dist.params["values"])
    lo, hi = sorted(float(v) for v in dist.support())
    kind = {"loguniform": "log-uniform", "pow10": "log-uniform", "randint": "integers"}.get(dist.kind, dist.kind)
    return f"{kind} [{_fmt(lo)}, {_fmt(hi)}]"


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _numeric(name: str, dist, values: np.ndarray) -> Row:
    lo, hi = sorted(float(v) for v in dist.support())
    log = dist.kind in ("loguniform", "pow10")
    vmin, vmax = float(values.min()), float(values.max())
    spec_s = _words(dist)
    zoo_s = f"[{_fmt(vmin)}, {_fmt(vmax)}] over {len(values)} runs"
    tol = 1e-9 * max(abs(lo), abs(hi), 1e-300)  # float text round trips
    outside = values[(values < lo - tol) | (values > hi + tol)]
    if len(outside):
        far = outside[np.argmax(np.maximum(lo - outside, outside - hi))]
        return Row(name, spec_s, zoo_s, None, "OUTSIDE",
                   f"{len(outside)} of {len(values)} runs outside the spec's range (e.g. {_fmt(far)})")
    if lo == hi:
        return Row(name, spec_s, zoo_s, 1.0, "ok")
    if log and lo > 0:
        cov = (math.log(vmax) - math.log(vmin)) / (math.log(hi) - math.log(lo))
    else:
        cov = (vmax - vmin) / (hi - lo)
    p = p_coverage_below(cov, len(values))
    if p < P_NARROWER:
        return Row(name, spec_s, zoo_s, cov, "narrower",
                   f"the zoo's {len(values)} runs span {cov:.0%} of the spec's range (p = {p:.1g} for draws "
                   "from the spec): they were drawn from a narrower range")
    return Row(name, spec_s, zoo_s, cov, "ok")


def _choice(name: str, dist, values: pd.Series) -> Row:
    allowed = [str(v) for v in dist.params["values"]]
    norm = {_snake(v): v for v in allowed}
    counts = values.astype(str).map(lambda v: _snake(v)).value_counts()
    spec_s = _words(dist)
    zoo_s = ", ".join(f"{k} ({n})" for k, n in counts.items())
    extra = [k for k in counts.index if k not in norm]
    unused = [v for k, v in norm.items() if k not in counts.index]
    if extra:
        return Row(name, spec_s, zoo_s, None, "OUTSIDE",
                   f"the zoo uses {', '.join(extra)}, which the spec cannot draw")
    p = p_value_unused(len(norm), len(values))
    if unused and p < P_NARROWER:
        return Row(name, spec_s, zoo_s, None, "narrower",
                   f"the spec also draws {', '.join(unused)}, which none of the zoo's {len(values)} runs used "
                   f"(p = {p:.1g} for draws from the spec)")
    return Row(name, spec_s, zoo_s, None, "ok")


def _numeric_choice(dist) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in dist.params["values"])


def compare(table: pd.DataFrame, spec: ZooSpec, names: dict | None = None, config: tuple = ()) -> list[Row]:
    """One :class:`Row` per hyper-parameter ``spec`` samples, against the zoo ``table``.

    ``names`` maps the table's column names to ours (e.g. :data:`SMALLCNNZOO_NAMES`);
    ``config``: the table's hyper-parameter columns (e.g. :data:`SMALLCNNZOO_CONFIG`), each
    reported when it varies but the spec does not sample it. Every run in the table counts,
    diverged ones too (they were drawn from the same distributions; the Small CNN Zoo importer
    drops runs cut short by NaN, so those are not in its table)."""
    names = names or {}
    cols = {names.get(c, c): c for c in table.columns}
    sampled = {n: d for n, d in spec.hparams.items() if d.kind != "constant"}
    rows = []
    for name, dist in sampled.items():
        if name not in cols:
            rows.append(Row(name, _words(dist), "-", None, "missing", "the zoo's table has no such column"))
            continue
        col = table[cols[name]]
        if dist.kind != "choice":
            values = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
            bad = col[~np.isfinite(values)]
            if len(bad):
                rows.append(Row(name, _words(dist), f"{len(bad)} non-numeric values", None, "OUTSIDE",
                                f"value {bad.iloc[0]!r} is not a number"))
                continue
            rows.append(_numeric(name, dist, values))
        elif _numeric_choice(dist):  # e.g. train fraction {0.1, 0.25, 0.5, 1}
            values = pd.to_numeric(col, errors="coerce")
            text = values.map(lambda v: f"{v:g}").where(values.notna(), col.astype(str))
            rows.append(_choice(name, _as_text(dist), text))
        else:
            rows.append(_choice(name, dist, col))
    for c in config:
        if c in table.columns and names.get(c, c) not in sampled and table[c].nunique(dropna=False) > 1:
            counts = table[c].astype(str).value_counts()
            rows.append(Row(names.get(c, c), "not sampled", ", ".join(f"{k} ({n})" for k, n in
                                                                               counts.head(6).items()),
                            None, "unmodelled", f"the zoo's runs use {len(counts)} values; the spec uses one"))
    return rows


def _as_text(dist):
    """A numeric choice with its values as ``%g`` text (0.25 and '0.25' compare equal)."""
    return Dist("choice", {"values": [f"{float(v):g}" for v in dist.params["values"]]})


def format_rows(rows: list[Row]) -> str:
    """A plain-text table, one line per hyper-parameter, then the details of what differs."""
    head = ("hyper-parameter", "spec", "zoo", "coverage", "verdict")
    body = [(r.name, r.spec, r.zoo, "" if r.coverage is None else f"{r.coverage:.0%}", r.verdict) for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(str(x[i]).ljust(widths[i]) for i in range(len(head))).rstrip() for x in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"  {r.name}: {r.detail}" for r in rows if r.detail]
    return "\n".join(lines)
