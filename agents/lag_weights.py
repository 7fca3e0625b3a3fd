"""The weights of the ``empirical`` lag mode (agents/behavior.py): each rollout's lag is drawn from 0..K with
probabilities proportional to ``lag_weights``, e.g. the measured lag distribution of an asynchronous run.

Checked and normalised here with numpy alone, so that train.py checks ``--lag-weights`` without loading torch.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, Sequence

import numpy as np


def check_lag_weights(lag_weights: Any, policy_lag: int) -> None:
    """Raise ValueError (one line, naming the value and the fix) unless ``lag_weights`` is a sequence of
    ``policy_lag + 1`` finite numbers >= 0, one per lag 0..K, whose last (lag K) is > 0 (so the sum is too).

    :param lag_weights: weights of lags 0, 1, ..., K: counts or probabilities (normalised by
        :func:`lag_probabilities`)
    :param policy_lag: K, the largest lag drawn
    """
    if isinstance(lag_weights, (str, bytes)) or not isinstance(lag_weights, (Sequence, np.ndarray)) or not all(
            isinstance(w, Real) and not isinstance(w, bool) for w in lag_weights):
        raise ValueError(f"lag_weights={lag_weights!r} must be a sequence of numbers, one weight per lag 0..K "
                         "(counts or probabilities), e.g. [12, 30, 8]")
    weights = [float(w) for w in lag_weights]
    if len(weights) != policy_lag + 1:
        raise ValueError(f"lag_weights={weights} has {len(weights)} weights (lags 0..{len(weights) - 1}) but "
                         f"policy_lag={policy_lag}: give policy_lag + 1 weights, one per lag 0..K, or set "
                         f"policy_lag={max(len(weights) - 1, 0)}")
    bad = [w for w in weights if not (np.isfinite(w) and w >= 0)]
    if bad:
        raise ValueError(f"lag_weights={weights} has a weight that is negative or not finite ({bad[0]}): use counts "
                         "or probabilities >= 0")
    if weights[-1] == 0:
        raise ValueError(f"lag_weights={weights}: the weight of lag K={policy_lag} is 0, but K is the largest lag "
                         "drawn: drop the trailing zero weights (and lower policy_lag to the largest lag with weight "
                         "> 0)")


def lag_probabilities(lag_weights: Sequence[float]) -> np.ndarray:
    """The weights as probabilities of lags 0..K (float64, divided by their sum). Weights that sum to 1 already (to
    1e-12: probabilities, e.g. read back from a config.yml) are kept as they are: normalising twice changes no bit,
    so a run given its recorded probabilities draws as the run that recorded them."""
    weights = np.asarray(lag_weights, dtype=np.float64)
    total = weights.sum()
    return weights if abs(total - 1.0) <= 1e-12 else weights / total
