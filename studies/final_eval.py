"""The final policy of every recorded run, evaluated both ways: greedy (deterministic) and sampled (stochastic).

    python sweep.py final-eval results/minatar_study --runs-root logs/sweeps      # evaluate what is missing
    python sweep.py report results/minatar_study                                  # the report adds its table

The learner evaluations in a record (``eval``, every ``eval_freq`` steps) take the greedy action. For a discrete
policy that is a different policy from the one trained: the sampled policy keeps its entropy (ent_coef 0.01), and a
greedy one can score more (no exploratory mistakes) or less (it can loop, e.g. never releasing the ball). Both
matter; the studies headline the greedy one because it is the periodic one, and this command measures how far the
other differs at the end of each run. It is run after training, from the run folders (``model.zip``, and
``vecnormalize.pkl`` where the run normalised observations), so it covers every run whose folder is still on the
machine, including runs recorded before it existed, and changes nothing in training or its records.

Each evaluated run gets ``results/<study>/final_eval/<name>.json`` (committed beside the run's record): for each
mode, the per-episode game scores of ``--episodes`` whole episodes (evaluate.py's own function, evaluation seed
``EVAL_SEED_OFFSET + the run's seed``: the same episodes for every arm of a seed, other episodes than training's),
the model's step count (checked against the record's: a folder whose model is not the recorded one is refused),
the command and the versions. A run with a final-evaluation record is skipped, so the command continues where it
stopped; runs without a folder here are listed, not evaluated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from studies.records import read_records
from studies.stats import paired_difference

#: the evaluation seed of a run is this plus its training seed (far from the grids' training seeds 1-5)
EVAL_SEED_OFFSET = 1000
#: the two ways of acting, in the order the table shows them
MODES = ("deterministic", "stochastic")


def final_eval_path(results_dir: Path, name: str) -> Path:
    return Path(results_dir) / "final_eval" / f"{name}.json"


def evaluate_run(run_dir: Path, episodes: int, seed: int) -> Dict[str, Any]:
    """evaluate.py's evaluation of ``run_dir``'s final model, once per mode, with the same seed."""
    from evaluate import evaluate  # the top-level script's function: one evaluation code path for the suite

    out: Dict[str, Any] = {}
    for mode in MODES:
        args = argparse.Namespace(path=str(run_dir), episodes=episodes, deterministic=mode == "deterministic",
                                  seed=seed, video=None, env=None)
        res = evaluate(args)
        out[mode] = {"returns": res["returns"], "lengths": res["lengths"], "mean": res["mean"],
                     "eval_seconds": res["eval_seconds"]}
        out["model_timesteps"], out["versions"] = res["model_timesteps"], res["versions"]
    return out


def run_final_evals(results_dir: Path, runs_root: Path, episodes: int, argv: Sequence[str]) -> Tuple[int, List[str]]:
    """Evaluate every recorded run of the study that has a folder under ``runs_root/<study>`` and no final-evaluation
    record yet; return how many were written and the lines naming runs left out (no folder, or another model)."""
    results_dir, study = Path(results_dir), Path(results_dir).name
    written, left_out = 0, []
    for rec in read_records(results_dir):
        meta = rec["meta"]
        path = final_eval_path(results_dir, meta["name"])
        if path.is_file():
            continue
        run_dir = Path(runs_root) / study / meta["name"]
        if not (run_dir / "model.zip").is_file():
            left_out.append(f"{meta['name']}: no {run_dir / 'model.zip'} here")
            continue
        seed = EVAL_SEED_OFFSET + int(meta["seed"])
        res = evaluate_run(run_dir, episodes, seed)
        if res["model_timesteps"] != meta["steps"]:
            left_out.append(f"{meta['name']}: {run_dir}/model.zip is at step {res['model_timesteps']:,}, the record "
                            f"at {meta['steps']:,}: not the recorded model")
            continue
        record = {"name": meta["name"], "study": study, "episodes": episodes, "seed": seed,
                  "model_timesteps": res["model_timesteps"], "command": "python sweep.py final-eval " + " ".join(argv),
                  "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": res["versions"],
                  **{mode: res[mode] for mode in MODES}}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
        written += 1
        print(f"{meta['name']}: deterministic {res['deterministic']['mean']:.3g}, stochastic "
              f"{res['stochastic']['mean']:.3g} ({episodes} episodes each)", flush=True)
    return written, left_out


def read_final_evals(results_dir: Path) -> Dict[str, Dict[str, Any]]:
    """The study's final-evaluation records by run name (empty when it has none)."""
    folder = Path(results_dir) / "final_eval"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def final_eval_table(groups: Dict[Tuple[Any, str], List[Dict[str, Any]]], evals: Dict[str, Dict[str, Any]],
                     reps: int) -> List[str]:
    """Per cell (``studies.report.cells``), over its runs that have a final-evaluation record: the mean over seeds
    of each run's mean score in each mode with a bootstrap CI, and the paired per-seed difference stochastic −
    greedy with its exact sign-flip p (exploratory). Empty when no run of these cells has one."""
    from studies.report import _cell_order, fmt, fmt_ci, fmt_p, mean_ci, setting_label

    lines: List[str] = []
    for (setting, variant), group in sorted(groups.items(), key=_cell_order):
        found = [evals[r["name"]] for r in group if r["name"] in evals]
        if not found:
            continue
        means = {mode: [float(np.mean(e[mode]["returns"])) for e in found] for mode in MODES}
        diff, p = paired_difference(means["stochastic"], means["deterministic"])
        lines.append(f"| {setting_label(setting)} | {variant} | {len(found)} | "
                     f"{fmt_ci(*mean_ci(means['deterministic'], reps))} | {fmt_ci(*mean_ci(means['stochastic'], reps))}"
                     f" | {fmt(diff)} | {fmt_p(p)} |")
    if not lines:
        return []
    episodes = sorted({e["episodes"] for e in evals.values()})
    head = ("| setting | variant | runs | greedy, mean [95 % CI] | sampled, mean [95 % CI] | "
            "mean sampled − greedy (paired) | sign-flip p |")
    return [f"The final policy of each run, greedy (deterministic) and sampled (stochastic) actions, "
            f"{'/'.join(map(str, episodes))} whole episodes each (`python sweep.py final-eval`, records in "
            "`final_eval/`; exploratory): a run's score is its mean over the episodes.", "",
            head, "|" + "---|" * (head.count("|") - 1)] + lines


