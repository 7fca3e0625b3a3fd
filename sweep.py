"""Run a grid of train.py runs (algorithms x lags x seeds) and summarise them into results/<name>/.

    python sweep.py ablations/*.yml --jobs 2          # regenerate every published ablation
    python sweep.py my_grid --env HalfCheetah-v4 --algos ppo dualclip decoupled --lags 0 4 --seeds 1 \
        -n 200000 --jobs 2 -conf hyperparams/ppo_sb3_defaults.yml

Runs go to ``<runs-root>/<name>/<algo>_lag<K>_s<seed>`` (default runs-root: logs/sweeps, not committed); a run
whose ``model.zip`` exists is finished and skipped, a run cut off mid-way continues from its checkpoint
(``train.py --resume``), so an interrupted sweep resumes where it stopped (a run cut off before its first checkpoint
is moved aside to ``<run>.interrupted-<time>`` and started again: nothing is overwritten). An existing run whose
``config.yml`` or seed differ from the grid's (say, another ``n_timesteps``) is refused, never reused.
``results/<name>/`` receives ``summary.csv``, ``summary.md`` and ``sweep.yml`` (the command, the grid, versions,
machine), all written by this script from the runs' TensorBoard events; every run of the grid is listed with its
status, unfinished ones too, and the exit code is 1 while any is unfinished. ``--summarise-only`` rebuilds them
(and refuses to, leaving results/ as they are, when no run of the grid has finished).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

from agents.cli import OneLineParser, code_version, machine_info

HERE = Path(__file__).resolve().parent
#: TensorBoard scalars summarised per run: (column, tag, how)
COLUMNS = (
    ("final_return", "rollout/ep_rew_mean", "last"),
    ("best_return", "rollout/ep_rew_mean", "max"),
    ("behavior_kl", "train/behavior_kl", "mean"),
    ("ratio_p99", "train/ratio_p99", "mean"),
    ("would_bound", "train/dual_clip_would_bound", "mean"),
    ("pg_clipfrac_lower", "train/pg_clipfrac_lower", "mean"),
    ("is_weight_truncated", "train/is_weight_truncated", "mean"),
    ("fps", "time/fps", "last"),
)


GRID_KEYS = ("env", "algos", "lags", "lag_mode", "seeds", "n_timesteps", "hyperparams", "conf_file")
#: defaults of the grid flags for a sweep given by name (a grid file sets its own)
GRID_DEFAULTS = {"algos": ["ppo", "dualclip", "decoupled"], "lags": [0], "lag_mode": "fixed", "seeds": [1],
                 "hyperparams": [], "conf_file": None}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = OneLineParser(prog="sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="+", help="ablations/*.yml grid files, or one sweep name with the grid flags")
    p.add_argument("--env", default=None)
    p.add_argument("--algos", nargs="+", default=None, help="default: ppo dualclip decoupled")
    p.add_argument("--lags", nargs="+", type=int, default=None, help="default: 0")
    p.add_argument("--lag-mode", default=None, help="default: fixed")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 1")
    p.add_argument("-n", "--n-timesteps", type=int, default=None)
    p.add_argument("-params", "--hyperparams", nargs="+", default=None, metavar="KEY:VALUE")
    p.add_argument("-conf", "--conf-file", default=None)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each pinned to 1 torch thread)")
    p.add_argument("--save-freq", type=int, default=20_000, help="checkpoint every N steps (resume unit)")
    p.add_argument("--runs-root", default="logs/sweeps")
    p.add_argument("--results-root", default=str(HERE / "results"))
    p.add_argument("--summarise-only", action="store_true")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: use 1 or more parallel runs")
    files = [t for t in args.targets if t.endswith((".yml", ".yaml"))]
    given = [k for k in GRID_KEYS if getattr(args, k) is not None]
    if files and given:
        p.error(f"--{given[0].replace('_', '-')} with a grid file: the file sets the grid; edit it or name a sweep")
    if not files and len(args.targets) > 1:
        p.error(f"several targets {' '.join(args.targets)}: give grid files (*.yml) or one sweep name")
    args.specs = [grid_spec(p, args, target) for target in args.targets]
    return args


def grid_spec(p: argparse.ArgumentParser, args: argparse.Namespace, target: str) -> argparse.Namespace:
    """One sweep: a YAML grid file (its stem is the name; keys as the grid flags) or a name plus the flags."""
    import yaml

    from agents import ALGOS, LAG_MODES

    spec = argparse.Namespace(**vars(args))
    if target.endswith((".yml", ".yaml")):
        if not Path(target).is_file():
            p.error(f"grid file {target} not found: pass an existing ablations/*.yml")
        try:
            table = yaml.safe_load(Path(target).read_text()) or {}
        except yaml.YAMLError as exc:
            p.error(f"grid file {target} is not valid YAML ({str(exc).splitlines()[0]}): fix the file")
        if not isinstance(table, dict):
            p.error(f"grid file {target} must be a mapping of {', '.join(GRID_KEYS)}")
        unknown = sorted(set(table) - set(GRID_KEYS))
        if unknown:
            p.error(f"{target}: unknown keys {', '.join(unknown)}: use {', '.join(GRID_KEYS)}")
        for key in GRID_KEYS:
            setattr(spec, key, table.get(key))
        spec.name = Path(target).stem
    else:
        spec.name = target
    for key, value in GRID_DEFAULTS.items():
        if getattr(spec, key) is None:
            setattr(spec, key, value)
    where = f"sweep {spec.name!r}"
    if not isinstance(spec.env, str) or not _is_int(spec.n_timesteps) or spec.n_timesteps < 1:
        p.error(f"{where} needs --env and a positive -n (or a grid file that sets env and n_timesteps)")
    for key, ok, fix in (
        ("algos", lambda v: v in ALGOS, f"choose from {', '.join(sorted(ALGOS))}"),
        ("lags", lambda v: _is_int(v) and v >= 0, "use non-negative integers, e.g. [0, 4]"),
        ("seeds", _is_int, "use integers, e.g. [1, 2, 3]"),
        ("hyperparams", lambda v: isinstance(v, str), "use key:value strings, e.g. ['n_epochs:10']"),
    ):
        values = getattr(spec, key)
        if not isinstance(values, list) or not values and key != "hyperparams":
            p.error(f"{where}: {key}={values!r} must be a list: {fix}")
        bad = [v for v in values if not ok(v)]
        if bad:
            p.error(f"{where}: {key} value {bad[0]!r}: {fix}")
    if spec.lag_mode not in LAG_MODES:
        p.error(f"{where}: lag_mode {spec.lag_mode!r}: choose from {', '.join(LAG_MODES)}")
    return spec


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def run_name(algo: str, lag: int, seed: int) -> str:
    return f"{algo}_lag{lag}_s{seed}"


def train_argv(args: argparse.Namespace, runs_dir: Path, algo: str, lag: int, seed: int) -> List[str]:
    """The train.py arguments of one run of the grid."""
    argv = ["--algo", algo, "--env", args.env, "-n", str(args.n_timesteps), "--seed", str(seed), "--policy-lag",
            str(lag), "--lag-mode", args.lag_mode, "-f", str(runs_dir), "--run-name", run_name(algo, lag, seed),
            "--verbose", "0", "--save-freq", str(args.save_freq)]
    if args.conf_file:
        argv += ["-conf", args.conf_file]
    if args.hyperparams:
        argv += ["-params", *args.hyperparams]
    return argv


def settings_differ(run: Path, argv: List[str]) -> Optional[str]:
    """Why an existing run does not belong to this grid (its config.yml or seed differ), else None."""
    import yaml

    import train

    try:
        expected = yaml.safe_load(yaml.safe_dump(train.build_config(train.parse_args(argv))))
    except (train.UsageError, ValueError) as exc:  # the grid's own files changed or an extra is missing
        return f"this grid's config cannot be rebuilt here ({exc})"
    config = yaml.safe_load((run / "config.yml").read_text()) if (run / "config.yml").is_file() else {}
    saved = yaml.safe_load((run / "args.yml").read_text()) if (run / "args.yml").is_file() else {}
    keys = sorted(k for k in set(expected) | set(config) if expected.get(k) != config.get(k))
    if keys:
        k = keys[0]
        return f"{k} is {config.get(k)!r} there, {expected.get(k)!r} in this grid"
    seed = int(argv[argv.index("--seed") + 1])
    if saved.get("seed") != seed:
        return f"seed is {saved.get('seed')!r} there, {seed} in this grid"
    return None


def launch(args: argparse.Namespace, runs_dir: Path, algo: str, lag: int, seed: int) -> str:
    """Run (or continue, or skip) one run; returns a report line."""
    name = run_name(algo, lag, seed)
    run = runs_dir / name
    argv = train_argv(args, runs_dir, algo, lag, seed)
    if (run / "model.zip").is_file() or (run / "checkpoint.pkl").is_file():
        differ = settings_differ(run, argv)
        if differ:
            return f"{name}: REFUSED, the existing run has other settings ({differ}): use another --runs-root"
    if (run / "model.zip").is_file():
        return f"{name}: done earlier, skipped"
    if (run / "checkpoint.pkl").is_file():  # cut off mid-way: continue from its checkpoint
        cmd = [sys.executable, str(HERE / "train.py"), "--resume", str(run)]
    else:
        if run.exists():  # cut off before its first checkpoint: keep it aside, start again
            run.rename(run.with_name(f"{name}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}"))
        cmd = [sys.executable, str(HERE / "train.py"), *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.time()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    status = "ok" if res.returncode == 0 else f"FAILED rc={res.returncode}: {res.stderr.strip()[-300:]}"
    return f"{name}: {status} ({time.time() - start:.0f} s)"


def summarise_run(run: Path) -> Dict[str, object]:
    """The COLUMNS of one finished run (floats; "" where the tag is absent), its steps and code version."""
    import yaml
    from tbparse import SummaryReader

    scalars = SummaryReader(str(run)).scalars
    row: Dict[str, object] = {}
    for column, tag, how in COLUMNS:
        values = scalars[scalars.tag == tag].sort_values("step")["value"]
        if len(values) == 0:
            row[column] = ""
            continue
        row[column] = float({"last": values.iloc[-1], "max": values.max(), "mean": values.mean()}[how])
    row["steps"] = int(scalars["step"].max()) if len(scalars) else 0
    args = yaml.safe_load((run / "args.yml").read_text()) if (run / "args.yml").is_file() else {}
    row["code"] = args.get("code", "")  # the code version train.py ran
    return row


def run_status(run: Path, argv: List[str]) -> str:
    """finished, incomplete (a checkpoint, no model), missing, or "other settings (...)" for a run of another grid."""
    if not (run / "model.zip").is_file():
        return "incomplete" if (run / "checkpoint.pkl").is_file() else "missing"
    differ = settings_differ(run, argv)
    return f"other settings ({differ})" if differ else "finished"


def fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


#: columns averaged over seeds in the per-arm table
ARM_COLUMNS = ("final_return", "behavior_kl", "ratio_p99", "would_bound", "pg_clipfrac_lower", "is_weight_truncated")


def by_arm(rows: List[Dict[str, object]]) -> List[str]:
    """Markdown table: per (algo, lag), mean +- sample std over the finished seeds of ARM_COLUMNS."""
    import statistics

    arms: Dict[tuple, List[Dict[str, object]]] = {}
    for row in rows:
        arms.setdefault((row["algo"], row["lag"]), []).append(row)
    lines = ["| algo | lag | seeds finished | " + " | ".join(ARM_COLUMNS) + " |",
             "|" + "---|" * (3 + len(ARM_COLUMNS))]
    for (algo, lag), group in arms.items():
        done = [r for r in group if r["status"] == "finished"]
        cells = []
        for column in ARM_COLUMNS:
            values = [r[column] for r in done if isinstance(r[column], float)]
            if not values:
                cells.append("")
            elif len(values) == 1:
                cells.append(f"{values[0]:.4g}")
            else:
                cells.append(f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}")
        lines.append(f"| {algo} | {lag} | {len(done)} of {len(group)} | " + " | ".join(cells) + " |")
    return ["Mean ± sample standard deviation over the finished seeds:", ""] + lines


def summarise(args: argparse.Namespace, runs_dir: Path, out_dir: Path, argv: List[str], code: str) -> Optional[int]:
    """Write results/<name>/ from the runs; returns the number of unfinished runs (all of them are listed), or None
    (and writes nothing) when no run of the grid has finished."""
    import csv

    import gymnasium
    import stable_baselines3
    import torch
    import yaml

    rows = []
    for algo, lag, seed in itertools.product(args.algos, args.lags, args.seeds):
        run = runs_dir / run_name(algo, lag, seed)
        status = run_status(run, train_argv(args, runs_dir, algo, lag, seed))
        row = summarise_run(run) if status == "finished" else {c: "" for c, _, _ in COLUMNS}
        rows.append({"algo": algo, "lag": lag, "seed": seed, "status": status, "steps": "", "code": "", **row})
    finished = sum(r["status"] == "finished" for r in rows)
    if finished == 0:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = ["algo", "lag", "seed", "status", "steps"] + [c for c, _, _ in COLUMNS] + ["code"]
    with open(out_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: fmt(r[k]) for k in fields} for r in rows)
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in fields) + " |" for r in rows]
    meta = {
        "command": shlex.join(["python", "sweep.py", *argv]),
        "grid": {key: getattr(args, key) for key in GRID_KEYS},
        "save_freq": args.save_freq,
        "runs_dir": str(runs_dir),
        "finished_runs": finished,
        "grid_runs": len(rows),
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "code_at_start": code,
        "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                     "stable_baselines3": stable_baselines3.__version__, "gymnasium": gymnasium.__version__},
        "machine": {**machine_info(), "torch_threads_per_run": 1, "parallel_runs": args.jobs},
        "columns": {c: f"{how} of {tag}" for c, tag, how in COLUMNS},
    }
    with open(out_dir / "sweep.yml", "w") as f:
        yaml.safe_dump(meta, f, sort_keys=False)
    header = [f"# Sweep `{args.name}`: {args.env}, {args.n_timesteps} steps per run", "",
              f"Written by `{meta['command']}` (see sweep.yml for the grid, versions and machine). "
              "Columns: " + "; ".join(f"{c} = {d}" for c, d in meta["columns"].items()) + ".", ""]
    (out_dir / "summary.md").write_text("\n".join(header + by_arm(rows) + ["", "Every run:", ""] + lines) + "\n")
    return len(rows) - finished


def main(argv: Optional[List[str]] = None) -> int:
    """Run every grid, then summarise it; exit code 1 when a run failed or is unfinished (all are listed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    code = code_version()  # taken before the runs start: the code they ran
    unfinished = 0
    for spec in args.specs:
        runs_dir = Path(spec.runs_root) / spec.name
        out_dir = Path(spec.results_root) / spec.name
        if not spec.summarise_only:
            runs_dir.mkdir(parents=True, exist_ok=True)
            grid = list(itertools.product(spec.algos, spec.lags, spec.seeds))
            with ThreadPoolExecutor(max_workers=spec.jobs) as pool:
                for line in pool.map(lambda g: launch(spec, runs_dir, *g), grid):
                    print(line, flush=True)
        missing = summarise(spec, runs_dir, out_dir, argv, code)
        if missing is None:
            print(f"sweep.py: no finished run of {spec.name} under {runs_dir}: run the sweep first "
                  f"({out_dir} left as it was)", file=sys.stderr)
            unfinished += 1
            continue
        unfinished += missing
        print(f"summary: {out_dir / 'summary.md'}" + (f" ({missing} runs unfinished, listed)" if missing else ""))
    return 1 if unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
