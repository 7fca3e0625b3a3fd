"""The report of a study, from its committed records alone: ``python sweep.py report results/<study>``.

Writes into ``results/<study>/``: ``summary.md`` (tables and figures), ``summary.csv`` (one row per run) and PNG
figures under ``figures/``. Nothing else is read (no run folder, no event file), except other studies' records for
one table where :data:`BESIDE` names them.

Terms used throughout:

- a *setting* is what the data are (env, policy lag, lag mode, behaviour temperature, any other axis but the seed
  and the arm's own options); a *variant* is how they are used: the algorithm and its options (``dual_clip``,
  ``is_weight_mode``, ``is_weight_max``, ``loss_agg_mode``); options at their defaults are not shown in its label;
- the headline metric is the **late evaluation return**: the mean of the learner's evaluations (deterministic
  actions) over the last 10 % of the budget, at least 3 of them (:func:`late_window`). Under lag a deterministic
  learner's return can swing by hundreds between two evaluations one update apart, so a single evaluation is a
  fragile headline; the **final evaluation return** (the evaluation at the budget) is kept beside it as secondary.
  Every run of a table is scored at the same environment step (:func:`join_step`), so no comparison mixes learners
  of different updates. The training return (``rollout/ep_rew_mean``, the behaviour policy's) is a third column;
- diagnostics (``behavior_kl``, ratio p99, the share of samples the dual-clip bound acts on, ...) are averaged over
  the updates whose data reached the requested lag: the first K updates of a lag-K run have no snapshot that old
  and run at smaller lags, so they are left out (update index >= K);
- intervals are 95 % bootstrap confidence intervals from rliable (stratified bootstrap over seeds); beside each
  probability of improvement stand exact tests (:mod:`studies.stats`): the permutation p of P(X > Y) and, for runs
  paired by seed, the sign-flip p of the per-seed difference; curves show the mean over seeds with a 95 % bootstrap
  band; across tasks, rliable's IQM and probability of improvement on normalised scores.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from studies import stats
from studies.async_report import async_section
from studies.final_eval import MODES, read_final_evals
from studies.records import read_records


class ReportError(ValueError):
    """Records a report cannot score honestly (e.g. a run without an evaluation at its table's step): one line."""

#: options of an arm (they make a variant); every other axis but the seed makes the setting
ARM_KEYS = ("algo", "dual_clip", "is_weight_mode", "is_weight_max", "loss_agg_mode", "prox", "prox_ewma_beta")
#: option defaults, not shown in variant labels
ARM_DEFAULTS = {"is_weight_mode": "truncate", "is_weight_max": 100.0, "loss_agg_mode": "token-mean", "prox": "start",
                "prox_ewma_beta": 0.889}
DEFAULT_C = {"dualclip": 3.0}
#: setting keys with their defaults (a record without the axis has the default)
SETTING_DEFAULTS = {"policy_lag": 0, "lag_mode": "fixed", "behavior_temperature": 1.0}
#: diagnostics summarised per run: column -> (record tag, how to read it)
DIAGNOSTICS = {
    "behavior_kl": "train/behavior_kl",
    "ratio_p99": "train/ratio_p99",
    "ratio_max": "train/ratio_max",
    "would_bound": "train/dual_clip_would_bound",
    "bound_active": "train/pg_clipfrac_lower",
    "clip_fraction": "train/clip_fraction",
    "ppo_kl": "train/ppo_kl",
    "is_ess": "train/is_ess",
    "is_truncated": "train/is_weight_truncated",
    "is_filtered": "train/is_weight_filtered",
}
#: the late evaluation return (the headline) averages the evaluations over this share of the budget, up to the
#: scoring step, and at least LATE_MIN_EVALS of them: with the studies' evaluation every 25k steps that is 3
#: evaluations of a 300k or 500k run and 5 of a 1M run, about 12 updates apart, so one update's swing weighs a third
#: at most while the window still describes the end of training
LATE_FRACTION = 0.1
LATE_MIN_EVALS = 3
#: a within-update KL (``train/ppo_kl``) above this counts as a burst in the stability table (the median per run is
#: 0.02-0.05 in the MuJoCo study)
KL_BURST = 0.3
#: The smallest behaviour weight pi_prox/mu the decoupled loss can hold: agents/losses.py clamps the weight's log at
#: -LOG_RATIO_CLAMP (10) before exp. Kept here as a number so that the report needs no torch; a test checks the two.
WEIGHT_FLOOR = math.exp(-10.0)
#: bootstrap resamples per interval (``sweep.py report --reps``)
BOOTSTRAP_REPS = 2000
#: studies whose report sets the dual-clip bound's activity beside that of other studies (under the same results
#: folder): the real-ALE diagnostics (issue 25, item 4) ask how often the bound acts there against MinAtar and MuJoCo
BESIDE = {"atari_diagnostics": ("minatar_study", "mujoco_study")}
#: line styles and markers that tell settings apart where colours tell variants apart
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")
ALGO_ORDER = ("ppo", "dualclip", "decoupled")


# ----------------------------------------------------------------------------------------------- runs as rows
def effective(record: Dict[str, Any], key: str) -> Any:
    """The value of ``key`` for this run: its axis value, else its config value, else the default."""
    meta = record["meta"]
    if key in meta["axes"]:
        value = meta["axes"][key]
    elif key == "dual_clip":
        value = None if meta["algo"] == "ppo" else meta["config"].get("dual_clip", DEFAULT_C.get(meta["algo"]))
    else:
        value = meta["config"].get(key, SETTING_DEFAULTS.get(key, ARM_DEFAULTS.get(key)))
    if key == "dual_clip" and meta["algo"] == "ppo":
        value = None  # ppo's --dual-clip only sets the would-bound diagnostic
    if key in ("is_weight_mode", "is_weight_max") and meta["algo"] != "decoupled":
        value = None
    if isinstance(value, list):  # lag weights: a tuple, so that settings group and sort
        return tuple(value)
    return float(value) if isinstance(value, int) and key in ("dual_clip", "is_weight_max",
                                                              "behavior_temperature") else value


def variant_label(row: Dict[str, Any]) -> str:
    parts = [row["algo"]]
    c = row.get("dual_clip")
    if c is not None and c != DEFAULT_C.get(row["algo"]):
        parts.append(f"c={c:g}")
    elif c is None and row["algo"] == "dualclip":
        parts.append("c=off")  # the bound turned off (-params dual_clip:null): a vanilla clip in our loss module
    if row["algo"] == "decoupled":
        mode, cap = row.get("is_weight_mode") or "truncate", row.get("is_weight_max")
        if mode != "truncate" or (cap is not None and cap != ARM_DEFAULTS["is_weight_max"]):
            parts.append(f"{mode}@{cap:g}" if cap is not None else mode)
        if row.get("prox") == "ewma":  # PPO-EWMA's proximal policy (agents/ewma.py); its beta when not the paper's
            beta = row.get("prox_ewma_beta")
            parts.append("ewma" if beta in (None, ARM_DEFAULTS["prox_ewma_beta"]) else f"ewma β={beta:g}")
    if row.get("loss_agg_mode") not in (None, "token-mean"):
        parts.append(str(row["loss_agg_mode"]))
    return " ".join(parts)


def setting_label(setting: Tuple[Tuple[str, Any], ...]) -> str:
    names = {"policy_lag": "lag", "behavior_temperature": "τ", "lag_mode": "mode", "n_timesteps": "steps",
             "lag_weights": "weights"}
    asynchronous = dict(setting).get("actors") is not None  # its lag is measured, not set: "lag 0" would mislead
    shown = [(k, v) for k, v in setting if k != "env" and v is not None
             and not (k in SETTING_DEFAULTS and k != "policy_lag" and v == SETTING_DEFAULTS[k])
             and not (asynchronous and k == "policy_lag")]
    def value(v: Any) -> str:  # numbers short; lag weights as 5-5-1210
        if isinstance(v, tuple):
            return "-".join(value(w) for w in v)
        return f"{v:g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{names.get(k, k)} {value(v)}" for k, v in shown) or "default"


def full_lag_values(record: Dict[str, Any], tag: str, until: Optional[int] = None) -> List[float]:
    """Values of ``tag`` at the updates whose data reached the requested lag (update index >= K), and, with
    ``until``, that ended at or before environment step ``until``."""
    values = record["updates"].get(tag) or []
    k = int(record["meta"]["config"].get("policy_lag", 0))
    if until is not None:
        values = [v for v, step in zip(values, record["updates"]["step"]) if step <= until]
    return [v for v in values[k:] if v is not None]


def full_lag_mean(record: Dict[str, Any], tag: str, until: Optional[int] = None) -> Optional[float]:
    """Mean of :func:`full_lag_values`, None without any."""
    kept = full_lag_values(record, tag, until)
    return float(np.mean(kept)) if kept else None


def budget_step(record: Dict[str, Any], budget: int) -> Optional[int]:
    """The run's evaluation of the budget: the one the budget's mark triggered (at the budget, or within one
    vector step after it: with ``n_envs`` environments the step count moves ``n_envs`` at a time, so a 64-env run
    crosses the 500,000 mark at 500,032), else its nearest evaluation before the budget; None without any."""
    steps, n_envs = record["eval"]["steps"], int(record["meta"].get("config", {}).get("n_envs", 1))
    crossing = [s for s in steps if budget <= s < budget + n_envs]
    return crossing[0] if crossing else max((s for s in steps if s <= budget), default=None)


def join_step(records: Sequence[Dict[str, Any]], budget: int) -> Optional[int]:
    """The environment step at which every run of ``records`` is scored for a table of this ``budget``: the
    budget's evaluation step (:func:`budget_step`), the same for all. A run without an evaluation there, or
    without any evaluation where others have them, raises :class:`ReportError` naming it (nothing is dropped
    silently). None when no run has evaluations (a diagnostics-only study)."""
    candidates = [c for c in (budget_step(r, budget) for r in records) if c is not None]
    if not candidates:
        return None
    step = max(candidates)
    for r in records:
        if step not in r["eval"]["steps"]:
            raise missing_step(r["meta"]["name"], step, budget)
    return step


