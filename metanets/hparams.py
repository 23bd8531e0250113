"""The ``hparams`` control: gradient boosting on a net's sampled hyper-parameters, no weights.

A zoo's nets differ in accuracy mostly because they were trained differently (learning
rate, epochs, ...). A metanet that cannot beat a predictor reading only those settings
from the zoo table has not shown that it reads the weights. Zoos without hyper-parameter
columns (imported or synthetic ones) give a clear "n/a" instead of a score.
"""
from __future__ import annotations

import numpy as np
import torch

from .data import InputInfo, WeightSet
from .errors import MetanetError
from .gbm import StatGBM
from .registry import register


class NotApplicable(MetanetError):
    """A metanet that cannot run on this zoo at all (reported as n/a with this reason)."""


def hparam_table(ws: WeightSet) -> tuple[list[str], dict]:
    """``(column names, split -> [n, k] float32 tensor)`` of the hyper-parameters that vary.

    The columns are the zoo's own hyper-parameters (``Zoo.hparam_columns``: its spec's, or an
    imported table's). Numbers as they are, booleans as 0/1, strings (optimizer, activation,
    initialiser) one-hot; columns constant over the whole zoo carry no information and are
    dropped."""
    cached = getattr(ws, "_hparams", None)
    if cached is not None:
        return cached
    from .data import open_zoo

    z = open_zoo(ws.path)
    table = z.table.set_index("model_id")
    sampled = z.hparam_columns  # every hyper-parameter of the zoo's own spec, any architecture
    z.close()
    cols, names = [], []
    for k in sampled:
        if table[k].nunique(dropna=False) < 2:
            continue
        v = table[k]
        if v.dtype == object or isinstance(v.iloc[0], str):
            for cat in sorted(v.astype(str).unique()):
                cols.append((v.astype(str) == cat).to_numpy(np.float32))
                names.append(f"{k}={cat}")
        else:
            cols.append(v.to_numpy(np.float64).astype(np.float32))
            names.append(k)
    if not cols:
        raise NotApplicable(f"{ws.path}: the zoo table has no hyper-parameter columns that vary "
                            f"(looked for {', '.join(sampled) or 'none: no spec and no such column'})")
    x = np.stack(cols, 1)
    row = {int(m): i for i, m in enumerate(table.index)}
    out = {s: torch.from_numpy(x[[row[int(m)] for m in ws.ids(s)]]) for s in ("train", "val", "test")}
    ws._hparams = (names, out)
    return ws._hparams


def hparam_features(ws: WeightSet, split: str) -> torch.Tensor:
    return hparam_table(ws)[1][split]


@register("hparams")
class HParamsGBM(StatGBM):
    """``[N, k]`` sampled hyper-parameters -> ``[N]`` with histogram gradient boosting.

    The same estimator as ``statnn-gbm``, so the two differ only in what they read."""

    description = "control: gradient boosting on the sampled hyper-parameters only (reads no weights)"
    view = "hparams"
    kind = "sklearn"

    def __init__(self, info: InputInfo, max_iter: int = 300, learning_rate: float = 0.1):
        super().__init__(info, max_iter, learning_rate)
