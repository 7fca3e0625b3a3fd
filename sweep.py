"""Run the grids of a study and report it.

    python sweep.py ablations/mujoco_lag.yml --jobs 2            # run what is missing, write records, report
    python sweep.py ablations/mujoco_lag.yml --dry-run           # list every run with its state and a time estimate
    python sweep.py ablations/mujoco_lag.yml --backend ray --address auto     # each run as a task on a Ray cluster
    python sweep.py report results/mujoco_study                  # summary.md, summary.csv, figures from the records
    python sweep.py final-eval results/minatar_study             # final policies, greedy and sampled (studies/final_eval.py)
    python sweep.py ablations/minatar_study.yml --final-eval 20  # ... or each run's as it is recorded

A grid file names the study, its settings, envs and axes (see studies/grid.py). Each run trains in its own folder
``<runs-root>/<study>/<run>`` (default runs-root: logs/sweeps, not committed; a run cut off mid-way continues from
its checkpoint, one cut off before its first checkpoint is moved aside and started again). When a run finishes its
record is written to ``results/<study>/runs/<run>.json`` (with ``--commit``, also committed to git at once). **A run
with a record is finished**: the sweep skips it, so a study continues on any machine that has the committed
records, and the report is made from the records alone. A record whose command differs from the grid's is refused
(exit 1), never reused. Bad grid files (unknown key or axis, an empty list, an unknown algo or env, a value
train.py or the algorithm rejects) get a one-line error before any run starts (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

from cli.common import OneLineParser
from studies.grid import GridError, RunSpec, check_runs, load_grid

HERE = Path(__file__).resolve().parent


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = OneLineParser(prog="sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("grids", nargs="+", metavar="GRID.yml", help="grid files (ablations/*.yml)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time on this machine (default 1)")
    p.add_argument("--dry-run", action="store_true", help="list the runs, their state and a time estimate; run nothing")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: a pool of processes (default); ray: one Ray task (1 CPU) per run")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto, or ray://HOST:10001); "
                                                    "default: start a local Ray instance with --jobs CPUs")
    p.add_argument("--max-runs", type=int, default=None,
                   help="run at most N of the missing runs, then stop (a grid cell's seeds are taken together)")
    p.add_argument("--commit", action="store_true", help="git-commit each record as soon as it is written")
    p.add_argument("--record-only", action="store_true",
                   help="train nothing: write the records of finished run folders that have none (e.g. folders "
                        "copied from another machine)")
    p.add_argument("--no-report", action="store_true", help="do not rewrite the study's report at the end")
    p.add_argument("--no-batch", action="store_true",
                   help="one process per run; by default the seeds of a grid cell that start together train as one "
                        "seed batch (train.py --seeds) when the configuration allows it, a lone seed as a batch of one")
    p.add_argument("--study", default=None, metavar="NAME",
                   help="record under results/NAME instead of the grid's study name (one grid file; e.g. the same "
                        "grid on the single-run and the seed-batched path)")
    p.add_argument("--save-freq", type=int, default=50_000, help="checkpoint every N steps (the resume unit)")
    p.add_argument("--final-eval", type=int, default=0, metavar="EPISODES",
                   help="as each run is recorded, evaluate its final model greedy and sampled, EPISODES whole "
                        "episodes each, into results/<study>/final_eval/ (what `sweep.py final-eval` does after "
                        "the fact; run folders are not committed, so this keeps the evaluation if they are lost)")
    p.add_argument("--runs-root", default="logs/sweeps", help="parent of the run folders (default logs/sweeps)")
    p.add_argument("--results-root", default=str(HERE / "results"), help="parent of the study folders")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: use 1 or more parallel runs")
    if args.max_runs is not None and args.max_runs < 0:
        p.error(f"--max-runs {args.max_runs}: use 0 or more")
    if args.final_eval < 0:
        p.error(f"--final-eval {args.final_eval}: give the episodes per mode (e.g. 20), or 0 for none")
    if args.study is not None and len(args.grids) != 1:
        p.error(f"--study {args.study}: give exactly one grid file with it")
    if args.address is not None and args.backend != "ray":
        p.error(f"--address {args.address} needs --backend ray")
    return args


def first_runs(todo: List[RunSpec], n: int) -> List[RunSpec]:
    """``--max-runs``: the first ``n`` runs to do, each grid cell's seeds together, cells in the order of their first
    run. The grid's own order is seed-major (a study cut short has every cell for its first seeds); cutting that
    order would split the seeds of a cell, and so a seed batch, new or checkpointed, into runs of their own."""
    by_cell: Dict[tuple, List[RunSpec]] = {}
    for run in todo:
        by_cell.setdefault(run.cell, []).append(run)
    return [run for runs in by_cell.values() for run in runs][:n]


def recorded_argv(results_dir: Path, run: RunSpec) -> Optional[List[str]]:
    """The train.py arguments of the run's record, or None when there is none."""
    from studies.records import read_record, record_path

    path = record_path(results_dir, run.name)
    return read_record(path)["meta"]["train_argv"] if path.is_file() else None


