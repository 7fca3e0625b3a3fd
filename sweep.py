"""Run a grid of train.py runs (algorithms x lags x seeds) and summarise them into results/<name>/.

    python sweep.py ablations/*.yml --jobs 2          # regenerate every published ablation
    python sweep.py my_grid --env HalfCheetah-v4 --algos ppo dualclip decoupled --lags 0 4 --seeds 1 \
        -n 200000 --jobs 2 -conf hyperparams/ppo_sb3_defaults.yml

Runs go to ``<runs-root>/<name>/<algo>_lag<K>_s<seed>`` (default runs-root: logs/sweeps, not committed); a run
whose ``model.zip`` exists is finished and skipped, a run cut off mid-way continues from its checkpoint
(``train.py --resume``), so an interrupted sweep resumes where it stopped (a run cut off before its first checkpoint
is moved aside to ``<run>.interrupted-<time>`` and started again: nothing is overwritten).
``results/<name>/`` receives ``summary.csv``, ``summary.md`` and ``sweep.yml`` (the command, versions, machine),
all written by this script from the runs' TensorBoard events. ``--summarise-only`` rebuilds them.
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

from agents.cli import OneLineParser, code_version

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


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = OneLineParser(prog="sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="+", help="ablations/*.yml grid files, or one sweep name with the grid flags")
    p.add_argument("--env", default=None)
    p.add_argument("--algos", nargs="+", default=["ppo", "dualclip", "decoupled"])
    p.add_argument("--lags", nargs="+", type=int, default=[0])
    p.add_argument("--lag-mode", default="fixed")
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("-n", "--n-timesteps", type=int, default=None)
    p.add_argument("-params", "--hyperparams", nargs="+", default=[], metavar="KEY:VALUE")
    p.add_argument("-conf", "--conf-file", default=None)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each pinned to 1 torch thread)")
    p.add_argument("--save-freq", type=int, default=20_000, help="checkpoint every N steps (resume unit)")
    p.add_argument("--runs-root", default="logs/sweeps")
    p.add_argument("--results-root", default=str(HERE / "results"))
    p.add_argument("--summarise-only", action="store_true")
    args = p.parse_args(argv)
    args.specs = [grid_spec(p, args, target) for target in args.targets]
    return args


def grid_spec(p: argparse.ArgumentParser, args: argparse.Namespace, target: str) -> argparse.Namespace:
    """One sweep: a YAML grid file (its stem is the name; keys as the grid flags) or a name plus the flags."""
    import yaml

    spec = argparse.Namespace(**vars(args))
    if target.endswith((".yml", ".yaml")):
        if not Path(target).is_file():
            p.error(f"grid file {target} not found: pass an existing ablations/*.yml")
        table = yaml.safe_load(Path(target).read_text()) or {}
        unknown = sorted(set(table) - set(GRID_KEYS))
        if unknown:
            p.error(f"{target}: unknown keys {', '.join(unknown)}: use {', '.join(GRID_KEYS)}")
        for key, value in table.items():
            setattr(spec, key, value)
        spec.name = Path(target).stem
    else:
        spec.name = target
    if spec.env is None or spec.n_timesteps is None:
        p.error(f"sweep {spec.name!r} needs --env and -n (or a grid file that sets env and n_timesteps)")
    return spec


def run_name(algo: str, lag: int, seed: int) -> str:
    return f"{algo}_lag{lag}_s{seed}"


def launch(args: argparse.Namespace, runs_dir: Path, algo: str, lag: int, seed: int) -> str:
    name = run_name(algo, lag, seed)
    run = runs_dir / name
    if (run / "model.zip").is_file():
        return f"{name}: done earlier, skipped"
    if (run / "checkpoint.pkl").is_file():  # cut off mid-way: continue from its checkpoint
        cmd = [sys.executable, str(HERE / "train.py"), "--resume", str(run)]
    else:
        if run.exists():  # cut off before its first checkpoint: keep it aside, start again
            run.rename(run.with_name(f"{name}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}"))
        cmd = [sys.executable, str(HERE / "train.py"), "--algo", algo, "--env", args.env, "-n", str(args.n_timesteps),
               "--seed", str(seed), "--policy-lag", str(lag), "--lag-mode", args.lag_mode, "-f", str(runs_dir),
               "--run-name", name, "--verbose", "0", "--save-freq", str(args.save_freq)]
        if args.conf_file:
            cmd += ["-conf", args.conf_file]
        if args.hyperparams:
            cmd += ["-params", *args.hyperparams]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.time()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    status = "ok" if res.returncode == 0 else f"FAILED rc={res.returncode}: {res.stderr.strip()[-300:]}"
    return f"{name}: {status} ({time.time() - start:.0f} s)"


def summarise_run(run: Path) -> Dict[str, object]:
    import yaml
    from tbparse import SummaryReader

    scalars = SummaryReader(str(run)).scalars
    row: Dict[str, object] = {}
    for column, tag, how in COLUMNS:
        values = scalars[scalars.tag == tag].sort_values("step")["value"]
        if len(values) == 0:
            row[column] = ""
            continue
        value = {"last": values.iloc[-1], "max": values.max(), "mean": values.mean()}[how]
        row[column] = f"{value:.4g}"
    steps = scalars["step"].max() if len(scalars) else 0
    row["steps"] = int(steps)
    args = yaml.safe_load((run / "args.yml").read_text()) if (run / "args.yml").is_file() else {}
    row["code"] = args.get("code", "")  # the code version train.py ran
    return row


#: columns averaged over seeds in the per-arm table
ARM_COLUMNS = ("final_return", "behavior_kl", "would_bound", "pg_clipfrac_lower", "is_weight_truncated")


def by_arm(rows: List[Dict[str, object]]) -> List[str]:
    """Markdown table: per (algo, lag), mean +- sample std over seeds of ARM_COLUMNS, with the seed count."""
    import statistics

    arms: Dict[tuple, List[Dict[str, object]]] = {}
    for row in rows:
        arms.setdefault((row["algo"], row["lag"]), []).append(row)
    lines = ["| algo | lag | seeds | " + " | ".join(ARM_COLUMNS) + " |", "|" + "---|" * (3 + len(ARM_COLUMNS))]
    for (algo, lag), group in arms.items():
        cells = []
        for column in ARM_COLUMNS:
            values = [float(r[column]) for r in group if r[column] != ""]
            if not values:
                cells.append("")
            elif len(values) == 1:
                cells.append(f"{values[0]:.4g}")
            else:
                cells.append(f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}")
        lines.append(f"| {algo} | {lag} | {len(group)} | " + " | ".join(cells) + " |")
    return ["Mean ± sample standard deviation over seeds:", ""] + lines


def summarise(args: argparse.Namespace, runs_dir: Path, out_dir: Path, argv: List[str], code: str) -> None:
    import csv

    import gymnasium
    import stable_baselines3
    import torch
    import yaml

    rows = []
    for algo, lag, seed in itertools.product(args.algos, args.lags, args.seeds):
        run = runs_dir / run_name(algo, lag, seed)
        if (run / "model.zip").is_file():
            rows.append({"algo": algo, "lag": lag, "seed": seed, **summarise_run(run)})
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = ["algo", "lag", "seed", "steps"] + [c for c, _, _ in COLUMNS] + ["code"]
    with open(out_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(str(r[k]) for k in fields) + " |" for r in rows]
    meta = {
        "command": shlex.join(["python", "sweep.py", *argv]),
        "env": args.env,
        "n_timesteps": args.n_timesteps,
        "seeds": args.seeds,
        "hyperparams_overrides": args.hyperparams,
        "runs_dir": str(runs_dir),
        "finished_runs": len(rows),
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "code_at_start": code,
        "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                     "stable_baselines3": stable_baselines3.__version__, "gymnasium": gymnasium.__version__},
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads_per_run": 1, "parallel_runs": args.jobs},
        "columns": {c: f"{how} of {tag}" for c, tag, how in COLUMNS},
    }
    with open(out_dir / "sweep.yml", "w") as f:
        yaml.safe_dump(meta, f, sort_keys=False)
    header = [f"# Sweep `{args.name}`: {args.env}, {args.n_timesteps} steps per run", "",
              f"Written by `{meta['command']}` (see sweep.yml for versions and machine). "
              "Columns: " + "; ".join(f"{c} = {d}" for c, d in meta["columns"].items()) + ".", ""]
    (out_dir / "summary.md").write_text("\n".join(header + by_arm(rows) + ["", "Every run:", ""] + lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    code = code_version()  # taken before the runs start: the code they ran
    for spec in args.specs:
        runs_dir = Path(spec.runs_root) / spec.name
        out_dir = Path(spec.results_root) / spec.name
        if not spec.summarise_only:
            runs_dir.mkdir(parents=True, exist_ok=True)
            grid = list(itertools.product(spec.algos, spec.lags, spec.seeds))
            with ThreadPoolExecutor(max_workers=spec.jobs) as pool:
                for line in pool.map(lambda g: launch(spec, runs_dir, *g), grid):
                    print(line, flush=True)
        summarise(spec, runs_dir, out_dir, argv, code)
        print(f"summary: {out_dir / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
