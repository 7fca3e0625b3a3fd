"""How often a 95 % percentile-bootstrap interval of a mean, from n runs, covers the true mean (a simulation).

    python bench/bootstrap_coverage.py          # writes results/bootstrap_coverage/coverage.json and README.md

Our reports' intervals are rliable's stratified bootstrap over seeds; with one task that is the percentile bootstrap
of the mean over runs, resampled with replacement, which is what is simulated here (numpy, vectorised). Two
populations: a normal one, and a bimodal one shaped like HalfCheetah-v4 under SB3's defaults (the MuJoCo study:
6 of 45 runs at 3,400-4,500, the rest at 900-1,800), for n = 3, 5, 10 and 20 runs. The report of every study quotes
the n = 5 rows. Seeded: the same numbers on any machine with the same numpy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "results" / "bootstrap_coverage"
DATASETS = 4000  # simulated studies per population and n
REPS = 2000  # bootstrap resamples per interval, as the reports use


def normal(rng: np.random.Generator, size: tuple) -> np.ndarray:
    return rng.normal(1300.0, 300.0, size)


def bimodal(rng: np.random.Generator, size: tuple) -> np.ndarray:
    """13 % of runs in a high mode (mean 3,900), the rest in a low one (mean 1,300), sd 300 each."""
    high = rng.random(size) < 6 / 45
    return np.where(high, rng.normal(3900.0, 300.0, size), rng.normal(1300.0, 300.0, size))


POPULATIONS: Dict[str, tuple] = {"normal": (normal, 1300.0), "bimodal": (bimodal, 1300.0 + 6 / 45 * 2600.0)}


def coverage(draw: Callable, true_mean: float, n: int, seed: int) -> float:
    """Share of simulated studies of ``n`` runs whose 95 % percentile-bootstrap interval contains ``true_mean``."""
    rng = np.random.default_rng(seed)
    data = draw(rng, (DATASETS, n))
    hits = 0
    for chunk in np.array_split(np.arange(DATASETS), 40):  # bounded memory: chunk x REPS x n
        idx = rng.integers(0, n, size=(len(chunk), REPS, n))
        means = np.take_along_axis(data[chunk][:, None, :].repeat(REPS, 1), idx, axis=2).mean(axis=2)
        lo, hi = np.percentile(means, [2.5, 97.5], axis=1)
        hits += int(((lo <= true_mean) & (true_mean <= hi)).sum())
    return hits / DATASETS


def main() -> int:
    results = {name: {str(n): coverage(draw, mean, n, seed=n) for n in (3, 5, 10, 20)}
               for name, (draw, mean) in POPULATIONS.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "coverage.json").write_text(json.dumps({"datasets": DATASETS, "reps": REPS, "numpy": np.__version__,
                                                   "coverage": results}, indent=1) + "\n")
    lines = ["# How often a 95 % bootstrap interval over n runs covers the true mean", "",
             "Written by `python bench/bootstrap_coverage.py` (a seeded simulation; see its docstring): "
             f"{DATASETS} simulated studies per cell, {REPS} percentile-bootstrap resamples each (rliable's "
             "stratified bootstrap with one task), numpy " + np.__version__ + ".", "",
             "| population | " + " | ".join(f"n = {n}" for n in (3, 5, 10, 20)) + " |", "|---|---|---|---|---|"]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f} %" for v in row.values()) + " |")
    lines += ["", "A nominal 95 % interval from 5 seeds covers the true mean only as often as the n = 5 column says; "
              "read it as a rough range, and use the exact tests beside it (studies/stats.py) for decisions."]
    (OUT / "README.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
