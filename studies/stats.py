"""The statistics of a study's report that five seeds can bear (numpy only; no plotting, no records).

Why these and not only rliable's bootstrap intervals: with 5 runs per arm a 95 % percentile-bootstrap interval
covers the true mean far less often than 95 % (``python bench/bootstrap_coverage.py`` measures how often), and a
probability of improvement of 1 gives the degenerate interval [1, 1], which is not certainty. So beside each interval
the report gives exact tests, whose p-values hold at any sample size:

- :func:`exact_improvement_p`: the two-sided exact permutation p-value of P(X > Y) (the Mann-Whitney statistic,
  ties counted half) under "X and Y come from one distribution", over every way of splitting the pooled runs into
  groups of the original sizes (252 splits for 5 against 5; the smallest possible p is 2/252 ~ 0.008);
- :func:`paired_difference`: where runs are paired (the same seed gives both arms the same initial parameters and
  the same evaluation episodes), the mean per-seed difference and its exact two-sided sign-flip p-value over every
  assignment of signs (32 for 5 pairs; the smallest possible p is 2/32 = 0.0625: five pairs can never reach 0.05);
- :func:`holm`: Holm's step-down adjustment of the p-values of one table (family-wise error rate).
"""

from __future__ import annotations

import itertools
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

#: enumerate every split / sign assignment up to this many; beyond it, this many random ones (seeded)
EXACT_LIMIT = 200_000


def improvement(x: Sequence[float], y: Sequence[float]) -> float:
    """P(X > Y) + P(X = Y) / 2 over all pairs of a run of ``x`` and a run of ``y`` (rliable's probability of
    improvement for one task; the Mann-Whitney U of ``x`` divided by ``len(x) * len(y)``)."""
    a, b = np.asarray(x, dtype=float)[:, None], np.asarray(y, dtype=float)[None, :]
    return float(((a > b) + 0.5 * (a == b)).mean())


def exact_improvement_p(x: Sequence[float], y: Sequence[float], seed: int = 0) -> float:
    """Two-sided permutation p-value of :func:`improvement` (exact: every split of the pooled runs into groups of
    ``len(x)`` and ``len(y)``, each equally likely under the null; a seeded random sample of them past
    :data:`EXACT_LIMIT`). NaN with fewer than one run per side."""
    x, y = list(map(float, x)), list(map(float, y))
    if not x or not y:
        return math.nan
    pooled, n = np.array(x + y), len(x)
    observed = abs(improvement(x, y) - 0.5)
    exact = math.comb(len(pooled), n) <= EXACT_LIMIT
    if exact:
        splits = itertools.combinations(range(len(pooled)), n)
    else:
        rng = np.random.default_rng(seed)
        splits = (rng.choice(len(pooled), n, replace=False) for _ in range(EXACT_LIMIT))
    hits = total = 0
    for idx in splits:
        mask = np.zeros(len(pooled), dtype=bool)
        mask[list(idx)] = True
        hits += abs(improvement(pooled[mask], pooled[~mask]) - 0.5) >= observed - 1e-12
        total += 1
    return hits / total if exact else (hits + 1) / (total + 1)  # a sampled p counts the observed split too


def paired_difference(x: Sequence[float], y: Sequence[float]) -> Tuple[float, float]:
    """Mean of the per-pair differences ``x[i] - y[i]`` and its two-sided exact sign-flip p-value: under "the arms
    do not differ" each difference is as likely positive as negative, so every assignment of signs is equally
    likely; p is the share of them whose mean is at least as far from 0 as the observed one."""
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if len(d) == 0:
        return math.nan, math.nan
    observed = abs(d.mean())
    if 2 ** len(d) <= EXACT_LIMIT:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    else:
        signs = np.random.default_rng(0).choice((1.0, -1.0), size=(EXACT_LIMIT, len(d)))
    means = np.abs((signs * d).mean(axis=1))
    return float(d.mean()), float((means >= observed - 1e-12).mean())


def holm(pvalues: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm's step-down adjusted p-values (None and NaN entries are not tests and stay None): the k-th smallest of
    m p-values is multiplied by m - k + 1, made monotone, and capped at 1."""
    tests = [(p, i) for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    out: List[Optional[float]] = [None] * len(pvalues)
    running = 0.0
    for k, (p, i) in enumerate(sorted(tests)):
        running = max(running, min(1.0, (len(tests) - k) * p))
        out[i] = running
    return out


def is_degenerate(lo: float, hi: float) -> bool:
    """A bootstrap interval of width 0 (every resample gave the same value, e.g. P(X > Y) = 1 when every run of X
    beats every run of Y): it says the resamples agree, not that the value is certain."""
    return not (math.isnan(lo) or math.isnan(hi)) and lo == hi
