"""The report of a study, from its committed records alone: ``python sweep.py report results/<study>``.

Writes into ``results/<study>/``: ``summary.md`` (tables and figures), ``summary.csv`` (one row per run) and PNG
figures under ``figures/``. Nothing else is read: no run folder, no event file.

Terms used throughout:

- a *setting* is what the data are (env, policy lag, lag mode, behaviour temperature, any other axis but the seed
  and the arm's own options); a *variant* is how they are used: the algorithm and its options (``dual_clip``,
  ``is_weight_mode``, ``is_weight_max``, ``loss_agg_mode``); options at their defaults are not shown in its label;
- the headline metric is the **final evaluation return**: the mean over episodes of the learner's last evaluation
  (deterministic actions, at the end of training); the training return (``rollout/ep_rew_mean``, the behaviour
  policy's) is a second column;
- diagnostics (``behavior_kl``, ratio p99, the share of samples the dual-clip bound acts on, ...) are averaged over
  the updates whose data reached the requested lag: the first K updates of a lag-K run have no snapshot that old
  and run at smaller lags, so they are left out (update index >= K);
- intervals are 95 % bootstrap confidence intervals from rliable (stratified bootstrap over seeds); curves show the
  mean over seeds with a 95 % bootstrap band; the aggregate view is rliable's IQM and probability of improvement.
"""

from __future__ import annotations

import csv
import math
import sys
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from studies.records import read_records

#: options of an arm (they make a variant); every other axis but the seed makes the setting
ARM_KEYS = ("algo", "dual_clip", "is_weight_mode", "is_weight_max", "loss_agg_mode")
#: option defaults, not shown in variant labels
ARM_DEFAULTS = {"is_weight_mode": "truncate", "is_weight_max": 100.0, "loss_agg_mode": "token-mean"}
DEFAULT_C = {"dualclip": 3.0}
#: setting keys with their defaults (a record without the axis has the default)
SETTING_DEFAULTS = {"policy_lag": 0, "lag_mode": "fixed", "behavior_temperature": 1.0}
#: diagnostics summarised per run: column -> (record tag, how to read it)
DIAGNOSTICS = {
    "behavior_kl": "train/behavior_kl",
    "ratio_p99": "train/ratio_p99",
    "would_bound": "train/dual_clip_would_bound",
    "bound_active": "train/pg_clipfrac_lower",
    "clip_fraction": "train/clip_fraction",
    "ppo_kl": "train/ppo_kl",
    "is_ess": "train/is_ess",
    "is_truncated": "train/is_weight_truncated",
    "is_filtered": "train/is_weight_filtered",
}
#: the c-sensitivity table's late evaluation return averages the evaluations this many steps before the budget and up
#: to it (the last four of a 25k-step evaluation interval)
LATE_WINDOW = 75_000
#: a within-update KL (``train/ppo_kl``) above this counts as a burst in the stability table (the median per run is
#: 0.02-0.05 in the MuJoCo study)
KL_BURST = 0.3
#: bootstrap resamples per interval (``sweep.py report --reps``)
BOOTSTRAP_REPS = 2000
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
    if row.get("loss_agg_mode") not in (None, "token-mean"):
        parts.append(str(row["loss_agg_mode"]))
    return " ".join(parts)


def setting_label(setting: Tuple[Tuple[str, Any], ...]) -> str:
    names = {"policy_lag": "lag", "behavior_temperature": "τ", "lag_mode": "mode", "n_timesteps": "steps"}
    shown = [(k, v) for k, v in setting if k != "env" and not (k in SETTING_DEFAULTS and k != "policy_lag"
                                                               and v == SETTING_DEFAULTS[k])]
    return ", ".join(f"{names.get(k, k)} {v:g}" if isinstance(v, float) else f"{names.get(k, k)} {v}"
                     for k, v in shown) or "default"


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


def final_eval(record: Dict[str, Any]) -> Optional[float]:
    returns = record["eval"]["returns"]
    if not returns or record["eval"]["steps"][-1] < record["meta"]["n_timesteps"]:
        return None
    return float(np.mean(returns[-1]))


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
        row["final_eval"] = final_eval(rec)
        row["final_train"] = ep[-1]
        for column, tag in DIAGNOSTICS.items():
            row[column] = full_lag_mean(rec, tag)
        row.update(steps=meta["steps"], wall_time_s=meta["wall_time_s"], code=meta["code"], path=meta["path"],
                   cpu=meta["machine"]["cpu"])
        row["record"] = rec
        rows.append(row)
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


