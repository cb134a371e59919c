"""Population stability (PSI) of a feature or of the model's predictions against the training
reference, with a threshold calibrated to the sample sizes.

PSI = sum over bins of (a - e) * ln(a / e), bins being deciles of the reference. With n
reference and m current values drawn from the same distribution, PSI / (1/n + 1/m) is close
to chi-square with bins - 1 degrees of freedom, so a fixed rule of thumb (0.1, 0.25) fires on
noise for small samples and misses real shifts only for tiny ones. The threshold here is the
larger of that chi-square bound at `alpha` and a materiality floor (a shift too small to
matter, however significant a large sample makes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MATERIAL_PSI = 0.02  # below this no shift is worth an alert, whatever the sample size


@dataclass(frozen=True)
class Drift:
    psi: float
    threshold: float
    n_reference: int
    n_current: int

    @property
    def drifted(self) -> bool:
        return self.psi > self.threshold


def psi(reference: Sequence[float], current: Sequence[float], *, bins: int = 10) -> float:
    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    actual = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1) / len(cur)
    eps = 0.5 / max(len(ref), len(cur))  # an empty bin must not make the sum infinite
    expected, actual = np.clip(expected, eps, None), np.clip(actual, eps, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_threshold(n_reference: int, n_current: int, *, bins: int = 10, alpha: float = 0.01) -> float:
    from scipy.stats import chi2

    return max(MATERIAL_PSI, float(chi2.ppf(1 - alpha, bins - 1)) * (1 / n_reference + 1 / n_current))


def drift(
    reference: Sequence[float], current: Sequence[float], *, bins: int = 10, alpha: float = 0.01
) -> Drift:
    if len(reference) < bins * 5 or len(current) < bins * 5:
        raise ValueError(
            f"PSI needs at least {bins * 5} values on each side; got {len(reference)} and {len(current)}"
        )
    return Drift(
        psi(reference, current, bins=bins),
        psi_threshold(len(reference), len(current), bins=bins, alpha=alpha),
        len(reference),
        len(current),
    )
