"""The asynchronous validation in a study's report (issue 28, results/async_validation/): is simulated lag a good model
of the lag a real asynchronous system produces?

A **real cell** is the runs of one variant in one setting (env, N asynchronous actors, ...; ``train.py --actors N``:
their records hold ``meta.async``, the measured lag of every trained rollout). Its **twin** is the synchronous runs of
the same env and variant that replay the real cell's measured lags pooled over its runs (``--lag-mode empirical``
with those counts as weights; ablations/async_validation_simulated.yml writes them from the records). A twin is
recognised by its weights: they equal the real cell's pooled counts, normalised. Twins of an older pool (written
before every real run had landed) match no cell and are named, not compared.

Everything here reads the rows of :func:`studies.report.run_rows`; nothing trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cli.lag_weights import counts_by_lag, pool_lag_counts

#: the key of a real cell: (env, variant, N actors, its whole setting: the table shows the first three)
CellKey = Tuple[str, str, int, Tuple]


def _measured(row: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """A real run's ``meta.async`` (n_actors, lags, lag_counts, ...); None for a synchronous run."""
    return row["record"]["meta"].get("async")


def real_cells(rows: Sequence[Dict[str, Any]]) -> Dict[CellKey, List[Dict[str, Any]]]:
    """The rows of asynchronous runs, by variant and setting."""
    cells: Dict[CellKey, List[Dict[str, Any]]] = {}
    for row in rows:
        summary = _measured(row)
        if summary is not None:
            key = (row["env"], row["variant"], int(summary["n_actors"]), row["setting"])
            cells.setdefault(key, []).append(row)
    return dict(sorted(cells.items(), key=lambda item: item[0][:3]))


def pooled_counts(cell: Sequence[Dict[str, Any]]) -> List[float]:
    """The measured lag counts (lags 0..K) of a real cell's runs, summed."""
    return pool_lag_counts([counts_by_lag(_measured(row)["lag_counts"]) for row in cell])


def _replayed(row: Dict[str, Any]) -> Optional[np.ndarray]:
    """The normalised weights a synchronous run replayed (``lag_mode: empirical``), else None."""
    config = row["record"]["meta"]["config"]
    if _measured(row) is not None or config.get("lag_mode") != "empirical" or not config.get("lag_weights"):
        return None
    weights = np.asarray(config["lag_weights"], dtype=float)
    return weights / weights.sum()


def twins(rows: Sequence[Dict[str, Any]]) -> Tuple[List[Tuple[CellKey, List[Dict[str, Any]], List[Dict[str, Any]]]],
                                                    List[str]]:
    """Each real cell with its twin's rows (empty: not run yet), and the names of replaying runs that match no cell."""
    cells = real_cells(rows)
    targets = {key: np.asarray(pooled_counts(cell)) for key, cell in cells.items()}
    targets = {key: counts / counts.sum() for key, counts in targets.items()}
    matched: Dict[CellKey, List[Dict[str, Any]]] = {key: [] for key in cells}
    unmatched = []
    for row in rows:
        weights = _replayed(row)
        if weights is None:
            continue
        key = next((k for k, target in targets.items() if k[:2] == (row["env"], row["variant"])
                    and len(target) == len(weights) and np.allclose(target, weights, rtol=0, atol=1e-9)), None)
        if key is None:
            unmatched.append(row["name"])
        else:
            matched[key].append(row)
    return [(key, cells[key], matched[key]) for key in cells], sorted(unmatched)


def lags_of(row: Dict[str, Any]) -> List[int]:
    """The lag of every trained rollout: measured (a real run's ``meta.async.lags``) or drawn (a twin's
    ``rollout/policy_lag`` per update; one environment per rollout, or one lag for all of a rollout's)."""
    summary = _measured(row)
    if summary is not None:
        return [int(v) for v in summary["lags"]]
    return [int(round(v)) for v in row["record"]["updates"].get("rollout/policy_lag", []) if v is not None]


def pooled_lags(group: Sequence[Dict[str, Any]]) -> List[int]:
    """The lags of every trained rollout of a group of runs, pooled (the table's mean and max, the figure's bars)."""
    return [lag for row in group for lag in lags_of(row)]


def speed(row: Dict[str, Any]) -> Optional[float]:
    """Environment steps per second of wall time (training and its evaluations, as the run's record measured it). A
    seed-batched run's wall time is its batch's, so its speed is the batch's: all its seeds' steps over that time."""
    wall = row.get("wall_time_s")
    if not wall:
        return None
    seeds = row["record"]["meta"].get("batch_seeds") if row["path"] == "seed-batch" else None
    return row["steps"] * (len(seeds) if seeds else 1) / wall