def iqm_ci(values: Sequence[float], reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Tuple[float, float, float]:
    from rliable import metrics

    arr = np.asarray(values, dtype=float).reshape(-1, 1)
    if len(arr) < 2:
        return float(arr.mean()), math.nan, math.nan
    point, interval = _interval_estimates({"x": arr}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=reps,
                                          seed=seed)
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def improvement_ci(x: Sequence[float], y: Sequence[float], reps: int = BOOTSTRAP_REPS,
                   seed: int = 0) -> Tuple[float, float, float]:
    """rliable's probability that a run of X beats a run of Y (ties count half), with its 95 % interval."""
    from rliable import metrics

    a, b = (np.asarray(v, dtype=float).reshape(-1, 1) for v in (x, y))
    point, interval = _interval_estimates({"p": (a, b)}, metrics.probability_of_improvement, reps=reps, seed=seed)
    lo, hi = np.ravel(interval["p"])
    return float(np.ravel(point["p"])[0]), float(lo), float(hi)


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
    return fmt(point, digits) + ("" if math.isnan(lo) else f" [{fmt(lo, digits)}, {fmt(hi, digits)}]")


def pct(x: Optional[float]) -> str:
    return "" if x is None else f"{100 * x:.3g} %"


def group_mean(group: List[Dict[str, Any]], column: str) -> Optional[float]:
    """Mean of a row column over a cell's runs that have it, None when none has."""
    vals = [r[column] for r in group if r[column] is not None]
    return float(np.mean(vals)) if vals else None


def cell_table(groups: Dict[Tuple[Any, str], List[Dict[str, Any]]], reps: int) -> List[str]:
    head = ("| setting | variant | seeds | final eval return, mean [95 % CI] | IQM [95 % CI] | final training return "
            "(μ's), mean ± sd | behavior_kl | ratio p99 | would bound (c) | bound active | clip fraction | "
            "ppo_kl | ESS | truncated | filtered |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (setting, variant), group in sorted(groups.items(), key=_cell_order):
        finals = [r["final_eval"] for r in group if r["final_eval"] is not None]
        train = [r["final_train"] for r in group if r["final_train"] is not None]
        m = mean_ci(finals, reps) if finals else (math.nan,) * 3
        q = iqm_ci(finals, reps) if finals else (math.nan,) * 3
        avg = partial(group_mean, group)

        sd = f" ± {np.std(train, ddof=1):.3g}" if len(train) > 1 else ""
        lines.append(
            f"| {setting_label(setting)} | {variant} | {len(group)} | {fmt_ci(*m)} | {fmt_ci(*q)} | "
            f"{fmt(float(np.mean(train))) if train else ''}{sd} | {fmt(avg('behavior_kl'), 3)} | "
            f"{fmt(avg('ratio_p99'), 3)} | {pct(avg('would_bound'))} | {pct(avg('bound_active'))} | "
            f"{pct(avg('clip_fraction'))} | {fmt(avg('ppo_kl'), 3)} | {fmt(avg('is_ess'), 3)} | "
            f"{pct(avg('is_truncated'))} | {pct(avg('is_filtered'))} |")
    return lines


def setting_order(setting: Tuple[Tuple[str, Any], ...]) -> Tuple:
    """Sort key of a setting: numbers numerically (lag 4 before lag 16), other values as text, None first."""
    return tuple((k, (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v)))
                 for k, v in setting)


def _cell_order(item: Tuple[Tuple[Any, str], Any]) -> Tuple:
    (setting, variant), _ = item
    algo = variant.split()[0]
    return (setting_order(setting), ALGO_ORDER.index(algo) if algo in ALGO_ORDER else len(ALGO_ORDER), variant)


def improvement_table(groups: Dict[Tuple[Any, str], List[Dict[str, Any]]], reps: int) -> List[str]:
    lines = ["| setting | variant X | P(X > ppo) [95 % CI] | seeds X / ppo |", "|---|---|---|---|"]
    settings = sorted({s for s, _ in groups}, key=setting_order)
    for setting in settings:
        base = [r["final_eval"] for r in groups.get((setting, "ppo"), []) if r["final_eval"] is not None]
        if len(base) < 2:
            continue
        for variant in variant_order([v for s, v in groups if s == setting]):
            if variant == "ppo":
                continue
            xs = [r["final_eval"] for r in groups[(setting, variant)] if r["final_eval"] is not None]
            if len(xs) < 2:
                continue
            p = improvement_ci(xs, base, reps)
            lines.append(f"| {setting_label(setting)} | {variant} | {fmt_ci(*p, digits=2)} | {len(xs)} / {len(base)} |")
    return lines if len(lines) > 2 else []


def decoupled_variant_settings(groups: Dict[Tuple[Any, str], List[Dict[str, Any]]]) -> List[Any]:
    """The settings that hold more than one decoupled variant (the decoupled-stability grid), in order."""
    settings = sorted({s for s, v in groups if v.startswith("decoupled")}, key=setting_order)
    return [s for s in settings if sum(v.startswith("decoupled") for t, v in groups if t == s) > 1]


def stability_table(groups: Dict[Tuple[Any, str], List[Dict[str, Any]]], reps: int) -> List[str]:
    """Per setting with several decoupled variants: each variant's final and late evaluation return with P(X >
    decoupled) (the default variant) for each, each seed's best and final evaluation, how far runs fell from their
    best evaluation by the end and at any point, and the within-update KL bursts."""
    lines = ["| setting | variant | seeds | final eval return, mean [95 % CI] | P(X > decoupled) [95 % CI] | "
             f"late eval return (steps budget−{LATE_WINDOW:,} to budget), mean [95 % CI] | P(X > decoupled), late | "
             "best eval → final eval, per seed | best eval − final eval, mean [95 % CI] | "
             "deepest fall below an earlier eval, mean [95 % CI] | "
             f"updates with ppo_kl > {KL_BURST:g}, per seed | max ppo_kl | ESS | truncated | filtered |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for setting in decoupled_variant_settings(groups):
        def scored(variant: str) -> List[Dict[str, Any]]:
            return sorted((r for r in groups.get((setting, variant), []) if r["final_eval"] is not None),
                          key=lambda r: r["seed"])

        def late(group: List[Dict[str, Any]]) -> List[float]:
            return [late_eval(r["record"], r["record"]["meta"]["n_timesteps"]) for r in group]

        base = scored("decoupled")
        base_late = late(base)
        for variant in variant_order([v for s, v in groups if s == setting and v.startswith("decoupled")]):
            group = scored(variant)
            if not group:
                continue
            finals, lates = [r["final_eval"] for r in group], late(group)
            curves = [np.array([np.mean(ret) for ret in r["record"]["eval"]["returns"]]) for r in group]
            drops = [curve.max() - r["final_eval"] for curve, r in zip(curves, group)]
            falls = [(np.maximum.accumulate(curve) - curve).max() for curve in curves]  # dips that recovered too
            best_final = ", ".join(f"{curve.max():.0f} → {r['final_eval']:.0f}" for curve, r in zip(curves, group))
            compare = variant != "decoupled" and len(base) > 1 and len(group) > 1
            p = improvement_ci(finals, [r["final_eval"] for r in base], reps) if compare else None
            p_late = improvement_ci(lates, base_late, reps) if compare else None
            kls = [full_lag_values(r["record"], "train/ppo_kl") for r in group]
            max_kl = max((max(k) for k in kls if k), default=None)
            lines.append(f"| {setting_label(setting)} | {variant} | {len(group)} | {fmt_ci(*mean_ci(finals, reps))} | "
                         f"{fmt_ci(*p, digits=2) if p else ''} | {fmt_ci(*mean_ci(lates, reps))} | "
                         f"{fmt_ci(*p_late, digits=2) if p_late else ''} | {best_final} | "
                         f"{fmt_ci(*mean_ci(drops, reps))} | {fmt_ci(*mean_ci(falls, reps))} | "
                         f"{', '.join(str(sum(v > KL_BURST for v in k)) for k in kls)} | "
                         f"{fmt(max_kl, 3)} | {fmt(group_mean(group, 'is_ess'), 3)} | "
                         f"{pct(group_mean(group, 'is_truncated'))} | {pct(group_mean(group, 'is_filtered'))} |")
    return lines if len(lines) > 2 else []


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
    """Final evaluation return against lag, one panel per setting. Up to seven variants share a lag (the MuJoCo
    study), so each variant sits at its own small offset around the lag's position (error bars never overlap), in a
    colour and marker of its own within the panel, with the legend beside the panel and the exact number of seeds
    (per lag when it differs)."""
    data = _by_lag(rows, "final_eval")
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
        ax.set_ylabel("final evaluation return (learner)")
        ax.set_title(f"{env}" + (f", {setting_label(rest)}" if setting_label(rest) != "default" else ""), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return _save(fig, "Final evaluation return against policy lag: mean over seeds, 95 % bootstrap CI",
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
        for r in _longer_runs(rows, setting):
            if r["algo"] == "dualclip" and r["dual_clip"] is not None and float(r["dual_clip"]) not in present:
                by_c.setdefault(float(r["dual_clip"]), []).append(r)
            elif r["variant"] == "ppo":
                ppo.append(r)
        if len(by_c) > 1:
            out[setting] = (by_c, ppo)
    return out


def late_eval(record: Dict[str, Any], budget: int, window: int = LATE_WINDOW) -> Optional[float]:
    """Mean evaluation return over the evaluations at steps ``budget - window`` to ``budget``: less noisy than the
    last evaluation alone where a learner's deterministic return swings from one evaluation to the next."""
    evals = record["eval"]
    kept = [np.mean(ret) for step, ret in zip(evals["steps"], evals["returns"]) if budget - window <= step <= budget]
    return float(np.mean(kept)) if kept else None


def _budget(setting: Tuple[Tuple[str, Any], ...], by_c: Dict[float, List[Dict[str, Any]]]) -> int:
    """The step budget of a c-sweep's setting (a setting key when the study mixes budgets)."""
    return dict(setting).get("n_timesteps") or next(iter(by_c.values()))[0]["record"]["meta"]["n_timesteps"]


def c_sensitivity_table(rows: List[Dict[str, Any]], reps: int) -> List[str]:
    """Final and late evaluation return, P(dualclip > ppo) and the bound's activity per c, with ppo's row per
    setting."""
    lines = ["| setting | variant | seeds | final eval return, mean [95 % CI] | P(X > ppo) [95 % CI] | "
             f"late eval return (steps budget−{LATE_WINDOW:,} to budget), mean [95 % CI] | P(X > ppo), late | "
             "bound active | behavior_kl | learner std at the budget, min–max over seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    groups = c_sensitivity_groups(rows)
    for setting, (by_c, ppo) in sorted(groups.items(), key=lambda kv: setting_order(kv[0])):
        budget = _budget(setting, by_c)
        base = [r["final_eval"] for r in ppo]
        base_late = [late_eval(r["record"], budget) for r in ppo]
        for c, group in [(None, ppo)] + sorted(by_c.items()):
            if not group:
                continue
            finals = [r["final_eval"] for r in group]
            late = [late_eval(r["record"], budget) for r in group]
            compare = c is not None and len(base) > 1 and len(finals) > 1
            p = improvement_ci(finals, base, reps) if compare else None
            p_late = improvement_ci(late, base_late, reps) if compare else None
            std = [v[-1] for v in (full_lag_values(r["record"], "train/std", until=budget) for r in group) if v]
            lines.append(f"| {setting_label(setting)} | {'ppo' if c is None else f'dualclip c={c:g}'} | "
                         f"{len(group)} | {fmt_ci(*mean_ci(finals, reps))} | {fmt_ci(*p, digits=2) if p else ''} | "
                         f"{fmt_ci(*mean_ci(late, reps))} | {fmt_ci(*p_late, digits=2) if p_late else ''} | "
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
        budget = _budget(setting, by_c)
        cs = sorted(by_c)
        n = min(len(by_c[c]) for c in cs)
        for ax, score in ((axes[0], lambda r: r["final_eval"]), (axes[1], lambda r: late_eval(r["record"], budget))):
            _errorbar_ci(ax, cs, [[score(r) for r in by_c[c]] for c in cs], reps, color=color,
                         label=f"dualclip, {setting_label(setting)} (n≥{n})")
            if ppo:
                ax.axhline(np.mean([score(r) for r in ppo]), color=color, ls="--", lw=1,
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
    axes[0].set_title("final evaluation: mean, 95 % bootstrap CI (longer runs: at this budget)", fontsize=9)
    axes[1].set_title(f"late evaluation (mean of evaluations at budget−{LATE_WINDOW:,} to budget)", fontsize=9)
    axes[2].set_ylabel("share of samples where c·A bounds the loss (%)")
    axes[2].set_title("how often the bound acts (updates with the full lag)", fontsize=9)
    return _save(fig, f"{env}: sensitivity to the dual-clip constant c",
                 out / f"c_sensitivity_{_slug(env)}.png")


def _longer_runs(rows: List[Dict[str, Any]], setting: Tuple[Tuple[str, Any], ...]) -> List[Dict[str, Any]]:
    """Runs whose setting is ``setting`` but for a longer budget, as rows whose ``final_eval`` is their evaluation at
    ``setting``'s budget and whose diagnostics are means over the updates up to it (runs without an evaluation at
    exactly that step are left out)."""
    keys = dict(setting)
    budget = keys.get("n_timesteps")
    out = []
    if budget is None:
        return out
    for r in rows:
        other = dict(r["setting"])
        if other.get("n_timesteps", 0) <= budget or {**other, "n_timesteps": budget} != keys:
            continue
        evals = r["record"]["eval"]
        if budget in evals["steps"]:
            diagnostics = {column: full_lag_mean(r["record"], tag, until=budget) for column, tag in DIAGNOSTICS.items()}
            out.append({**r, **diagnostics,
                        "final_eval": float(np.mean(evals["returns"][evals["steps"].index(budget)]))})
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
    """Title, layout, PNG, close: the end of every figure."""
    fig.suptitle(title)
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
def write_report(results_dir: Path, reps: int = BOOTSTRAP_REPS) -> Path:
    """Write summary.md, summary.csv and figures/ for the study in ``results_dir``; returns summary.md's path."""
    warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)  # arch, via rliable
    results_dir = Path(results_dir)
    records = read_records(results_dir)
    if not records:
        raise FileNotFoundError(f"no records under {results_dir / 'runs'}: run the study's grid first")
    rows, setting_keys = run_rows(records)
    figures = results_dir / "figures"
    figures.mkdir(exist_ok=True)
    for old in figures.glob("*.png"):
        old.unlink()  # every figure is remade from the records: none is left from an earlier report
    columns = (["name", "env"] + setting_keys[1:] + ["variant", "algo", "seed", "final_eval", "final_train"]
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
             f"`results/{study}/runs/` (nothing else is read). Each record holds its run's command, config, code "
             "version, library versions and machine.", "",
             f"- code versions of the runs: {', '.join(f'`{c}`' for c in codes)}",
             f"- CPU models: {', '.join(cpus)}; {hours:.1f} h of training in all (one torch thread per run)",
             "- library versions: " + "; ".join(", ".join(f"{k} {v}" for k, v in vs) for vs in versions),
             "- training paths: " + ", ".join(sorted({r["path"] for r in rows})), "",
             "**Final evaluation return**: mean return over the episodes of the learner's last evaluation "
             "(deterministic actions, normalisation statistics frozen, at the end of training). **Training "
             "return**: the last `rollout/ep_rew_mean`, the return of the behaviour policy μ that acted (stale or "
             "exploring), not of the learner. Intervals: 95 % stratified-bootstrap CIs (rliable, "
             f"{reps} resamples) over seeds. Diagnostics are means over the updates whose data reached "
             "the requested lag (the first K updates of a lag-K run are left out) and then over seeds: "
             "`behavior_kl` (KL(μ‖π) before each update), `ratio p99` (99th percentile of π/μ before each "
             "update), `would bound` (share of samples with A<0 and π/μ>c, c=3 unless set, for every arm), "
             "`bound active` (share where the c·A bound is active in the loss, dual-clip arms), `clip fraction` "
             "(SB3's), `ppo_kl`, `ESS`, `truncated`, `filtered` (decoupled arm's importance weights).", ""]
    for env in sorted({r["env"] for r in rows}):
        print(f"report: {study}: {env}: tables ...", file=sys.stderr, flush=True)
        env_rows = [r for r in rows if r["env"] == env]
        groups = cells(env_rows)
        budgets = sorted({r["record"]["meta"]["n_timesteps"] for r in env_rows})
        lines += [f"## {env}", "", f"Budget: {', '.join(f'{b:,}' for b in budgets)} environment steps per run.", ""]
        lines += cell_table(groups, reps) + [""]
        poi = improvement_table(groups, reps)
        if poi:
            lines += ["Probability of improvement over ppo in the same setting (rliable: the probability that a "
                      "run of X ends with a higher final evaluation return than a run of ppo; 0.5 = no difference):",
                      ""] + poi + [""]
        stability = stability_table(groups, reps)
        if stability:
            lines += ["Stability of the decoupled variants (settings with more than one): the final evaluation and "
                      "the late one (the mean of the evaluations over the last "
                      f"{LATE_WINDOW:,} steps), each with P(X > decoupled) against the default variant (truncate at "
                      "100); how far each run ended below its best evaluation, and the deepest it fell at any "
                      "point below an earlier evaluation (including falls it recovered from); "
                      f"how many updates (with the full lag) had a within-update KL above {KL_BURST:g}, seed by "
                      "seed:", ""] + stability + [""]
        c_table = c_sensitivity_table(env_rows, reps)
        if c_table:
            lines += ["Sensitivity to the dual-clip constant c: dualclip runs by c and ppo per setting; runs of the "
                      "setting with a longer budget join with their evaluation at this budget and diagnostics up "
                      "to it:", ""] + c_table + [""]
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
        print(f"report: {write_report(Path(study), args.reps)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
