"""The one bootstrap every CI in editscale comes from: cases resampled with replacement, seeded,
and the percentile 95% interval of a statistic's replicates.

Conditions scored on the same cases share one resampling (the same `resample` rows), so a paired
difference's CI reflects only how the conditions differ on the same facts.
"""

from __future__ import annotations

import numpy as np


def resample(n_cases: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_cases) case indices: each row one resample of the cases, with replacement."""
    return np.random.default_rng(seed).integers(0, n_cases, size=(n_boot, n_cases))


def interval(replicates) -> tuple[float, float]:
    """The percentile 95% CI of a statistic's bootstrap replicates (n_boot,). A replicate that is NaN
    (a resample holding no case of an optional metric) is left out, not propagated."""
    low, high = np.nanpercentile(np.asarray(replicates, dtype=float), [2.5, 97.5])
    return float(low), float(high)
