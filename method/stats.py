"""Paired statistics of a variant against the image-only baseline: pure NumPy, no I/O.

On the same n images, let b count the images the baseline gets right and the variant wrong, and c
the reverse. Everything here depends on (n, b, c) only:

- gain in top-1 points: 100 (c - b) / n;
- McNemar's exact test: under H0 a discordant image is equally likely to favour either side, so
  min(b, c) ~ Binomial(b + c, 1/2) and p = min(1, 2 P[X <= min(b, c)]);
- the paired bootstrap: resampling n images with replacement draws how many of them are
  baseline-only hits (B_b), variant-only hits (B_c) and the rest from
  Multinomial(n; b/n, c/n, 1 - (b + c)/n), and the resampled gain is 100 (B_c - B_b) / n. That is
  exactly the image-level bootstrap, at O(resamples) cost whatever n is. The interval is the
  percentile interval of the resampled gains.

The SQL view `gains` (storage/analysis.py) computes the same McNemar p-value in DuckDB.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

RESAMPLES = 10_000
LEVEL = 0.95


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c."""
    m, k = b + c, min(b, c)
    if m == 0:
        return 1.0
    log_half = m * math.log(0.5)
    # log C(m, i) via lgamma: exact enough for millions of discordant pairs, no overflow
    terms = [
        math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) + log_half for i in range(k + 1)
    ]
    top = max(terms)
    tail = math.exp(top) * math.fsum(math.exp(t - top) for t in terms)
    return min(1.0, 2.0 * tail)


def run_seed(seed: int, key: Iterable[object]) -> list[int]:
    """A seed of its own per compared pair (run keys and components): a pair's interval does not
    depend on which other pairs are in the query, and different pairs draw independent streams."""
    return [seed, zlib.crc32("\x1f".join(map(str, key)).encode())]


def bootstrap_gains(
    n: int, b: int, c: int, resamples: int = RESAMPLES, seed: Sequence[int] | int = 0
) -> np.ndarray:
    """`resamples` paired-bootstrap draws of the gain in points (see the module docstring)."""
    if n <= 0:
        return np.full(resamples, np.nan)
    if b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need 0 <= b, c and b + c <= n, got n={n}, b={b}, c={c}")
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, [b / n, c / n, max(0.0, 1.0 - (b + c) / n)], size=resamples)
    return 100.0 * (draws[:, 1] - draws[:, 0]) / n


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    if np.isnan(draws).any():
        return float("nan"), float("nan")
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def paired_bootstrap_ci(
    n: int, b: int, c: int, resamples: int = RESAMPLES, seed: Sequence[int] | int = 0, level: float = LEVEL
) -> tuple[float, float]:
    """The 95% (by default) paired-bootstrap percentile interval of the gain in points."""
    return percentile_interval(bootstrap_gains(n, b, c, resamples, seed), level)


def average_gain_ci(draws: Sequence[np.ndarray], level: float = LEVEL) -> tuple[float, float]:
    """Interval of the mean gain over datasets, each resampled independently (stratified bootstrap):
    the mean of the datasets' draws, resample by resample."""
    return percentile_interval(np.mean(np.stack(draws), axis=0), level)
