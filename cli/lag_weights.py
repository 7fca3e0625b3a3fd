"""train.py's ``--lag-weights`` and ``--lag-weights-from``: the weights of the ``empirical`` lag mode
(agents/behavior.py) as typed on the command line, or read from an asynchronous run's measured lags.

Both give the weights of lags 0, 1, ..., K as a list (counts or probabilities; train.py checks them with
:func:`agents.lag_weights.check_lag_weights` and records them normalised in config.yml).
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

from cli.common import ASYNC_SUMMARY

#: how --lag-weights is written, for error messages
FORMAT = "lag:weight pairs such as 0:12,1:30,2:8 (lags not named weigh 0), or the weights of lags 0, 1, 2 in order " \
         "such as 12,30,8"


def parse_lag_weights(text: str) -> List[float]:
    """``--lag-weights``: ``lag:weight`` pairs (``0:12,1:30,2:8``; a lag not named weighs 0) or the weights of lags
    0, 1, 2, ... in order (``12,30,8``; also in brackets, ``[12, 30, 8]``, as the sweep writes a list from a grid
    file). Raises ValueError (one line: what is wrong and how to write it; the caller puts the flag and the text in
    front)."""
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    items = [item.strip() for item in body.split(",")]
    pairs = [":" in item for item in items]
    if not body.strip() or "" in items or (any(pairs) and not all(pairs)):
        raise ValueError(f"not a list of weights: write {FORMAT}")
    if not any(pairs):
        return [_weight(item) for item in items]
    weights: Dict[int, float] = {}
    for item in items:
        lag_text, _, weight_text = (part.strip() for part in item.partition(":"))
        if not lag_text.isdigit() or int(lag_text) in weights:
            problem = "named twice" if lag_text.isdigit() else "not a whole number >= 0"
            raise ValueError(f"lag {lag_text!r} is {problem}; write {FORMAT}")
        weights[int(lag_text)] = _weight(weight_text)
    return [weights.get(lag, 0.0) for lag in range(max(weights) + 1)]


def _weight(text: str) -> float:
    """One weight of ``--lag-weights`` as a float (its sign and finiteness are checked with the others)."""
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"weight {text.strip()!r} is not a number; write {FORMAT}") from None


def read_lag_counts(path: Path) -> List[float]:
    """The measured lag distribution of an asynchronous run (``train.py --actors N``) as the counts of lags 0..K
    (K its largest measured lag): ``lag_counts`` of an ``async.json``, of the one in a run folder, or of a results
    record's ``meta.async`` (studies/records.py). Raises ValueError (one line: what is wrong and what to pass; the
    caller puts the path it gave in front)."""
    path = Path(path)
    file = path / ASYNC_SUMMARY if path.is_dir() else path
    expected = "an asynchronous run's folder (train.py --actors N), its async.json or its results record"
    if not file.is_file():  # (the caller names the path it was given)
        raise ValueError(f"{f'no {ASYNC_SUMMARY} in it' if path.is_dir() else 'not found'}: pass {expected}")
    try:
        data: Any = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file} is not readable JSON ({type(exc).__name__}): pass {expected}") from exc
    record = isinstance(data, dict) and isinstance(data.get("meta"), dict)  # a results record: its meta.async
    summary = data["meta"].get("async") if record else data
    if record and summary is None:
        raise ValueError(f"{file} is the record of a run without asynchronous actors (no meta.async): pass {expected}")
    counts = summary.get("lag_counts") if isinstance(summary, dict) else None
    if not isinstance(counts, dict) or not counts:
        raise ValueError(f"{file} holds no lag_counts (no rollout trained yet?): pass {expected}")
    try:
        return counts_by_lag(counts)
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}: pass {expected}") from exc


def counts_by_lag(counts: Dict[str, Any]) -> List[float]:
    """``lag_counts`` as ``async.json`` writes them (``{"0": 1, "2": 98}``) as the counts of lags 0..K (a lag not
    measured counts 0). Raises ValueError naming what is wrong."""
    try:
        by_lag = {int(lag): float(count) for lag, count in counts.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"lag_counts {counts} is not a mapping of lag to count") from exc
    if not by_lag or min(by_lag) < 0:
        raise ValueError(f"lag_counts {counts} is empty or has a negative lag")
    return [by_lag.get(lag, 0.0) for lag in range(max(by_lag) + 1)]


def pool_lag_counts(counts: Sequence[Sequence[float]]) -> List[float]:
    """Counts of lags 0..K of several runs summed lag by lag (K the largest of any run): their pooled distribution."""
    width = max(len(c) for c in counts)
    return [float(sum(c[lag] for c in counts if lag < len(c))) for lag in range(width)]


def read_pooled_lag_counts(source: str) -> List[float]:
    """:func:`read_lag_counts` of ``source``, or, when it is a glob pattern (``runs/X_actors2_s*.json``), of every
    file it matches, pooled (:func:`pool_lag_counts`): the distribution of a cell of asynchronous runs. Raises
    ValueError (one line; the caller puts the pattern in front)."""
    if not glob.has_magic(source):
        return read_lag_counts(Path(source))
    paths = sorted(glob.glob(source))
    if not paths:
        raise ValueError("matches no file: run the asynchronous runs first, or fix the pattern")
    counts = []
    for path in paths:
        try:
            counts.append(read_lag_counts(Path(path)))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    return pool_lag_counts(counts)
