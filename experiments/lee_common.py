"""Small pieces shared by the Lee et al. 2019 experiment modules."""
from __future__ import annotations

import numpy as np


def record_steps(steps: int, points: int) -> np.ndarray:
    """0, then about `points` log-spaced step counts up to `steps` (integers, unique)."""
    grid = np.unique(np.round(np.geomspace(1, steps, max(2, points))).astype(int))
    return np.concatenate([[0], grid])


def rmse(a, b) -> float:
    """Root mean squared difference in float64 (NaN when either side diverged)."""
    with np.errstate(all="ignore"):
        return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))
