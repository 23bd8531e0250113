"""StatNN-GBM: StatNN's statistics into scikit-learn's gradient boosting.

Unterthiner et al.'s strongest accuracy predictor, kept as a non-neural baseline: it
needs no learning-rate sweep and no GPU."""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits

from ..data import InputInfo
from ._registry import register


@register("statnn-gbm")
class StatGBM:
    """``[N, T, 7]`` statistics -> ``[N]`` with histogram gradient boosting.

    ``fit(x, y, seed)`` / ``predict(x)`` on numpy arrays or CPU tensors. The boosting
    learning rate is the estimator's (0.1); the benchmark's lr sweep does not apply."""

    description = "StatNN's statistics into scikit-learn gradient boosting (non-neural baseline)"
    view = "stats"
    kind = "sklearn"

    def __init__(self, info: InputInfo, max_iter: int = 300, learning_rate: float = 0.1):
        self.info = info
        self.max_iter, self.learning_rate = max_iter, learning_rate
        self.model = None

    def fit(self, x, y, seed: int = 0) -> "StatGBM":
        # Row subsampling is off in HistGradientBoosting; the seed only matters through ties,
        # so different seeds may give identical models (std 0 in the table is expected).
        self.model = HistGradientBoostingRegressor(max_iter=self.max_iter, learning_rate=self.learning_rate,
                                                   early_stopping=False, random_state=seed)
        x = _flat(x)
        # On small inputs OpenMP threads buy nothing, and on a busy machine their barriers
        # made a 0.3 s fit take 4 s (measured on 2 cores): use one thread there.
        threads = 1 if x.size < 1_000_000 else None
        with threadpool_limits(limits=threads, user_api="openmp"):
            self.model.fit(x, np.asarray(y, np.float64))
        return self

    def predict(self, x) -> np.ndarray:
        x = _flat(x)
        with threadpool_limits(limits=1 if x.size < 1_000_000 else None, user_api="openmp"):
            return self.model.predict(x).astype(np.float32)

    def num_parameters(self) -> int:
        """Number of tree nodes (the closest analogue of a parameter count)."""
        return int(sum(p.nodes.shape[0] for preds in self.model._predictors for p in preds))


def _flat(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return x.reshape(len(x), -1)