def capability_note(study: str, results_dir: Path, names: List[str]) -> Optional[str]:
    """One line when records the sweep reuses (``names``) were trained on another torch CPU capability than this
    machine's, or on one their records do not name (made before records named it); None when all match.

    Runs repeat bit for bit only on the capability (and library versions) they were recorded on; the new runs of a
    study that mixes capabilities are comparable with its records in distribution, not bit for bit."""
    import torch

    from studies.records import cpu_capability, read_record, record_path

    here = torch.backends.cpu.get_cpu_capability()
    found = [cpu_capability(read_record(record_path(results_dir, name))) for name in names]
    others = {c: found.count(c) for c in sorted({c for c in found if c is not None and c != here})}
    unknown = found.count(None)
    if not others and not unknown:
        return None
    parts = [f"{n} on {c}" for c, n in others.items()] + ([f"{unknown} on an unknown one"] if unknown else [])
    return (f"{study}: of the {len(found)} records reused, {', '.join(parts)} (torch CPU capability; this machine: "
            f"{here}): runs made here repeat those in distribution, not bit for bit (README.md, Reproducibility)")


def estimate(units: List[List[RunSpec]], results_dir: Path, jobs: int) -> str:
    """Time for the units of work still to do (a run, or a seed batch), from the median speed (the last
    ``time/fps``) of recorded runs per env and path: the study's own records, or, for an env it has not recorded
    yet, the other studies' records under the same results root. A seed batch takes as long as one of its seeds at
    the per-seed speed of recorded seed batches; with none recorded yet, as its runs one after another."""
    from studies.records import read_records

    def speeds(folders: List[Path]) -> Dict[tuple, List[float]]:
        out: Dict[tuple, List[float]] = {}  # (env, path) -> seconds per step of one run (one seed of a batch)
        for folder in folders:
            for rec in read_records(folder):
                fps = [v for v in rec["updates"].get("time/fps", []) if v]
                if fps:
                    out.setdefault((rec["meta"]["env"], rec["meta"]["path"]), []).append(1 / fps[-1])
        return out

    own = speeds([results_dir])
    siblings = results_dir.parent.iterdir() if results_dir.parent.is_dir() else []
    others = speeds([p for p in siblings if p != results_dir and (p / "runs").is_dir()])
    speed = {k: sorted(v)[len(v) // 2] for k, v in {**others, **own}.items()}
    seconds, borrowed, unknown, sequential = 0.0, set(), set(), False
    for unit in units:
        env, budget = unit[0].env, max(r.n_timesteps for r in unit)
        batch = len(unit) > 1
        if batch and (env, "seed-batch") in speed:
            key, runs_in_turn = (env, "seed-batch"), 1
        else:
            key, runs_in_turn = (env, "single-run"), len(unit)
            sequential = sequential or batch
        if key not in speed:
            unknown.add(env)
            continue
        if not any(k == key for k in own):
            borrowed.add(env)
        seconds += speed[key] * budget * runs_in_turn
    n_runs = sum(len(u) for u in units)
    text = f"{n_runs} runs to do: about {seconds / 3600 / jobs:.1f} h with {jobs} job(s)"
    if borrowed:
        text += f" ({', '.join(sorted(borrowed))}: speed of other studies' runs)"
    if sequential:
        text += " (seed batches counted as their runs one after another: no seed batch recorded yet)"
    return text + (f" plus {', '.join(sorted(unknown))} (no recorded speed yet)" if unknown else "")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        from studies.report import main as report_main

        return report_main(argv[1:])
    if argv[:1] == ["final-eval"]:
        from studies.final_eval import main as final_eval_main

        return final_eval_main(argv[1:])
    args = parse_args(argv)
    studies: Dict[str, List[RunSpec]] = {}
    try:
        for grid in args.grids:
            study, runs = load_grid(Path(grid), study=args.study)
            known = {r.name: r for r in studies.get(study, [])}
            for run in runs:
                if run.name in known and known[run.name].argv != run.argv:
                    raise GridError(f"{grid}: run {run.name} is also in another grid of {study} with other settings")
                known[run.name] = run
            studies[study] = list(known.values())
        problem = None if args.dry_run else check_runs([r for rs in studies.values() for r in rs])
    except GridError as exc:
        print(f"sweep.py: error: {exc}", file=sys.stderr)
        return 2
    if problem:
        print(f"sweep.py: error: {problem} (nothing was run)", file=sys.stderr)
        return 2

    from studies.execute import plan, run_local, run_ray, run_state
    from studies.final_eval import describe, try_final_eval, write_final_eval
    from studies.records import commit_record, write_record

    failed = 0
    for study, runs in studies.items():
        results_dir = Path(args.results_root) / study
        runs_dir = (Path(args.runs_root) / study).resolve()
        states, refused = {}, []
        for run in runs:
            recorded = recorded_argv(results_dir, run)
            if recorded is not None and recorded != list(run.argv):
                refused.append(run.name)
                states[run.name] = "REFUSED: its record has another command"
            else:
                states[run.name] = run_state(run, runs_dir, recorded is not None)
        note = capability_note(study, results_dir, [r.name for r in runs if states[r.name] == "recorded"])
        if note:
            print(note, flush=True)
        if args.dry_run:
            for run in runs:
                print(f"{study}  {run.name:<60} {states[run.name]}")
            todo = [r for r in runs if states[r.name] != "recorded"]
            units = plan(todo, runs_dir, batch=not args.no_batch)
            print(f"{study}: {sum(s == 'recorded' for s in states.values())} of {len(runs)} recorded; "
                  + estimate(units, results_dir, args.jobs))
            continue
        for name in refused:
            print(f"{name}: REFUSED, results/{study}/runs/{name}.json was recorded with another command: "
                  "move the record away or give the run another name", flush=True)
        failed += len(refused)
        todo = [r for r in runs if states[r.name] not in ("recorded",) and r.name not in refused
                and not states[r.name].startswith("running")]
        if args.record_only:
            todo = [r for r in todo if states[r.name] == "finished, not recorded"]
        todo = first_runs(todo, args.max_runs) if args.max_runs is not None else todo
        print(f"{study}: {len(todo)} runs to do ({sum(s == 'recorded' for s in states.values())} recorded)",
              flush=True)
        units = plan(todo, runs_dir, batch=not args.no_batch)
        if any(len(unit) > 1 for unit in units):
            print(f"{study}: {sum(len(u) for u in units if len(u) > 1)} runs train as "
                  f"{sum(len(u) > 1 for u in units)} seed batches", flush=True)
        batch = not args.no_batch
        results = (run_ray(units, runs_dir, args.save_freq, args.address, args.jobs, batch=batch)
                   if args.backend == "ray" else run_local(units, runs_dir, args.save_freq, args.jobs, batch=batch))
        for res in results:
            line = f"{res['name']}: {res['message']}"
            if not res["ok"]:
                failed += 1
            elif res["record"] is not None:  # (None: another sweep process is running it)
                paths = [write_record(results_dir, res["record"])]
                if args.final_eval:
                    final, problem = try_final_eval(res["record"], runs_dir / res["name"], args.final_eval,
                                                    "python sweep.py " + " ".join(argv))
                    if final is not None:
                        paths.append(write_final_eval(results_dir, final))
                        line += f"; final evaluation: {describe(final)}"
                    else:
                        line += f"; final evaluation left out ({problem}: run `sweep.py final-eval` later)"
                if args.commit:
                    error = commit_record(*paths, message=f"results/{study}: record {res['name']}")
                    line += ", committed" if error is None else f", NOT committed ({error})"
            print(line, flush=True)
        if not args.no_report and (results_dir / "runs").is_dir():
            from studies.report import write_report

            print(f"report: {write_report(results_dir)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
