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
the command and the versions, and the identity of the training record it belongs to (its ``recorded`` time and
step count). A model whose step count is not the record's is refused (its folder holds another run); a run whose
final-evaluation record belongs to the same training record is skipped, so the command continues where it stopped,
and one whose training record was replaced (a run trained again) is evaluated again; the report reads only
final-evaluation records that belong to the current training records. Runs without a folder here, or whose folder
cannot be evaluated, are listed, not evaluated.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from agents.files import atomic_write
from studies.records import commit_record, read_records

#: the evaluation seed of a run is this plus its training seed (far from the grids' training seeds 1-5)
EVAL_SEED_OFFSET = 1000
#: the two ways of acting, in the order the table shows them
MODES = ("deterministic", "stochastic")


def final_eval_path(results_dir: Path, name: str) -> Path:
    return Path(results_dir) / "final_eval" / f"{name}.json"


def belongs_to(final: Dict[str, Any], record: Dict[str, Any]) -> bool:
    """Whether a final-evaluation record was made from the model of this training record (the same run, recorded
    at the same time, at the same step)."""
    meta = record["meta"]
    return final.get("of_record") == {"recorded": meta["recorded"], "steps": meta["steps"]}


def evaluate_mode(run_dir: Path, episodes: int, seed: int, mode: str) -> Dict[str, Any]:
    """evaluate.py's evaluation of ``run_dir``'s final model in one mode (its own parser builds the arguments)."""
    from evaluate import evaluate, parse_args  # the top-level script: one evaluation code path for the suite

    flag = "--deterministic" if mode == "deterministic" else "--stochastic"
    return evaluate(parse_args([str(run_dir), "--episodes", str(episodes), "--seed", str(seed), flag]))


def final_eval_record(rec: Dict[str, Any], run_dir: Path, episodes: int, command: str) -> Dict[str, Any]:
    """Evaluate the final model in ``run_dir`` of the training record ``rec`` both ways; the final-evaluation record
    (not written). Raises evaluate.EvalError when the model cannot be evaluated or is not the recorded one."""
    from evaluate import EvalError

    meta = rec["meta"]
    seed = EVAL_SEED_OFFSET + int(meta["seed"])
    results: Dict[str, Any] = {}
    for mode in MODES:
        results[mode] = evaluate_mode(run_dir, episodes, seed, mode)
        if results[mode]["model_timesteps"] != meta["steps"]:  # checked before the second mode plays
            raise EvalError(f"{run_dir}/model.zip is at step {results[mode]['model_timesteps']:,}, the "
                            f"record at {meta['steps']:,}: not the recorded model")
    return {"name": meta["name"], "study": meta["study"], "episodes": episodes, "seed": seed,
            "of_record": {"recorded": meta["recorded"], "steps": meta["steps"]},
            "model_timesteps": meta["steps"], "command": command,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": results[MODES[0]]["versions"],
            **{mode: {key: res[key] for key in ("returns", "lengths", "mean", "eval_seconds")}
               for mode, res in results.items()}}


def try_final_eval(rec: Dict[str, Any], run_dir: Path, episodes: int,
                   command: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """:func:`final_eval_record` and None, or None and why the run could not be evaluated (no model here: run
    folders are not committed, and with the sweep's Ray backend on a cluster a folder may be on another machine)."""
    from evaluate import EvalError

    if not (Path(run_dir) / "model.zip").is_file():
        return None, f"no {Path(run_dir) / 'model.zip'} here"
    try:
        return final_eval_record(rec, Path(run_dir), episodes, command), None
    except EvalError as exc:
        return None, str(exc)


def write_final_eval(results_dir: Path, final: Dict[str, Any]) -> Path:
    """Write a final-evaluation record beside the study's training records; its path."""
    path = final_eval_path(results_dir, final["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(final, indent=1, sort_keys=True) + "\n").encode())
    return path


def describe(final: Dict[str, Any]) -> str:
    """One line: the run's mean score each way."""
    return (f"deterministic {final['deterministic']['mean']:.3g}, stochastic {final['stochastic']['mean']:.3g} "
            f"({final['episodes']} episodes each)")


def run_final_evals(results_dir: Path, runs_root: Path, episodes: int, argv: Sequence[str]) -> Tuple[int, List[str]]:
    """Evaluate every recorded run of the study that has a folder under ``runs_root/<study>`` and no final-evaluation
    record belonging to its training record; return how many were written and the lines naming runs left out."""
    results_dir, study = Path(results_dir), Path(results_dir).name
    written, left_out = 0, []
    for rec in read_records(results_dir):
        meta = rec["meta"]
        path = final_eval_path(results_dir, meta["name"])
        if path.is_file() and belongs_to(json.loads(path.read_text()), rec):
            continue
        final, problem = try_final_eval(rec, Path(runs_root) / study / meta["name"], episodes,
                                        "python sweep.py final-eval " + " ".join(argv))
        if final is None:
            left_out.append(f"{meta['name']}: {problem}")
            continue
        write_final_eval(results_dir, final)
        written += 1
        print(f"{meta['name']}: {describe(final)}", flush=True)
    return written, left_out


def read_final_evals(results_dir: Path, records: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The study's final-evaluation records by run name, those that belong to its training records ``records``
    (a final evaluation of a run since trained again is left out; empty when there are none)."""
    folder = Path(results_dir) / "final_eval"
    if not folder.is_dir():
        return {}
    records = {rec["meta"]["name"]: rec for rec in records}
    finals = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    return {name: final for name, final in finals.items() if name in records and belongs_to(final, records[name])}


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
        error = commit_record(Path(args.study) / "final_eval",
                              message=f"{args.study}: final evaluations of {written} runs")
        print("committed" if error is None else f"NOT committed ({error})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