def missing_step(name: str, step: int, budget: int) -> ReportError:
    """The one-line refusal of a run that lacks its table's scoring step."""
    return ReportError(f"run {name} has no evaluation at step {step:,}, where the {budget:,}-step runs of its table "
                       "are scored: re-run it with the grid's --eval-freq, or move its record out of runs/")


def eval_at(record: Dict[str, Any], step: int) -> float:
    """Mean return over the episodes of the run's evaluation at ``step``."""
    evals = record["eval"]
    return float(np.mean(evals["returns"][evals["steps"].index(step)]))


def late_window(record: Dict[str, Any], step: int, budget: int) -> List[int]:
    """The evaluation steps of the late return: those in the last LATE_FRACTION of ``budget`` up to ``step``, and at
    least the last LATE_MIN_EVALS up to it."""
    steps = [s for s in record["eval"]["steps"] if s <= step]
    window = [s for s in steps if s >= step - LATE_FRACTION * budget]
    return steps[-max(len(window), LATE_MIN_EVALS):]


def late_eval(record: Dict[str, Any], step: int, budget: int) -> float:
    """The headline: mean of the evaluation returns over :func:`late_window`."""
    return float(np.mean([eval_at(record, s) for s in late_window(record, step, budget)]))


def score(record: Dict[str, Any], step: Optional[int], budget: int) -> Dict[str, Optional[float]]:
    """``final_eval`` (the evaluation at ``step``), ``late_eval`` and ``score_step`` of a run scored at ``step``
    (all None without evaluations)."""
    if step is None or not record["eval"]["steps"]:
        return {"final_eval": None, "late_eval": None, "score_step": None}
    return {"final_eval": eval_at(record, step), "late_eval": late_eval(record, step, budget), "score_step": step}


def late_entropy(record: Dict[str, Any]) -> Optional[float]:
    """The learner's policy entropy (``-train/entropy_loss``, SB3's mean over each update's minibatches) averaged over
    the last LATE_FRACTION of the run's updates (at least one): how sharp the trained policy ended, which a greedy
    evaluation does not show. None for a run that logged no entropy."""
    values = [-v for v in record["updates"].get("train/entropy_loss") or [] if v is not None]
    if not values:
        return None
    return float(np.mean(values[-max(1, round(LATE_FRACTION * len(values))):]))


def run_rows(records: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], List[str]]:
    """One row per record (axis values, setting, variant, metrics) and the setting keys of the study."""
    axis_keys = sorted({k for r in records for k in r["meta"]["axes"]} - {"seed"} - set(ARM_KEYS))
    setting_keys = ["env"] + [k for k in ("policy_lag", "lag_mode", "behavior_temperature") if k not in axis_keys
                              and any(k in r["meta"]["axes"] for r in records)]
    setting_keys += [k for k in axis_keys if k not in setting_keys]
    if "policy_lag" not in setting_keys:
        setting_keys.insert(1, "policy_lag")
    if len({r["meta"]["n_timesteps"] for r in records}) > 1:  # runs of several budgets are not one cell
        setting_keys.append("n_timesteps")
    rows = []
    for rec in records:
        meta = rec["meta"]
        row: Dict[str, Any] = {"name": meta["name"], "algo": meta["algo"], "seed": meta["seed"], "env": meta["env"]}
        for key in setting_keys[1:] + list(ARM_KEYS[1:]):
            row[key] = meta["n_timesteps"] if key == "n_timesteps" else effective(rec, key)
        row["setting"] = tuple((k, row[k]) for k in setting_keys)
        row["variant"] = variant_label(row)
        ep = rec["updates"].get("rollout/ep_rew_mean") or [None]
        row["final_train"] = ep[-1]
        row["entropy_late"] = late_entropy(rec)
        for column, tag in DIAGNOSTICS.items():
            row[column] = full_lag_mean(rec, tag)
        row.update(steps=meta["steps"], wall_time_s=meta["wall_time_s"], code=meta["code"], path=meta["path"],
                   cpu=meta["machine"]["cpu"])
        row["record"] = rec
        rows.append(row)
    # every run of one env and budget (one table) is scored at the same evaluation step
    for key in sorted({(r["env"], r["record"]["meta"]["n_timesteps"]) for r in rows}):
        table = [r for r in rows if (r["env"], r["record"]["meta"]["n_timesteps"]) == key]
        step = join_step([r["record"] for r in table], key[1])
        for r in table:
            r.update(score(r["record"], step, key[1]))
    return rows, setting_keys


def variant_order(variants: Sequence[str]) -> List[str]:
    def key(v: str) -> Tuple[int, str]:
        algo = v.split()[0]
        return (ALGO_ORDER.index(algo) if algo in ALGO_ORDER else len(ALGO_ORDER), v)

    return sorted(set(variants), key=key)


# ------------------------------------------------------------------------------------------------ statistics
def _interval_estimates(scores: Dict[str, Any], func: Any, reps: int, seed: int) -> Tuple[Dict, Dict]:
    """``rliable.library.get_interval_estimates``, reproducibly: rliable's stratified bootstraps draw their indices
    from numpy's global generator (``np.random.choice``; the ``random_state`` they accept does not reach them), so it
    is seeded here for the call and restored afterwards. The same records then give the same intervals."""
    from rliable import library as rly

    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        return rly.get_interval_estimates(scores, func, reps=reps)
    finally:
        np.random.set_state(saved)


