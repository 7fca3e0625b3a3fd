"""Does the seed-batched trainer learn as the single-run path does? A statistical check on three environments.

    python bench/seed_batch_check.py run --jobs 1     # both paths of ablations/seed_batch_check.yml, then the report
    python bench/seed_batch_check.py report           # results/seed_batch_check/summary.md from the records alone

The grid (dualclip, lag 2, rl-zoo3's tuned hyperparameters, 10 seeds per env, one evaluation of the learner at the
end with 10 episodes) runs twice through sweep.py: with ``--no-batch`` (one process per seed; records under
``results/seed_batch_check/single/``) and batched (the 10 seeds of an env in one process; records under
``results/seed_batch_check/batch/``). Batched seeds draw other random numbers than single runs, so the two are
compared in distribution: per env, the mean final evaluation return of each path with its 95 % bootstrap CI, the
probability that a batched run ends above a single run (rliable; 0.5 = no difference) with its CI, and a two-sided
Mann-Whitney U test. The wall time of each path is reported as measured (the machine may have been shared).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRID = ROOT / "ablations" / "seed_batch_check.yml"
OUT = ROOT / "results" / "seed_batch_check"
PATHS = {"batch": [], "single": ["--no-batch"]}


def run(jobs: int) -> int:
    """Both paths of the grid, each through sweep.py (records as runs finish; what is recorded is skipped)."""
    for name, extra in PATHS.items():
        cmd = [sys.executable, str(ROOT / "sweep.py"), str(GRID), "--study", f"seed_batch_check/{name}",
               "--jobs", str(jobs), "--no-report", "--runs-root", str(ROOT / "logs" / "sweeps"), *extra]
        print("$", " ".join(cmd[1:]), flush=True)
        code = subprocess.call(cmd, cwd=ROOT)
        if code != 0:
            return code
    return report()


def report(reps: int = 2000) -> int:
    """``summary.md`` and ``summary.csv`` from the records of both paths."""
    from studies import stats
    from studies.records import read_records
    from studies.report import eval_at, fmt_ci, fmt_p, improvement_ci, join_step, mean_ci

    records = {name: read_records(OUT / name) for name in PATHS}
    # every run of an env, on either path, is scored at the same evaluation step (the budget's)
    steps = {}
    for env in {rec["meta"]["env"] for recs in records.values() for rec in recs}:
        same_env = [rec for recs in records.values() for rec in recs if rec["meta"]["env"] == env]
        steps[env] = join_step(same_env, max(rec["meta"]["n_timesteps"] for rec in same_env))
    finals = {name: {} for name in PATHS}
    wall = {name: {} for name in PATHS}
    metas = []
    for name in PATHS:
        for rec in records[name]:
            meta = rec["meta"]
            metas.append(meta)
            finals[name].setdefault(meta["env"], []).append(eval_at(rec, steps[meta["env"]]))
            share = len(meta.get("batch_seeds") or [0])  # a batch's wall time is shared by its seeds
            wall[name][meta["env"]] = wall[name].get(meta["env"], 0.0) + meta["wall_time_s"] / share
    from studies.grid import load_grid

    expected: dict = {}
    for run in load_grid(GRID)[1]:
        expected[run.env] = expected.get(run.env, 0) + 1
    envs = sorted(set(finals["single"]) | set(finals["batch"]))
    if not envs:
        print(f"seed_batch_check.py: no records under {OUT}: run `python bench/seed_batch_check.py run` first",
              file=sys.stderr)
        return 1
    lines = ["# Seed-batched trainer vs single runs", "",
             "Written by `python bench/seed_batch_check.py report` from the records in `results/seed_batch_check/"
             "single/runs/` and `results/seed_batch_check/batch/runs/` (grid: `ablations/seed_batch_check.yml`: "
             "dualclip, lag 2, `hyperparams/ppo.yml`, 100k steps; each run scored by the learner's evaluation at "
             "the budget's step, the same for every run, over 10 deterministic episodes; a question of equality in "
             "distribution between two paths, so one evaluation per run, not the studies' late window). The exact p "
             "is the permutation p of P(batch > single).", "",
             f"- code versions: {', '.join(sorted({m['code'] for m in metas}))}; CPU: "
             f"{', '.join(sorted({m['machine']['cpu'] for m in metas}))}; one torch thread per process",
             "- library versions: " + ", ".join(f"{k} {v}" for k, v in sorted(metas[0]["versions"].items())), "",
             "| env | path | seeds | final eval return, mean [95 % CI] | P(batch > single) [95 % CI] | "
             "exact p | wall time (min) |",
             "|---|---|---|---|---|---|---|"]
    csv_rows = ["env,path,seeds,mean,ci_low,ci_high,wall_time_min"]
    verdicts = []
    for env in envs:
        single, batch = finals["single"].get(env, []), finals["batch"].get(env, [])
        poi, p_value, verdict = "", "", "too few seeds to compare"
        if len(single) > 1 and len(batch) > 1:
            point, lo, hi = improvement_ci(batch, single, reps=reps)
            poi = fmt_ci(point, lo, hi, digits=2)
            p_value = fmt_p(stats.exact_improvement_p(batch, single))  # permutation p of P(batch > single)
            verdict = (f"no difference detected (exact p {p_value}; the CI of P(batch > single) contains 0.5)"
                       if lo <= 0.5 <= hi else f"the paths may differ (exact p {p_value}; the CI excludes 0.5)")
        if min(len(single), len(batch)) < expected.get(env, 0):
            verdict = (f"INCOMPLETE ({len(batch)} batched and {len(single)} single of {expected[env]} seeds "
                       f"each recorded), so far: {verdict}")
        verdicts.append(f"{env}: {verdict}")
        for name, values in (("single", single), ("batch", batch)):
            if not values:
                continue
            point, lo, hi = mean_ci(values, reps=reps)
            lines.append(f"| {env} | {name} | {len(values)} | {fmt_ci(point, lo, hi)} | "
                         f"{poi if name == 'batch' else ''} | {p_value if name == 'batch' else ''} | "
                         f"{wall[name][env] / 60:.1f} |")
            csv_rows.append(f"{env},{name},{len(values)},{point:.6g},{lo:.6g},{hi:.6g},{wall[name][env] / 60:.3f}")
    lines += ["", "Verdict per env:", "", *(f"- {v}" for v in verdicts), ""]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.md").write_text("\n".join(lines))
    (OUT / "summary.csv").write_text("\n".join(csv_rows) + "\n")
    print(f"written: {OUT / 'summary.md'}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run what is missing on both paths, then report")
    run_p.add_argument("--jobs", type=int, default=1, help="processes at a time (default 1)")
    rep = sub.add_parser("report", help="the summary from the committed records")
    rep.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (default 2000)")
    args = p.parse_args(argv)
    return run(args.jobs) if args.command == "run" else report(args.reps)


if __name__ == "__main__":
    sys.exit(main())