def main(argv: List[str]) -> int:
    from cli.common import OneLineParser

    p = OneLineParser(prog="sweep.py final-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("study", metavar="results/STUDY", help="a study folder with runs/*.json records")
    p.add_argument("--runs-root", default="logs/sweeps", help="parent of the run folders (default logs/sweeps)")
    p.add_argument("--episodes", type=int, default=20, help="whole episodes per mode (default 20)")
    p.add_argument("--commit", action="store_true", help="git-commit the new final-evaluation records at the end")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error(f"--episodes {args.episodes}: use 1 or more")
    if not (Path(args.study) / "runs").is_dir():
        p.error(f"{args.study} has no runs/ folder of records: pass a results/<study> folder written by sweep.py")
    if not (Path(args.runs_root) / Path(args.study).name).is_dir():
        p.error(f"--runs-root {args.runs_root}: no {Path(args.study).name}/ run folders there: pass the runs root "
                "the sweep trained in")
    written, left_out = run_final_evals(Path(args.study), Path(args.runs_root), args.episodes, argv)
    for line in left_out:
        print(f"left out: {line}")
    print(f"final-eval: {written} written, {len(left_out)} left out")
    if args.commit and written:
        from sweep import commit_record

        error = commit_record(Path(args.study) / "final_eval", f"{args.study}: final evaluations of {written} runs")
        print("committed" if error is None else f"NOT committed ({error})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