def async_section(rows: Sequence[Dict[str, Any]], reps: int, figures: Path) -> List[str]:
    """The report's lines for the asynchronous validation (none without asynchronous runs)."""
    from studies.report import COMPARE_HEAD, _column_ci, compare, compare_cells, fmt, group_mean, pct

    pairs, unmatched = twins(rows)
    if not pairs:
        return []
    lines = ["## Real asynchronous actors against their simulated twins", "",
             "Each cell of real asynchronous runs (`--actors N`: the lag is measured) beside its twin, synchronous "
             "runs of the same arm that draw each rollout's lag from the real cell's measured lags pooled over its "
             "runs (`--lag-mode empirical`). `lag` is the lag of the trained rollouts, pooled over runs (the twin's "
             "as drawn). env-steps/s: steps over wall time, evaluations included, the mean over runs; for a seed batch "
             "(marked) the batch's, all its seeds' steps over its wall time. Other processes on the machine are "
             "not controlled, so read it as rough. Diagnostics as in the tables below.", "",
             "| env | variant | actors | kind | seeds | lag mean | lag max | late eval return, mean [95 % CI] | "
             "final eval return, mean [95 % CI] | behavior_kl | would bound (c) | bound active | env-steps/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    comparisons = []
    for (env, variant, n, _), real, sim in pairs:
        for label, group in (("real", real), ("simulated", sim)):
            if not group:
                lines.append(f"| {env} | {variant} | {n} | {label} | – | | | not run yet | | | | | |")
                continue
            lags = pooled_lags(group)
            speeds = [s for s in map(speed, group) if s is not None]
            lines.append(f"| {env} | {variant} | {n} | {label} | {', '.join(str(r['seed']) for r in group)} | "
                         f"{fmt(float(np.mean(lags)) if lags else None, 3)} | {max(lags) if lags else ''} | "
                         f"{_column_ci(group, 'late_eval', reps)} | {_column_ci(group, 'final_eval', reps)} | "
                         f"{fmt(group_mean(group, 'behavior_kl'))} | "
                         f"{pct(group_mean(group, 'would_bound'))} | {pct(group_mean(group, 'bound_active'))} | "
                         f"{fmt(float(np.mean(speeds)) if speeds else None, 3)}"
                         f"{' (seed batch)' if any(r['path'] == 'seed-batch' for r in group) else ''} |")
        if real and sim:
            result = compare(real, sim, "late_eval", reps)
            comparisons.append(f"| {env} | {variant} | {n} | {result['n']} | {compare_cells(result)} |")
    lines.append("")
    if comparisons:
        lines += ["Real against simulated, late return (X = real, exploratory): does the simulation predict the real "
                  "system's learning within the seeds' noise?", "",
                  "| env | variant | actors | runs (real / simulated) | "
                  + COMPARE_HEAD.format(y="simulated", m="late") + " |",
                  "|---|---|---|---|---|---|---|---|", *comparisons, ""]
    if unmatched:
        lines += ["Replaying runs whose weights match no real cell's pooled lags (twins of an earlier pool, before "
                  f"every real run had landed; not compared): {', '.join(unmatched)}", ""]
    path = fig_lag_distributions(pairs, figures)
    lines += [f"![{path.stem}](figures/{path.name})", ""]
    return lines


def fig_lag_distributions(pairs: Sequence[Tuple[CellKey, List[Dict[str, Any]], List[Dict[str, Any]]]],
                          out: Path) -> Path:
    """One panel per real cell: the share of trained rollouts at each lag, real (measured) and simulated (drawn)."""
    from studies.report import _plt, _save

    plt = _plt()
    fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3.2), squeeze=False)
    for ax, ((env, variant, n, _), real, sim) in zip(axes[0], pairs):
        for offset, label, group, color in ((-0.2, "real", real, "tab:blue"), (0.2, "simulated", sim, "tab:orange")):
            lags = pooled_lags(group)
            if not lags:
                continue
            values, counts = np.unique(lags, return_counts=True)
            ax.bar(values + offset, counts / counts.sum(), width=0.4, color=color,
                   label=f"{label} ({len(group)} runs, {len(lags)} rollouts)")
        ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)  # lags are whole versions
        ax.set_xlabel("lag of a trained rollout (versions)")
        ax.set_title(f"{env} {variant}, {n} actors", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("share of rollouts")
    return _save(fig, "Measured and simulated lag", out / "async_lag_distributions.png")