def mean_ci(values: Sequence[float], reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Tuple[float, float, float]:
    """Mean and its 95 % stratified-bootstrap interval (rliable); one value: no interval (NaN)."""
    arr = np.asarray(values, dtype=float).reshape(-1, 1)
    if len(arr) < 2:
        return float(arr.mean()), math.nan, math.nan
    point, interval = _interval_estimates({"x": arr}, lambda s: np.array([np.mean(s)]), reps=reps, seed=seed)
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def _scores(values: Any) -> np.ndarray:
    """rliable's score matrix, runs x tasks: a sequence of runs is one task."""
    arr = np.asarray(values, dtype=float)
    return arr.reshape(-1, 1) if arr.ndim == 1 else arr


def iqm_ci(values: Any, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Tuple[float, float, float]:
    """rliable's IQM of ``values`` (runs, or runs x tasks) with its 95 % interval; one run: no interval (NaN)."""
    from rliable import metrics

    arr = _scores(values)
    if len(arr) < 2:
        return float(arr.mean()), math.nan, math.nan
    point, interval = _interval_estimates({"x": arr}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=reps,
                                          seed=seed)
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def improvement_ci(x: Any, y: Any, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Tuple[float, float, float]:
    """rliable's probability that a run of X beats a run of Y (ties count half), with its 95 % interval.

    rliable's own statistic (``metrics.probability_of_improvement``) calls scipy's Mann-Whitney test once per
    resample; :func:`_poi` computes the same number (U / (n·m), averaged over tasks) with numpy, on the same
    resamples, so the interval is rliable's, 20 times faster (tests/test_stats.py checks they agree)."""
    point, interval = _interval_estimates({"p": (_scores(x), _scores(y))}, _poi, reps=reps, seed=seed)
    lo, hi = np.ravel(interval["p"])
    return float(np.ravel(point["p"])[0]), float(lo), float(hi)


def _poi(x: np.ndarray, y: np.ndarray) -> float:
    """rliable's ``probability_of_improvement`` of score matrices (runs x tasks): P(X > Y) + P(X = Y) / 2 per task,
    averaged over tasks."""
    return float(np.mean([stats.improvement(x[:, t], y[:, t]) for t in range(x.shape[1])]))


def curve_band(curves: np.ndarray, reps: int = BOOTSTRAP_REPS,
               seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds (rows) at each point (columns) and a 95 % bootstrap band (rliable)."""

    if len(curves) < 2:
        return curves.mean(0), curves.mean(0), curves.mean(0)
    scores = curves[:, None, :]  # runs x tasks (1) x points

    def mean_per_point(s: np.ndarray) -> np.ndarray:
        return s.mean(axis=(0, 1))

    point, interval = _interval_estimates({"x": scores}, mean_per_point, reps=max(reps // 2, 100), seed=seed)
    return point["x"], interval["x"][0], interval["x"][1]


# ------------------------------------------------------------------------------------------------------ cells
def cells(rows: List[Dict[str, Any]]) -> Dict[Tuple[Any, str], List[Dict[str, Any]]]:
    out: Dict[Tuple[Any, str], List[Dict[str, Any]]] = {}
    for row in rows:
        out.setdefault((row["setting"], row["variant"]), []).append(row)
    return out


def fmt(x: Optional[float], digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{digits}g}"


def fmt_ci(point: float, lo: float, hi: float, digits: int = 4) -> str:
    """``point [lo, hi]``; an interval of width 0 is marked degenerate (see :func:`studies.stats.is_degenerate`)."""
    if math.isnan(lo):
        return fmt(point, digits)
    return f"{fmt(point, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]" + (
        " (degenerate)" if stats.is_degenerate(lo, hi) else "")


def fmt_p(p: Optional[float]) -> str:
    """A p-value: 2 significant digits, 3 decimals below 0.01."""
    if p is None or math.isnan(p):
        return ""
    return f"{p:.3f}" if p < 0.01 else f"{p:.2g}"


def pct(x: Optional[float]) -> str:
    return "" if x is None else f"{100 * x:.3g} %"


def group_mean(group: List[Dict[str, Any]], column: str) -> Optional[float]:
    """Mean of a row column over a cell's runs that have it, None when none has."""
    vals = [r[column] for r in group if r[column] is not None]
    return float(np.mean(vals)) if vals else None


def cell_table(groups: Dict[Tuple[Any, str], List[Dict[str, Any]]], reps: int) -> List[str]:
    head = ("| setting | variant | seeds | late eval return, mean [95 % CI] | late, IQM [95 % CI] | final eval "
            "return, mean [95 % CI] | final training return (μ's), mean ± sd | entropy, late | behavior_kl | "
            "ratio p99 | would bound (c) | bound active | clip fraction | ppo_kl | ESS | truncated | filtered |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (setting, variant), group in sorted(groups.items(), key=_cell_order):
        lates = [r["late_eval"] for r in group if r["late_eval"] is not None]
        train = [r["final_train"] for r in group if r["final_train"] is not None]
        q = iqm_ci(lates, reps) if lates else (math.nan,) * 3
        avg = partial(group_mean, group)
        column = partial(_column_ci, group, reps=reps)
        sd = f" ± {np.std(train, ddof=1):.3g}" if len(train) > 1 else ""
        lines.append(
            f"| {setting_label(setting)} | {variant} | {len(group)} | {column('late_eval')} | "
            f"{fmt_ci(*q) if lates else ''} | {column('final_eval')} | "
            f"{fmt(float(np.mean(train))) if train else ''}{sd} | {fmt(avg('entropy_late'), 3)} | "
            f"{fmt(avg('behavior_kl'), 3)} | "
            f"{fmt(avg('ratio_p99'), 3)} | {pct(avg('would_bound'))} | {pct(avg('bound_active'))} | "
            f"{pct(avg('clip_fraction'))} | {fmt(avg('ppo_kl'), 3)} | {fmt(avg('is_ess'), 3)} | "
            f"{pct(avg('is_truncated'))} | {pct(avg('is_filtered'))} |")
    return lines


def _column_ci(group: List[Dict[str, Any]], column: str, reps: int) -> str:
    """Mean [95 % CI] of a row column over a cell's runs that have it."""
    values = [r[column] for r in group if r[column] is not None]
    return fmt_ci(*mean_ci(values, reps)) if values else ""


def setting_order(setting: Tuple[Tuple[str, Any], ...]) -> Tuple:
    """Sort key of a setting: numbers numerically (lag 4 before lag 16), other values as text, None first."""
    return tuple((k, (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v)))
                 for k, v in setting)


def _cell_order(item: Tuple[Tuple[Any, str], Any]) -> Tuple:
    (setting, variant), _ = item
    algo = variant.split()[0]
    return (setting_order(setting), ALGO_ORDER.index(algo) if algo in ALGO_ORDER else len(ALGO_ORDER), variant)


def compare(xs: List[Dict[str, Any]], ys: List[Dict[str, Any]], metric: str, reps: int) -> Dict[str, Any]:
    """Runs ``xs`` against runs ``ys`` on the row column ``metric``: rliable's P(X > Y) with its bootstrap interval,
    its exact permutation p, and, over the seeds both have (paired: same initial parameters and evaluation
    episodes), the mean per-seed difference X − Y with its bootstrap interval and exact sign-flip p."""
    x = [r[metric] for r in xs if r[metric] is not None]
    y = [r[metric] for r in ys if r[metric] is not None]
    out: Dict[str, Any] = {"n": f"{len(x)} / {len(y)}"}
    if len(x) < 2 or len(y) < 2:
        return out
    out["poi"] = improvement_ci(x, y, reps)
    out["p"] = stats.exact_improvement_p(x, y)
    for group in (xs, ys):
        seeds = [r["seed"] for r in group]
        if len(seeds) != len(set(seeds)):
            twice = sorted({r["name"] for r in group if seeds.count(r["seed"]) > 1})
            raise ReportError(f"runs {', '.join(twice)} are one cell's same seed: keep one record per seed in runs/")
    by_seed = {r["seed"]: r[metric] for r in ys if r[metric] is not None}
    pairs = [(r[metric], by_seed[r["seed"]]) for r in xs if r[metric] is not None and r["seed"] in by_seed]
    if len(pairs) >= 2:
        out["diff"] = mean_ci([a - b for a, b in pairs], reps)
        out["paired_p"] = stats.paired_difference(*zip(*pairs))[1]
        out["pairs"] = len(pairs)
    return out


#: the header of the cells :func:`compare_cells` fills (``{y}``: the reference variant, ``{m}``: the metric)
COMPARE_HEAD = "P(X > {y}), {m} [95 % CI] | exact p | paired: mean X − {y}, {m} [95 % CI] (pairs) | sign-flip p"


def compare_cells(c: Dict[str, Any], holm_p: Optional[float] = None) -> str:
    """The :data:`COMPARE_HEAD` cells of one :func:`compare` result; with ``holm_p``, the exact p is followed by
    its Holm-adjusted value."""
    if "poi" not in c:
        return " |  |  | "
    p = fmt_p(c["p"]) + (f" (Holm {fmt_p(holm_p)})" if holm_p is not None else "")
    diff = f"{fmt_ci(*c['diff'])} ({c['pairs']})" if "diff" in c else ""
    return f"{fmt_ci(*c['poi'], digits=2)} | {p} | {diff} | {fmt_p(c.get('paired_p'))}"


def improvement_table(groups: Dict[Tuple[Any, str], List[Dict[str, Any]]], reps: int) -> List[str]:
    """Each variant against ppo in the same setting, on the late return (exact p Holm-adjusted within the table)
    and on the final evaluation (exploratory)."""
    rows = []
    for setting in sorted({s for s, _ in groups}, key=setting_order):
        base = groups.get((setting, "ppo"), [])
        if sum(r["late_eval"] is not None for r in base) < 2:
            continue
        for variant in variant_order([v for s, v in groups if s == setting]):
            if variant != "ppo":
                late = compare(groups[(setting, variant)], base, "late_eval", reps)
                if "poi" in late:
                    rows.append((setting, variant, late, compare(groups[(setting, variant)], base, "final_eval", reps)))
    if not rows:
        return []
    adjusted = stats.holm([late["p"] for _, _, late, _ in rows])
    head = (f"| setting | variant X | seeds X / ppo | {COMPARE_HEAD.format(y='ppo', m='late')} | "
            "P(X > ppo), final [95 % CI] | exact p, final |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (setting, variant, late, final), holm_p in zip(rows, adjusted):
        poi = fmt_ci(*final["poi"], digits=2) if "poi" in final else ""
        lines.append(f"| {setting_label(setting)} | {variant} | {late['n']} | {compare_cells(late, holm_p)} | {poi} | "
                     f"{fmt_p(final.get('p'))} |")
    return lines


def decoupled_variant_settings(groups: Dict[Tuple[Any, str], List[Dict[str, Any]]]) -> List[Any]:
    """The settings that hold more than one decoupled variant (the decoupled-stability grid), in order."""
    settings = sorted({s for s, v in groups if v.startswith("decoupled")}, key=setting_order)
    return [s for s in settings if sum(v.startswith("decoupled") for t, v in groups if t == s) > 1]


def bound_activity_table(studies: Dict[str, List[Dict[str, Any]]]) -> List[str]:
    """The dual-clip bound's activity per task and lag across studies: every cell of the first study (the one
    reported), and the other studies' dualclip cells at c = 3 with fixed lag and tau = 1. Per cell: the mean over
    seeds of each run's diagnostics (as in the cell table), and the largest ratio any update of any run saw."""
    head = ("| study | task | setting | variant | seeds | behavior_kl | ratio p99 | ratio max, mean per update | "
            "ratio max, largest | would bound (c) | bound active |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for i, (study, rows) in enumerate(studies.items()):
        if i > 0:
            rows = [r for r in rows if r["variant"] == "dualclip" and r.get("lag_mode", "fixed") == "fixed"
                    and r.get("behavior_temperature", 1.0) == 1.0]
        by_task = sorted(cells(rows).items(), key=lambda item: (dict(item[0][0])["env"],) + _cell_order(item))
        for (setting, variant), group in by_task:
            avg = partial(group_mean, group)
            largest = max((max(full_lag_values(r["record"], DIAGNOSTICS["ratio_max"]), default=math.nan)
                           for r in group), default=math.nan)
            lines.append(f"| {study} | {dict(setting)['env']} | {setting_label(setting)} | {variant} | {len(group)} | "
                         f"{fmt(avg('behavior_kl'), 3)} | {fmt(avg('ratio_p99'), 3)} | {fmt(avg('ratio_max'), 3)} | "
                         f"{fmt(largest, 3)} | {pct(avg('would_bound'))} | {pct(avg('bound_active'))} |")
    return lines


def with_falls(group: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """A cell's scored runs by seed, each with its best evaluation (``best``), how far its final evaluation ended
    below that (``drop``) and its deepest fall below an earlier evaluation (``fall``; dips it recovered from count
    too), up to its scoring step."""
    out = []
    for r in sorted((r for r in group if r["final_eval"] is not None), key=lambda r: r["seed"]):
        evals = r["record"]["eval"]
        curve = np.array([np.mean(ret) for step, ret in zip(evals["steps"], evals["returns"])
                          if step <= r["score_step"]])
        out.append({**r, "best": curve.max(), "drop": curve.max() - r["final_eval"],
                    "fall": (np.maximum.accumulate(curve) - curve).max()})
    return out


def counts_per_run(values: List[List[float]], hit: Callable[[float], bool]) -> str:
    """Per run (comma-separated, in order), how many of its values (:func:`full_lag_values` of one tag) ``hit``
    holds for; "n/a" for a run that logs no such value, and once for a group where none does."""
    if not any(values):
        return "n/a"
    return ", ".join(str(sum(hit(v) for v in k)) if k else "n/a" for k in values)


def kl_bursts(group: List[Dict[str, Any]]) -> Tuple[str, Optional[float]]:
    """Per run of ``group``, how many updates with the full lag had a within-update KL above :data:`KL_BURST`
    (:func:`counts_per_run`: stock SB3 PPO, the ppo arm, logs no ``train/ppo_kl``), and the largest such KL of the
    group."""
    kls = [full_lag_values(r["record"], "train/ppo_kl") for r in group]
    return counts_per_run(kls, lambda v: v > KL_BURST), max((max(k) for k in kls if k), default=None)


def best_to_final(group: List[Dict[str, Any]], number: Callable[[float], str] = fmt) -> str:
    """Each run's best evaluation → its final evaluation (runs from :func:`with_falls`), comma-separated."""
    return ", ".join(f"{number(r['best'])} → {number(r['final_eval'])}" for r in group)


def floored_updates(group: List[Dict[str, Any]]) -> str:
    """Per run of ``group`` (:func:`counts_per_run`), how many updates with the full lag had every behaviour
    weight at :data:`WEIGHT_FLOOR` or below (their largest weight, averaged over minibatches, is the floor; a
    filtered weight is 0): pi_prox gives none of mu's actions more than e^-10 of mu's density, so every term of the
    policy loss is weighted by at most e^-10."""
    floor = WEIGHT_FLOOR * (1 + 1e-3)  # the records keep float32 values of the floor
    weights = [full_lag_values(r["record"], "train/is_weight_max") for r in group]
    return counts_per_run(weights, lambda v: v <= floor)


def stability_table(groups: Dict[Tuple[Any, str], List[Dict[str, Any]]], reps: int) -> List[str]:
    """Per setting with several decoupled variants: each variant's late return against the default variant
    (``decoupled``, truncate at 100) with exact and paired tests, its final evaluation, each seed's best and final
    evaluation, how far runs fell from their best evaluation by the end and at any point (with the exact p of the
    deepest falls against the default's), the within-update KL bursts, and the updates with every weight at the
    floor (:func:`floored_updates`). Exploratory: no correction for the number of comparisons."""
    head = (f"| setting | variant | seeds | late eval return, mean [95 % CI] | "
            f"{COMPARE_HEAD.format(y='decoupled', m='late')} | final eval return, mean [95 % CI] | "
            "P(X > decoupled), final | best eval → final eval, per seed | best eval − final eval, mean [95 % CI] | "
            "deepest fall below an earlier eval, mean [95 % CI] | exact p, deepest fall vs decoupled | "
            f"updates with ppo_kl > {KL_BURST:g}, per seed | max ppo_kl | ESS | truncated | filtered | "
            "updates with every weight at the floor e^−10, per seed |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for setting in decoupled_variant_settings(groups):
        base = with_falls(groups.get((setting, "decoupled"), []))
        for variant in variant_order([v for s, v in groups if s == setting and v.startswith("decoupled")]):
            group = with_falls(groups[(setting, variant)])
            if not group:
                continue
            late, final, falls = ({} if variant == "decoupled" else compare(group, base, metric, reps)
                                  for metric in ("late_eval", "final_eval", "fall"))
            bursts, max_kl = kl_bursts(group)
            column = partial(_column_ci, group, reps=reps)
            lines.append(
                f"| {setting_label(setting)} | {variant} | {len(group)} | {column('late_eval')} | "
                f"{compare_cells(late)} | {column('final_eval')} | "
                f"{fmt_ci(*final['poi'], digits=2) if 'poi' in final else ''} | "
                f"{best_to_final(group, '{:.0f}'.format)} | "
                f"{column('drop')} | {column('fall')} | "
                f"{fmt_p(falls.get('p'))} | {bursts} | "
                f"{fmt(max_kl, 3)} | {fmt(group_mean(group, 'is_ess'), 3)} | "
                f"{pct(group_mean(group, 'is_truncated'))} | {pct(group_mean(group, 'is_filtered'))} | "
                f"{floored_updates(group)} |")
    return lines if len(lines) > 2 else []


def final_eval_table(groups: Dict[Tuple[Any, str], List[Dict[str, Any]]], evals: Dict[str, Dict[str, Any]],
                     reps: int) -> List[str]:
    """Per cell, over its runs that have a final-evaluation record (studies/final_eval.py): the mean over seeds of
    each run's mean score greedy and sampled, with bootstrap CIs, and the paired per-seed difference sampled − greedy
    with its exact sign-flip p (exploratory). Empty when no run of these cells has one."""
    rows, episodes = [], set()
    for (setting, variant), group in sorted(groups.items(), key=_cell_order):
        found = [evals[r["name"]] for r in group if r["name"] in evals]
        if not found:
            continue
        episodes |= {e["episodes"] for e in found}
        means = {mode: [float(np.mean(e[mode]["returns"])) for e in found] for mode in MODES}
        diff, p = stats.paired_difference(means["stochastic"], means["deterministic"])
        greedy, sampled = (fmt_ci(*mean_ci(means[mode], reps)) for mode in MODES)
        rows.append(f"| {setting_label(setting)} | {variant} | {len(found)} | {greedy} | {sampled} | {fmt(diff)} | "
                    f"{fmt_p(p)} |")
    if not rows:
        return []
    head = ("| setting | variant | runs | greedy, mean [95 % CI] | sampled, mean [95 % CI] | "
            "mean sampled − greedy (paired) | sign-flip p |")
    return [f"The final policy of each run, greedy (deterministic) and sampled (stochastic) actions, "
            f"{'/'.join(map(str, sorted(episodes)))} whole episodes each (`python sweep.py final-eval`, records in "
            "`final_eval/`; exploratory): a run's score is its mean over the episodes.", "",
            head, "|" + "---|" * (head.count("|") - 1)] + rows


def resumed_at(record: Dict[str, Any]) -> List[int]:
    """The steps at which the record's run was resumed (``command.txt`` notes each resume, and the record keeps its
    lines): a resumed run whose environments were not checkpointed (MuJoCo, ALE, and MinAtar in runs made before
    agents/checkpoint.py saved its environments) starts fresh episodes there, so two runs that were one
    computation part at a resume of one of them."""
    command = record["meta"].get("command") or []
    lines = [command] if isinstance(command, str) else command
    return [int(m) for line in lines for m in re.findall(r"resumed at step (\d+)", line)]


def same_computations(groups: Dict[Tuple[Any, str], List[Dict[str, Any]]]) -> List[str]:
    """Lines naming the runs of two variants of one setting that are the same computation: the same seed with
    evaluations identical, return for return, beyond the initial one (e.g. ppo and decoupled at lag 0, where the
    proximal policy is μ and every weight is 1). Such pairs are not independent replicates: their difference is 0
    by construction, not a measured noise floor. Where one of a pair that parts was resumed before their first
    differing evaluation, the line says so (:func:`resumed_at`)."""
    out = []
    for setting in sorted({s for s, _ in groups}, key=setting_order):
        variants = variant_order([v for s, v in groups if s == setting])
        for i, a in enumerate(variants):
            runs_a = {r["seed"]: r["record"] for r in groups[(setting, a)]}
            for b in variants[i + 1:]:
                spans = []
                for r in sorted(groups[(setting, b)], key=lambda r: r["seed"]):
                    if r["seed"] not in runs_a:
                        continue
                    ea, eb = runs_a[r["seed"]]["eval"], r["record"]["eval"]
                    same = 0
                    for sa, ra, sb, rb in zip(ea["steps"], ea["returns"], eb["steps"], eb["returns"]):
                        if sa != sb or ra != rb:
                            break
                        same += 1
                    if same > 1:  # the evaluation at step 0 is of the same initial policy in any case
                        whole = same == len(ea["steps"]) == len(eb["steps"])
                        spans.append(f"seed {r['seed']} " + ("to the end" if whole else
                                                             f"to step {eb['steps'][same - 1]:,}"))
                        if not whole:  # a resume before the first evaluation that differs
                            nxt = min(eb["steps"][same:] or [math.inf])
                            spans[-1] += "".join(f" ({v} resumed at step {step:,})"
                                                 for v, rec in ((a, runs_a[r["seed"]]), (b, r["record"]))
                                                 for step in resumed_at(rec) if step < nxt)
                if spans:
                    out.append(f"- {setting_label(setting)}: {a} and {b} evaluate identically, {'; '.join(spans)}")
    return out


# ------------------------------------------------------------------------------------------------------ tasks
def task_rows(rows: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """Per env, the rows of the cross-task comparison: the three arms at their defaults, fixed lag, τ = 1, at the
    env's longest budget that has ppo at lag 0 (its reference)."""
    def plain(r: Dict[str, Any]) -> bool:
        extra = {k: v for k, v in r["setting"] if k not in ("env", "policy_lag", "n_timesteps")}
        return (r["variant"] in ALGO_ORDER and r["late_eval"] is not None
                and all(v == SETTING_DEFAULTS.get(k) for k, v in extra.items()))

    out = {}
    for env in sorted({r["env"] for r in rows}):
        candidates = [r for r in rows if r["env"] == env and plain(r)]
        budgets = [r["record"]["meta"]["n_timesteps"] for r in candidates
                   if r["algo"] == "ppo" and r["policy_lag"] == 0]
        if budgets:
            out[env] = [r for r in candidates if r["record"]["meta"]["n_timesteps"] == max(budgets)]
    return out


def at_common_budget(tasks: Dict[str, List[Dict[str, Any]]]) -> Tuple[Optional[int], Dict[str, List[Dict[str, Any]]]]:
    """The cross-task rows scored again at the shortest budget of the tasks, when their budgets differ: each run's
    late and final evaluation as if its budget had been that one (a run without an evaluation there is left out).
    Lag costs a learner time, so a task given twice the budget can look as if lag cost it less; this puts the tasks
    on the same number of environment steps. (None, {}) when every task has the same budget."""
    budgets = {env: rs[0]["record"]["meta"]["n_timesteps"] for env, rs in tasks.items() if rs}
    if len(set(budgets.values())) < 2:
        return None, {}
    step = min(budgets.values())
    return step, {env: [{**r, **score(r["record"], step, step)} for r in rs if step in r["record"]["eval"]["steps"]]
                  for env, rs in tasks.items()}


def _game_version(env: str) -> Tuple[str, Optional[int]]:
    """``("MinAtar/Breakout", 1)`` for ``MinAtar/Breakout-v1``; the version is None for an id without one."""
    game, _, version = env.rpartition("-v")
    return (game, int(version)) if game and version.isdigit() else (env, None)


def other_version(env: str, envs: Sequence[str]) -> Optional[str]:
    """The newest other version of the same game among ``envs`` when it is newer than ``env`` (``MinAtar/Breakout-v1``
    for ``MinAtar/Breakout-v0``: the same game with its minimal action set), else None. An aggregate over games
    counts each game once, in its newest version; the other versions are ablations of it."""
    game, version = _game_version(env)
    if version is None:
        return None
    newer = [(v, e) for e in envs for g, v in [_game_version(e)] if g == game and v is not None and v > version]
    return max(newer)[1] if newer else None


def aggregate_exclusions(tasks: Dict[str, List[Dict[str, Any]]]) -> Dict[str, str]:
    """Per env left out of the aggregate over tasks, why."""
    out = {}
    for env in tasks:
        newer = other_version(env, list(tasks))
        if newer is not None:
            out[env] = f"another version of {newer}'s game, counted once as {newer}"
    return out


def normalisation(tasks: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Tuple[float, float]]:
    """Per env in the aggregate, the (zero, one) of its normalised score: zero is the mean evaluation return of the
    untrained policy (every run's evaluation at step 0: the initial, near-random learner), one the mean late return
    of ppo at lag 0. A normalised score of 1 is ppo's lag-0 result; 0 is no learning. Envs that
    :func:`aggregate_exclusions` names, and envs where ppo at lag 0 is not above its untrained policy, have none."""
    out = {}
    excluded = aggregate_exclusions(tasks)
    for env, rows in tasks.items():
        if env in excluded:
            continue
        starts = [eval_at(r["record"], 0) for r in rows if 0 in r["record"]["eval"]["steps"]]
        one = float(np.mean([r["late_eval"] for r in rows if r["algo"] == "ppo" and r["policy_lag"] == 0]))
        if starts and one > float(np.mean(starts)):
            out[env] = (float(np.mean(starts)), one)
    return out


def task_table(tasks: Dict[str, List[Dict[str, Any]]], reps: int) -> List[str]:
    """Rows (variant, lag); per task the late return with P(X > ppo) and its exact p at that lag; across tasks the
    IQM of normalised late returns and the probability of improvement over ppo (rliable: per task, then averaged),
    over the tasks that have the cell, each with its first n seeds (n: the fewest any of them has)."""
    envs, scale = list(tasks), normalisation(tasks)
    head = ("| variant | lag | " + " | ".join(f"{env}: late return, mean (seeds; P(X > ppo), exact p)" for env in envs)
            + " | tasks in the aggregate (seeds each) | normalised late return, IQM [95 % CI] | "
              "P(X > ppo) across tasks [95 % CI] |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def matrix(cell: Dict[str, List[Dict[str, Any]]], have: List[str], n: int) -> np.ndarray:
        """runs x tasks of normalised late returns, each task's first ``n`` runs by seed"""
        return np.array([[(r["late_eval"] - scale[env][0]) / (scale[env][1] - scale[env][0])
                          for r in cell[env][:n]] for env in have]).T

    for variant in ALGO_ORDER:
        for lag in sorted({r["policy_lag"] for rs in tasks.values() for r in rs}):
            cell, base = ({env: sorted((r for r in rs if r["variant"] == v and r["policy_lag"] == lag),
                                       key=lambda r: r["seed"]) for env, rs in tasks.items()}
                          for v in (variant, "ppo"))
            if not any(cell.values()):
                continue
            per_task = []
            for env in envs:
                text = f"{np.mean([r['late_eval'] for r in cell[env]]):.4g} ({len(cell[env])}" if cell[env] else ""
                c = compare(cell[env], base[env], "late_eval", reps) if variant != "ppo" and cell[env] else {}
                per_task.append(text + (f"; {c['poi'][0]:.2g}, p {fmt_p(c['p'])}" if "poi" in c else "")
                                + (")" if text else ""))
            have = [env for env in envs if env in scale and len(cell[env]) > 1
                    and (variant == "ppo" or len(base[env]) > 1)]
            agg_iqm = agg_poi = ""
            n = min((len(cell[env]) for env in have), default=0)
            if have:
                agg_iqm = fmt_ci(*iqm_ci(matrix(cell, have, n), reps), digits=3)
                if variant != "ppo":
                    nb = min(n, min(len(base[env]) for env in have))
                    agg_poi = fmt_ci(*improvement_ci(matrix(cell, have, nb), matrix(base, have, nb), reps), digits=2)
            lines.append(f"| {variant} | {lag} | " + " | ".join(per_task)
                         + f" | {', '.join(have)} ({n}) | {agg_iqm} | {agg_poi} |")
    return lines


def falls_table(tasks: Dict[str, List[Dict[str, Any]]], reps: int) -> List[str]:
    """Per task, lag and arm (the rows of :func:`task_rows`): each seed's best and final evaluation, how far the runs
    ended below their best, the deepest fall below an earlier evaluation (falls recovered from too) with P(X > ppo)
    and its exact p at the same lag, and the within-update KL bursts. On tasks whose episodes end when the body falls
    (Hopper, Walker2d) an unstable learner shows as such falls; exploratory, no correction."""
    head = ("| task | lag | variant | seeds | best eval → final eval, per seed | best − final, mean [95 % CI] | "
            "deepest fall, mean [95 % CI] | P(X > ppo), deepest fall [95 % CI] | exact p | "
            f"updates with ppo_kl > {KL_BURST:g}, per seed |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for env, rows in tasks.items():
        for lag in sorted({r["policy_lag"] for r in rows}):
            cell = {v: with_falls([r for r in rows if r["variant"] == v and r["policy_lag"] == lag])
                    for v in ALGO_ORDER}
            for variant, group in cell.items():
                if not group:
                    continue
                falls = compare(group, cell["ppo"], "fall", reps) if variant != "ppo" else {}
                lines.append(
                    f"| {env} | {lag} | {variant} | {len(group)} | {best_to_final(group)} | "
                    f"{_column_ci(group, 'drop', reps)} | {_column_ci(group, 'fall', reps)} | "
                    f"{fmt_ci(*falls['poi'], digits=2) if 'poi' in falls else ''} | {fmt_p(falls.get('p'))} | "
                    f"{kl_bursts(group)[0]} |")
    return lines


def fig_tasks_vs_lag(tasks: Dict[str, List[Dict[str, Any]]], out: Path, reps: int) -> Path:
    """The late return against lag, one panel per task, the three arms (mean over seeds, 95 % bootstrap CI)."""
    plt = _plt()
    colors = _colors(list(ALGO_ORDER))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, (env, rows) in zip(axes.flat, tasks.items()):
        lags = sorted({r["policy_lag"] for r in rows})
        for i, variant in enumerate(ALGO_ORDER):
            by_lag = {k: [r["late_eval"] for r in rows if r["variant"] == variant and r["policy_lag"] == k]
                      for k in lags}
            shown = [k for k in lags if by_lag[k]]
            if shown:  # a small offset per arm keeps the error bars apart
                _errorbar_ci(ax, [lags.index(k) + 0.1 * (i - 1) for k in shown], [by_lag[k] for k in shown], reps,
                             color=colors[variant],
                             label=f"{variant} (seeds {'/'.join(str(len(by_lag[k])) for k in shown)})")
        ax.set_xticks(range(len(lags)), [str(k) for k in lags])
        ax.set_xlim(-0.5, len(lags) - 0.5)
        ax.set_xlabel("policy lag K (updates)")
        ax.set_title(env, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("late evaluation return (learner)")
    return _save(fig, "Late evaluation return against policy lag, per task: mean over seeds, 95 % bootstrap CI",
                 out / "tasks_vs_lag.png")


# ---------------------------------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# tab10, then named colours far from its ten: a study with up to 18 variants (the MuJoCo study has 12: ppo, five
# values of c, the decoupled variants) draws each in its own colour, the same one in every figure
EXTRA_COLORS = ["black", "gold", "navy", "lime", "maroon", "teal", "fuchsia", "tan"]


def _colors(variants: Sequence[str]) -> Dict[str, Any]:
    from matplotlib.colors import to_rgba

    palette = list(_plt().get_cmap("tab10").colors) + EXTRA_COLORS
    return {v: to_rgba(palette[i % len(palette)]) for i, v in enumerate(variant_order(variants))}


def eval_curves(group: List[Dict[str, Any]]) -> Tuple[np.ndarray, np.ndarray]:
    """Steps and seeds x points of the evaluation return (cut to the points every seed has)."""
    n = min(len(r["record"]["eval"]["steps"]) for r in group)
    steps = np.asarray(group[0]["record"]["eval"]["steps"][:n])
    curves = np.array([[np.mean(x) for x in r["record"]["eval"]["returns"][:n]] for r in group])
    return steps, curves


def fig_curves(env: str, rows: List[Dict[str, Any]], out: Path, reps: int) -> Optional[Path]:
    if not any(r["record"]["eval"]["steps"] for r in rows):
        return None  # a study without evaluations (diagnostics only)
    plt = _plt()
    groups = cells(rows)
    settings = sorted({s for s, _ in groups}, key=setting_order)
    colors = _colors([v for _, v in groups])
    ncol = min(3, len(settings))
    nrow = math.ceil(len(settings) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.6 * nrow), squeeze=False, sharey=True)
    for ax, setting in zip(axes.flat, settings):
        for variant in variant_order([v for s, v in groups if s == setting]):
            group = [r for r in groups[(setting, variant)] if r["record"]["eval"]["steps"]]
            if not group:
                continue
            steps, curves = eval_curves(group)
            mean, lo, hi = curve_band(curves, reps)
            ax.plot(steps, mean, color=colors[variant], label=f"{variant} (n={len(group)})")
            ax.fill_between(steps, lo, hi, color=colors[variant], alpha=0.2)
        ax.set_title(setting_label(setting))
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("evaluation return (learner)")
    for ax in list(axes.flat)[len(settings):]:
        ax.set_visible(False)
    return _save(fig, f"{env}: the learner's evaluation return (deterministic), mean over seeds, 95 % bootstrap band",
                 out / f"curves_{_slug(env)}.png")


def _by_lag(rows: List[Dict[str, Any]], value: str) -> Dict[Tuple[Any, str], Dict[int, List[float]]]:
    """(setting without the lag, variant) -> lag -> values of ``value``."""
    out: Dict[Tuple[Any, str], Dict[int, List[float]]] = {}
    for r in rows:
        if r[value] is None:
            continue
        rest = tuple((k, v) for k, v in r["setting"] if k != "policy_lag")
        out.setdefault((rest, r["variant"]), {}).setdefault(int(r["policy_lag"]), []).append(r[value])
    return out


def fig_final_vs_lag(env: str, rows: List[Dict[str, Any]], out: Path, reps: int) -> Optional[Path]:
    """Late evaluation return against lag, one panel per setting. Up to seven variants share a lag (the MuJoCo
    study), so each variant sits at its own small offset around the lag's position (error bars never overlap), in a
    colour and marker of its own within the panel, with the legend beside the panel and the exact number of seeds
    (per lag when it differs)."""
    data = _by_lag(rows, "late_eval")
    rests = sorted({rest for rest, _ in data if len(data[(rest, _)]) > 1}, key=setting_order)
    if not rests:
        return None
    plt = _plt()
    # well-separated colours (tab10 without its grey and olive, which read as black and gold), then markers: the
    # same variant may get another colour here than in the curves, but no two series of a panel look alike
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "black"]
    markers = ["o", "s", "^", "D", "v", "P", "X", "*", "h"]
    fig, axes = plt.subplots(1, len(rests), figsize=(7.5 * len(rests), 4.2), squeeze=False)
    for ax, rest in zip(axes.flat, rests):
        # one evenly spaced position per lag any variant of this panel has, so a variant run at fewer lags (e.g.
        # the decoupled-stability variants at 4, 8 and 16) sits at its own lags, not at the first positions
        all_lags = sorted({k for (r, _), by_lag in data.items() if r == rest and len(by_lag) > 1 for k in by_lag})
        variants = [v for v in variant_order([v for r, v in data if r == rest]) if len(data[(rest, v)]) > 1]
        # the variants of one lag spread over at most 0.7 of the gap between lags, 0.12 apart at most (fewer
        # variants stay close to their lag's tick)
        width = min(0.7 / max(len(variants), 1), 0.12)
        for i, variant in enumerate(variants):
            by_lag = data[(rest, variant)]
            lags = sorted(by_lag)
            counts = [len(by_lag[k]) for k in lags]
            n = f"n={counts[0]}" if len(set(counts)) == 1 else "n=" + "/".join(map(str, counts)) + " by lag"
            offset = (i - (len(variants) - 1) / 2) * width
            _errorbar_ci(ax, [all_lags.index(k) + offset for k in lags], [by_lag[k] for k in lags], reps,
                         color=palette[i % len(palette)], marker=markers[i % len(markers)], markersize=4,
                         linewidth=1, label=f"{variant} ({n})")
        ax.set_xticks(range(len(all_lags)), [str(k) for k in all_lags])
        ax.set_xlim(-0.5, len(all_lags) - 0.5)  # each lag's offsets centred in its own slot
        ax.set_xlabel("policy lag K (updates)")
        ax.set_ylabel("late evaluation return (learner)")
        ax.set_title(f"{env}" + (f", {setting_label(rest)}" if setting_label(rest) != "default" else ""), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return _save(fig, "Late evaluation return (last 10 % of the budget) against policy lag: mean over seeds, "
                      "95 % bootstrap CI",
                 out / f"final_vs_lag_{_slug(env)}.png")


def fig_diagnostics_vs_lag(env: str, rows: List[Dict[str, Any]], out: Path, reps: int) -> Optional[Path]:
    panels = [("behavior_kl", "KL(μ‖π) before the update (k3)", False),
              ("ratio_p99", "ratio π/μ, 99th percentile", False),
              ("would_bound", "share with A<0 and r>c (c=3 unless set)", True),
              ("bound_active", "share where the c·A bound is active", True)]
    data = {col: _by_lag(rows, col) for col, _, _ in panels}
    if not any(len(d) > 1 for m in data.values() for d in m.values()):
        return None
    plt = _plt()
    variants = [r["variant"] for r in rows]
    colors = _colors(variants)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8))
    for ax, (col, title, share) in zip(axes, panels):
        all_lags = sorted({k for by_lag in data[col].values() for k in by_lag})
        order = variant_order(variants)
        rests = sorted({rest for rest, _ in data[col]}, key=setting_order)  # one line style per other setting
        for (rest, variant), by_lag in sorted(data[col].items(),
                                              key=lambda kv: (setting_order(kv[0][0]), order.index(kv[0][1]))):
            if len(by_lag) < 2:
                continue
            lags = sorted(by_lag)
            scale = 100 if share else 1
            mean = [scale * np.mean(by_lag[k]) for k in lags]
            sd = [scale * (np.std(by_lag[k], ddof=1) if len(by_lag[k]) > 1 else 0) for k in lags]
            label = variant + (f" ({setting_label(rest)})" if setting_label(rest) != "default" else "")
            label += f" (n≥{min(len(v) for v in by_lag.values())})"
            style = rests.index(rest) % len(LINE_STYLES)
            ax.errorbar([all_lags.index(k) for k in lags], mean, yerr=sd, marker=MARKERS[style], capsize=3,
                        linestyle=LINE_STYLES[style], color=colors[variant], label=label)
        ax.set_xticks(range(len(all_lags)), [str(k) for k in all_lags])
        ax.set_xlabel("policy lag K (updates)")
        ax.set_ylabel(title + (" (%)" if share else ""))
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, f"{env}: off-policy diagnostics against lag (updates with the full lag; mean ± sd over seeds)",
                 out / f"diagnostics_vs_lag_{_slug(env)}.png")


def c_sensitivity_groups(rows: List[Dict[str, Any]]) -> Dict[Any, Tuple[Dict[float, List[Dict[str, Any]]],
                                                                         List[Dict[str, Any]]]]:
    """Per setting with dualclip runs of more than one c: those runs by c, and the setting's ppo runs. Runs of the
    same setting with a longer budget join, evaluated at this budget's step and with diagnostics up to it (e.g.
    c = 3 from a 500k-step grid in a 300k-step c-sweep)."""
    dual = [r for r in rows if r["algo"] == "dualclip" and r["final_eval"] is not None and r["dual_clip"] is not None]
    by_setting: Dict[Any, Dict[float, List[Dict[str, Any]]]] = {}
    for r in dual:
        by_setting.setdefault(r["setting"], {}).setdefault(float(r["dual_clip"]), []).append(r)
    out = {}
    for setting, by_c in by_setting.items():
        present = set(by_c)
        ppo = [r for r in rows if r["setting"] == setting and r["variant"] == "ppo" and r["final_eval"] is not None]
        step = next(iter(by_c.values()))[0]["score_step"]
        for r in _longer_runs(rows, setting, step):
            if r["algo"] == "dualclip" and r["dual_clip"] is not None and float(r["dual_clip"]) not in present:
                by_c.setdefault(float(r["dual_clip"]), []).append(r)
            elif r["variant"] == "ppo":
                ppo.append(r)
        if len(by_c) > 1:
            out[setting] = (by_c, ppo)
    return out


def c_sensitivity_table(rows: List[Dict[str, Any]], reps: int) -> List[str]:
    """Late and final evaluation return, dualclip against ppo (exact and paired tests) and the bound's activity per
    c, with ppo's row per setting. Exploratory: no correction for the number of comparisons."""
    head = (f"| setting | variant | seeds | late eval return, mean [95 % CI] | "
            f"{COMPARE_HEAD.format(y='ppo', m='late')} | final eval return, mean [95 % CI] | P(X > ppo), final | "
            "bound active | behavior_kl | learner std at the scoring step, min–max over seeds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    groups = c_sensitivity_groups(rows)
    for setting, (by_c, ppo) in sorted(groups.items(), key=lambda kv: setting_order(kv[0])):
        for c, group in [(None, ppo)] + sorted(by_c.items()):
            if not group:
                continue
            late, final = ({} if c is None else compare(group, ppo, metric, reps)
                           for metric in ("late_eval", "final_eval"))
            std = [v[-1] for v in (full_lag_values(r["record"], "train/std", until=r["score_step"]) for r in group)
                   if v]
            column = partial(_column_ci, group, reps=reps)
            lines.append(f"| {setting_label(setting)} | {'ppo' if c is None else f'dualclip c={c:g}'} | "
                         f"{len(group)} | {column('late_eval')} | {compare_cells(late)} | {column('final_eval')} | "
                         f"{fmt_ci(*final['poi'], digits=2) if 'poi' in final else ''} | "
                         f"{pct(group_mean(group, 'bound_active'))} | {fmt(group_mean(group, 'behavior_kl'), 3)} | "
                         f"{f'{fmt(min(std), 3)}–{fmt(max(std), 3)}' if std else ''} |")
    return lines if len(lines) > 2 else []


def fig_c_sensitivity(env: str, rows: List[Dict[str, Any]], out: Path, reps: int) -> Optional[Path]:
    """Final and late evaluation return and the share the bound acts on against c, per setting, for dualclip runs,
    with ppo's mean as a dashed line."""
    groups = c_sensitivity_groups(rows)
    if not groups:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ordered = sorted(groups.items(), key=lambda kv: setting_order(kv[0]))
    for i, (setting, (by_c, ppo)) in enumerate(ordered):
        color = plt.get_cmap("tab10")(i)
        cs = sorted(by_c)
        n = min(len(by_c[c]) for c in cs)
        for ax, column in ((axes[0], "late_eval"), (axes[1], "final_eval")):
            _errorbar_ci(ax, cs, [[r[column] for r in by_c[c]] for c in cs], reps, color=color,
                         label=f"dualclip, {setting_label(setting)} (n≥{n})")
            if ppo:
                ax.axhline(np.mean([r[column] for r in ppo]), color=color, ls="--", lw=1,
                           label=f"ppo, {setting_label(setting)} (n={len(ppo)})")
        active = [group_mean(by_c[c], "bound_active") for c in cs]
        active = [np.nan if a is None else 100 * a for a in active]
        axes[2].plot(cs, active, marker="o", color=color, label=setting_label(setting))
    all_cs = sorted({c for _, (by_c, _) in ordered for c in by_c})
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(all_cs, [f"{c:g}" for c in all_cs])
        ax.minorticks_off()
        ax.set_xlabel("dual-clip constant c (log scale)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[0].set_ylabel("evaluation return (learner)")
    axes[0].set_title("late evaluation (last 10 % of the budget): mean, 95 % bootstrap CI", fontsize=9)
    axes[1].set_title("final evaluation (at the scoring step; longer runs at this budget's)", fontsize=9)
    axes[2].set_ylabel("share of samples where c·A bounds the loss (%)")
    axes[2].set_title("how often the bound acts (updates with the full lag)", fontsize=9)
    return _save(fig, f"{env}: sensitivity to the dual-clip constant c",
                 out / f"c_sensitivity_{_slug(env)}.png")


def _longer_runs(rows: List[Dict[str, Any]], setting: Tuple[Tuple[str, Any], ...],
                 step: int) -> List[Dict[str, Any]]:
    """Runs whose setting is ``setting`` but for a longer budget, as rows scored like ``setting``'s runs: at its
    scoring ``step`` (the final evaluation) and over its late window, with diagnostics averaged over the updates up
    to ``step``. A longer run without an evaluation at ``step`` raises :class:`ReportError` naming it."""
    keys = dict(setting)
    budget = keys.get("n_timesteps")
    out = []
    if budget is None:
        return out
    for r in rows:
        other = dict(r["setting"])
        if other.get("n_timesteps", 0) <= budget or {**other, "n_timesteps": budget} != keys:
            continue
        if step not in r["record"]["eval"]["steps"]:
            raise missing_step(r["name"], step, budget)
        diagnostics = {column: full_lag_mean(r["record"], tag, until=step) for column, tag in DIAGNOSTICS.items()}
        out.append({**r, **diagnostics, **score(r["record"], step, budget)})
    return out


def fig_training_diagnostics(env: str, rows: List[Dict[str, Any]], out: Path, reps: int) -> Optional[Path]:
    """Per setting with several decoupled variants: evaluation return, within-update KL, ESS and the share of
    weights truncated or filtered over training (mean over seeds, 95 % bootstrap band)."""
    groups = cells(rows)
    settings = decoupled_variant_settings(groups)
    if not settings:
        return None
    plt = _plt()
    panels = [("eval", "evaluation return (learner)"), ("train/ppo_kl", "within-update KL (train/ppo_kl)"),
              ("train/is_ess", "effective sample size / n (train/is_ess)"),
              ("weights", "share of weights truncated or filtered (%)")]
    colors = _colors([v for _, v in groups])
    fig, axes = plt.subplots(len(panels), len(settings), figsize=(5.5 * len(settings), 3 * len(panels)),
                             squeeze=False)
    for j, setting in enumerate(settings):
        for variant in variant_order([v for s, v in groups if s == setting and v.startswith("decoupled")]):
            group = groups[(setting, variant)]
            for i, (tag, _) in enumerate(panels):
                ax = axes[i, j]
                if tag == "eval":
                    steps, curves = eval_curves(group)
                else:
                    names = ["train/is_weight_truncated", "train/is_weight_filtered"] if tag == "weights" else [tag]
                    steps, curves = _update_curves(group, names, 100 if tag == "weights" else 1)
                    if curves is None:
                        continue
                mean, lo, hi = curve_band(curves, reps)
                ax.plot(steps, mean, color=colors[variant], label=f"{variant} (n={len(group)})")
                ax.fill_between(steps, lo, hi, color=colors[variant], alpha=0.2)
        axes[0, j].set_title(setting_label(setting))
        for i, (_, label) in enumerate(panels):
            axes[i, j].set_ylabel(label, fontsize=8)
            axes[i, j].set_xlabel("environment steps")
            axes[i, j].grid(alpha=0.3)
        axes[0, j].legend(fontsize=7)
    return _save(fig, f"{env}: decoupled variants over training (mean over seeds, 95 % bootstrap band)",
                 out / f"decoupled_{_slug(env)}.png")


def _update_curves(group: List[Dict[str, Any]], tags: List[str], scale: float):
    """Steps and seeds x updates of ``scale`` times the sum of ``tags`` over the updates every run logged.

    A tag a run never logged counts as 0 in that run (the truncated share in filter mode, or the filtered share in
    records made before filtering existed), so ``["train/is_weight_truncated", "train/is_weight_filtered"]`` gives
    the share of weights each variant changed, whichever mode it ran in. Updates where a logged tag has no value
    are left out. Returns ``(None, None)`` when no run logged any of ``tags``."""
    series = []
    for r in group:
        updates = r["record"]["updates"]
        logged = [t for t in tags if updates.get(t) and any(v is not None for v in updates[t])]
        if not logged:
            return None, None
        values = np.array([[np.nan if v is None else v for v in updates[t]] for t in logged], dtype=float)
        series.append((updates["step"], scale * values.sum(axis=0)))
    n = min(len(s[0]) for s in series)
    curves = np.array([s[1][:n] for s in series])
    keep = ~np.isnan(curves).any(axis=0)
    return np.asarray(series[0][0][:n])[keep], curves[:, keep]


def _save(fig: Any, title: str, path: Path) -> Path:
    """Title (wrapped to the figure's width), layout, PNG, close: the end of every figure."""
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(title, width=max(40, int(fig.get_figwidth() * 10)))))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _errorbar_ci(ax: Any, xs: Sequence[float], samples: Sequence[Sequence[float]], reps: int, **kwargs: Any) -> None:
    """Means of ``samples`` at ``xs`` with their 95 % bootstrap CIs as error bars (``kwargs``: matplotlib's, e.g.
    another ``marker`` than the default circle)."""
    stats = [mean_ci(values, reps) for values in samples]
    err = np.array([[s[0] - s[1], s[2] - s[0]] for s in stats]).T
    ax.errorbar(xs, [s[0] for s in stats], yerr=np.nan_to_num(err), **{"marker": "o", "capsize": 3, **kwargs})


def _slug(text: str) -> str:
    return text.replace("/", "-")


# ----------------------------------------------------------------------------------------------------- report
def late_windows(rows: List[Dict[str, Any]]) -> str:
    """Where the runs of an env are scored and what their late window spans, per budget; a window wider than a
    quarter of the budget (too few evaluations for its 10 %) is flagged: there the late return describes more than
    the end of training, and the final evaluation is the one to read."""
    parts = []
    for budget in sorted({r["record"]["meta"]["n_timesteps"] for r in rows}):
        scored = [r for r in rows if r["record"]["meta"]["n_timesteps"] == budget and r["score_step"] is not None]
        if not scored:
            continue
        step = scored[0]["score_step"]
        window = late_window(scored[0]["record"], step, budget)
        text = (f"{budget:,}-step runs scored at step {step:,}, late window steps {window[0]:,}–{window[-1]:,} "
                f"({len(window)} evaluations)")
        if step - window[0] > budget / 4:
            text += (" — wider than a quarter of the budget (too few evaluations for its last 10 %): here the late "
                     "return averages much of training; read the final evaluation")
        parts.append(text)
    return ("; " + "; ".join(parts) + ".") if parts else "."


def coverage_note() -> str:
    """What a 5-seed bootstrap interval covers, from the committed simulation (bench/bootstrap_coverage.py)."""
    path = Path(__file__).resolve().parent.parent / "results" / "bootstrap_coverage" / "coverage.json"
    if not path.is_file():
        return "With 5 seeds such an interval covers the true mean less often than 95 %."
    cov = json.loads(path.read_text())["coverage"]
    return (f"With 5 seeds a nominal 95 % interval covers the true mean in {100 * cov['normal']['5']:.0f} % of "
            f"simulated studies of normal data and {100 * cov['bimodal']['5']:.0f} % of bimodal data like "
            "HalfCheetah's (`python bench/bootstrap_coverage.py`, results/bootstrap_coverage/).")


def write_report(results_dir: Path, reps: int = BOOTSTRAP_REPS) -> Path:
    """Write summary.md, summary.csv and figures/ for the study in ``results_dir``; returns summary.md's path."""
    warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)  # arch, via rliable
    results_dir = Path(results_dir)
    records = read_records(results_dir)
    if not records:
        raise ReportError(f"no records under {results_dir / 'runs'}: run the study's grid first")
    rows, setting_keys = run_rows(records)
    figures = results_dir / "figures"
    figures.mkdir(exist_ok=True)
    for old in figures.glob("*.png"):
        old.unlink()  # every figure is remade from the records: none is left from an earlier report
    columns = (["name", "env"] + setting_keys[1:] + ["variant", "algo", "seed", "late_eval", "final_eval",
                                               "score_step", "final_train", "entropy_late"]
               + list(DIAGNOSTICS) + ["steps", "wall_time_s", "code", "path", "cpu"])
    with open(results_dir / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in sorted(rows, key=lambda r: r["name"]):
            writer.writerow(["" if r.get(c) is None else (fmt(r[c], 6) if isinstance(r[c], float) else r[c])
                             for c in columns])
    study = results_dir.name
    codes = sorted({r["code"] for r in rows})
    versions = sorted({tuple(sorted(r["record"]["meta"]["versions"].items())) for r in rows})
    cpus = sorted({r["cpu"] for r in rows})
    # a seed batch's runs share one process: each record holds the batch's wall time, counted once here
    hours = sum((r["wall_time_s"] or 0) / len(r["record"]["meta"].get("batch_seeds") or [0]) for r in rows) / 3600
    lines = [f"# Study `{study}`", "",
             f"Written by `python sweep.py report results/{study}` from the {len(rows)} committed records in "
             f"`results/{study}/runs/` (nothing else is read"
             + ("; for one table also " + " and ".join(f"`results/{n}/runs/`" for n in BESIDE[study])
                if study in BESIDE else "")
             + "). Each record holds its run's command, config, code version, library versions and machine.", "",
             f"- code versions of the runs: {', '.join(f'`{c}`' for c in codes)}",
             f"- CPU models: {', '.join(cpus)}; {hours:.1f} h of training in all (one torch thread per run)",
             "- library versions: " + "; ".join(", ".join(f"{k} {v}" for k, v in vs) for vs in versions),
             "- training paths: " + ", ".join(sorted({r["path"] for r in rows})), "",
             "**Late evaluation return** (the headline): the mean of the learner's evaluations (deterministic "
             "actions, normalisation statistics frozen) over the last 10 % of the budget up to the scoring step, "
             f"at least {LATE_MIN_EVALS} of them. Under lag a deterministic learner's return can swing by hundreds "
             "between two evaluations one update apart; the swing is in the policy, not the episodes, so more "
             "episodes would not steady a single evaluation, and an average over the last evaluations does. "
             "**Final evaluation return** (secondary): the evaluation at the scoring step. **Scoring step**: every "
             "run of a table is scored at the same environment step, its budget's evaluation step (or the nearest "
             "before it, the same for all); a run without it stops the report with its name. **Training return**: "
             "the last `rollout/ep_rew_mean`, the return of the behaviour policy μ that acted (stale or exploring), "
             "not of the learner.", "",
             f"**Uncertainty.** Intervals are 95 % stratified-bootstrap CIs (rliable, {reps} resamples) over seeds. "
             + coverage_note() + " So beside every P(X > Y) stand exact tests (studies/stats.py): the exact "
             "permutation p of P(X > Y) over all splits of the pooled runs (5 against 5: 252 splits, smallest p "
             "0.008), and, over the seeds both arms ran (paired: the same seed gives both arms the same initial "
             "parameters and evaluation episodes), the mean per-seed difference with its exact sign-flip p (5 pairs: "
             "32 sign assignments, smallest p 0.0625, so five pairs can never reach 0.05). An interval marked "
             "*degenerate* has width 0: every resample gave the same value (P = 1 when every run of X beats every "
             "run of Y), which is agreement of the resamples, not certainty. The improvement-over-ppo table adjusts "
             "its late-return p-values within the table (Holm); every other table's tests are exploratory "
             "(uncorrected), to be read as leads, not findings.", "",
             "Diagnostics are means over the updates whose data reached "
             "the requested lag (the first K updates of a lag-K run are left out) and then over seeds: "
             "`behavior_kl` (KL(μ‖π) before each update), `ratio p99` (99th percentile of π/μ before each "
             "update), `would bound` (share of samples with A<0 and π/μ>c, c=3 unless set, for every arm), "
             "`bound active` (share where the c·A bound is active in the loss, dual-clip arms), `clip fraction` "
             "(SB3's), `ppo_kl`, `ESS`, `truncated`, `filtered` (decoupled arm's importance weights). "
             "`entropy, late` is the learner's policy entropy (SB3's `-entropy_loss`) over the last 10 % of the "
             "updates, then the mean over seeds: how sharp the trained policy ended (nats; differential entropy "
             "for continuous actions).", ""]
    beside = {name: run_rows(read_records(results_dir.parent / name))[0] for name in BESIDE.get(study, ())
              if (results_dir.parent / name / "runs").is_dir()}
    if beside:
        lines += ["## The dual-clip bound's activity beside " + " and ".join(f"`{n}`" for n in beside), "",
                  "This study's cells, and from " + " and ".join(f"`results/{n}/runs/`" for n in beside)
                  + " (read for this table only) the dualclip cells at c = 3, fixed lag and τ = 1, per task and "
                  "lag. Means over the updates with the full lag, then over seeds; `ratio max, largest` is the "
                  "largest π/μ that any update of any seed saw.", ""]
        lines += bound_activity_table({study: rows, **beside}) + [""]
    lines += async_section(rows, reps, figures)
    final_evals = read_final_evals(results_dir, records)
    tasks = task_rows(rows)
    if len(tasks) > 1:
        print("report: across tasks", file=sys.stderr, flush=True)
        scale, excluded = normalisation(tasks), aggregate_exclusions(tasks)
        lines += ["## Across tasks", "",
                  "The three arms at their defaults (fixed lag, τ = 1), each task at its longest budget with ppo at "
                  "lag 0. Per task: the late return, with P(X > ppo) at the same lag and its exact p (exploratory). "
                  "Across tasks: late returns normalised per task as (return − zero) / (one − zero), zero the mean "
                  "evaluation of the untrained policy (every run's evaluation at step 0), one ppo's mean late return "
                  "at lag 0 (" + "; ".join(f"{env}: zero {z:.4g}, one {o:.4g}" for env, (z, o) in scale.items())
                  + "".join(f"; {env}: left out of the aggregate, "
                            + excluded.get(env, "ppo at lag 0 is not above its untrained policy")
                            for env in tasks if env not in scale)
                  + "); rliable's IQM over runs × tasks and its probability of improvement over ppo (per task, "
                  "averaged), over the tasks that have the cell, each with the same number of seeds.", ""]
        lines += task_table(tasks, reps) + [""]
        path = fig_tasks_vs_lag(tasks, figures, reps)
        lines += [f"![{path.stem}](figures/{path.name})", ""]
        lines += ["Stability across tasks (exploratory): the same runs' best and final evaluation, how far they "
                  "ended below their best, and the deepest they fell below an earlier evaluation at any point up to "
                  "the scoring step (falls recovered from too), with P(X > ppo) of the deepest falls at the same lag "
                  "and its exact p (above 0.5: X fell deeper); how many updates (with the full lag) had a "
                  f"within-update KL (`train/ppo_kl`) above {KL_BURST:g}, seed by seed (n/a: ppo, stock SB3 PPO, "
                  "does not log it; dualclip's is the KL to μ, decoupled's to π_prox):", ""]
        lines += falls_table(tasks, reps) + [""]
        step, common = at_common_budget(tasks)
        if common:
            scale = normalisation(common)
            lines += [f"The same runs scored at {step:,} environment steps, the shortest budget of the tasks (late "
                      f"window the last {LATE_FRACTION:.0%} of it), so that every task has had the same number of "
                      "steps; normalised with ppo's lag-0 late return at that step ("
                      + "; ".join(f"{env}: zero {z:.4g}, one {o:.4g}" for env, (z, o) in scale.items()) + "):", ""]
            lines += task_table(common, reps) + [""]
    for env in sorted({r["env"] for r in rows}):
        print(f"report: {study}: {env}: tables ...", file=sys.stderr, flush=True)
        env_rows = [r for r in rows if r["env"] == env]
        groups = cells(env_rows)
        budgets = sorted({r["record"]["meta"]["n_timesteps"] for r in env_rows})
        print(f"report: {env}", file=sys.stderr, flush=True)
        lines += [f"## {env}", "", f"Budget: {', '.join(f'{b:,}' for b in budgets)} environment steps per run"
                  + late_windows(env_rows), ""]
        lines += cell_table(groups, reps) + [""]
        poi = improvement_table(groups, reps)
        if poi:
            lines += ["Each variant against ppo in the same setting: rliable's probability that a run of X has a "
                      "higher late return than a run of ppo (0.5 = no difference) with its exact permutation p "
                      "(Holm-adjusted within this table in brackets), the paired per-seed difference with its "
                      "sign-flip p, and P(X > ppo) on the final evaluation with its exact p (exploratory):",
                      ""] + poi + [""]
        same = same_computations(groups)
        if same:
            lines += ["**Not independent replicates.** Runs of two variants with the same seed whose evaluations are "
                      "identical, return for return, beyond the initial one, up to the step named: they were the "
                      "same computation until then (until the bound or a weight first acted, or until a resume), "
                      "so their difference there is 0 by construction, and no noise floor can be read from them. "
                      "A run identical to the end is no replicate at all:", ""] + same + [""]
        stability = stability_table(groups, reps)
        if stability:
            lines += ["Stability of the decoupled variants (settings with more than one), exploratory: the late "
                      "return against the default variant (truncate at 100) with exact and paired tests, the final "
                      "evaluation with P(X > decoupled); how far each run ended below its best evaluation, and the "
                      "deepest it fell at any point up to the scoring step below an earlier evaluation (including "
                      "falls it recovered from), with the exact p of the deepest falls against the default's; "
                      f"how many updates (with the full lag) had a within-update KL above {KL_BURST:g}, seed by "
                      "seed; and how many had every behaviour weight π_prox/μ at the floor e^−10 that the loss "
                      "clamps it to (π_prox has left μ's actions: the policy loss is weighted by e^−10 or less "
                      "throughout):", ""] + stability + [""]
        final = final_eval_table(groups, final_evals, reps)
        if final:
            lines += final + [""]
        c_table = c_sensitivity_table(env_rows, reps)
        if c_table:
            lines += ["Sensitivity to the dual-clip constant c (exploratory): dualclip runs by c and ppo per "
                      "setting; runs of the setting with a longer budget join scored at this budget's step, with "
                      "diagnostics up to it:", ""] + c_table + [""]
        for maker in (fig_curves, fig_final_vs_lag, fig_diagnostics_vs_lag, fig_c_sensitivity,
                      fig_training_diagnostics):
            print(f"report: {study}: {env}: {maker.__name__.removeprefix('fig_')} ...", file=sys.stderr, flush=True)
            path = maker(env, env_rows, figures, reps)
            if path is not None:
                lines += [f"![{path.stem}](figures/{path.name})", ""]
    missing = [r["name"] for r in rows if r["final_eval"] is None]
    if missing:
        lines += [f"Runs without a final evaluation (left out of the evaluation columns): {', '.join(missing)}", ""]
    (results_dir / "summary.md").write_text("\n".join(lines))
    return results_dir / "summary.md"


def main(argv: List[str]) -> int:
    from cli.common import OneLineParser

    p = OneLineParser(prog="sweep.py report", description="Write a study's report from its records.")
    p.add_argument("studies", nargs="+", metavar="results/STUDY", help="study folders with runs/*.json records")
    p.add_argument("--reps", type=int, default=BOOTSTRAP_REPS, help=f"bootstrap resamples (default {BOOTSTRAP_REPS})")
    args = p.parse_args(argv)
    if args.reps < 100:
        p.error(f"--reps {args.reps}: use at least 100 resamples (the published reports use {BOOTSTRAP_REPS})")

    for study in args.studies:
        if not (Path(study) / "runs").is_dir():
            p.error(f"{study} has no runs/ folder of records: pass a results/<study> folder written by sweep.py")
    for study in args.studies:
        try:
            print(f"report: {write_report(Path(study), args.reps)}")
        except ReportError as exc:
            print(f"sweep.py report: error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
