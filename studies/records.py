"""Per-run records: what a finished run leaves in ``results/<study>/runs/<name>.json`` (committed).

A record is small (tens of KB: no model, no event file) and holds everything the report needs:

- ``meta``: the run's name, study, axis values, seed, full config (``config.yml``), the train.py command, code
  version, library versions, the machine that trained it (CPU model, torch's CPU capability: what decides whether a
  re-run repeats it bit for bit), wall time and which training path produced it (``single-run``, ``seed-batch`` or
  ``async``); an asynchronous run's ``async``: its ``async.json`` (n_actors, max_staleness, the measured lag and actor
  of every trained rollout, ``lag_counts``, ``lag_mean``, ``lag_max``, ``staleness_waits``);
- ``updates``: one row per update, column by column: ``step`` (env steps) and every ``rollout/*``, ``train/*`` and
  ``time/fps`` scalar the run logged (``rollout/ep_rew_mean`` is the training return, i.e. the return of the
  behaviour policy; ``rollout/policy_lag`` the lag its data actually had); ``null`` where a value was not logged;
- ``eval``: the periodic evaluations of the learner itself (deterministic actions, frozen normalisation):
  ``steps`` and per-episode ``returns`` and ``lengths``.

A run with a record counts as finished: a study continues on any machine from its records alone, and the report is
made from records alone.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from agents.files import atomic_write

#: the repository (git commands run here)
REPO = Path(__file__).resolve().parents[1]
#: record format version (bump when a field changes meaning)
FORMAT = 1
#: TensorBoard tags kept per update (prefixes)
UPDATE_PREFIXES = ("rollout/", "train/", "time/fps")


def _round(value: float) -> Optional[float]:
    """Six significant digits (plenty for curves and diagnostics, a third of the text); None for NaN."""
    if value is None or not np.isfinite(value):
        return None
    return float(f"{value:.6g}")


def update_rows(run_dir: Path) -> Dict[str, List[Optional[float]]]:
    """The run's per-update scalars from its TensorBoard events, one row per rollout: ``step`` (env steps at the
    rollout's end), its ``rollout/*`` and ``time/fps`` values, and the ``train/*`` values of the update made on it.

    SB3 dumps the logger *before* each update, so the ``train/*`` values written at step ``s`` belong to the
    previous rollout's update; here they are moved back to that rollout's row. The last update's values are never
    written (stock SB3 behaviour), so the last row has none. A resumed run's events were trimmed to its checkpoint
    on resume, so no step appears twice.
    """
    from tbparse import SummaryReader

    scalars = SummaryReader(str(run_dir)).scalars
    if len(scalars) == 0:
        return {"step": []}
    scalars = scalars[scalars.tag.map(lambda t: t.startswith(UPDATE_PREFIXES))].sort_values("step", kind="stable")
    rollout = scalars[~scalars.tag.str.startswith("train/")]
    steps = sorted(int(s) for s in rollout.step.unique())
    index = {s: i for i, s in enumerate(steps)}
    rows: Dict[str, List[Optional[float]]] = {"step": list(steps)}
    for tag, events in scalars.groupby("tag", sort=True):
        column: List[Optional[float]] = [None] * len(steps)
        seen = set()
        for step, value in zip(events.step.astype(int), events.value.astype(float)):
            if tag.startswith("train/") and step not in seen:  # written before the next update: the previous
                earlier = [s for s in steps if s < step]      # rollout's update
                seen.add(step)
                if not earlier:
                    continue
                step = earlier[-1]
            # (a second value at the same step came from a dump after the last update: that update's own row;
            # code before b86d8f0's successor wrote one at the end of training)
            column[index[step]] = _round(value)
        rows[tag] = column
    return rows


def wall_time(run_dir: Path) -> float:
    """Seconds spent learning: the last ``time/time_elapsed`` of each ``progress*.csv`` (SB3 writes it to CSV, not to
    TensorBoard; a resumed part has its own CSV and restarts the clock), added up."""
    import csv

    total = 0.0
    for path in sorted(run_dir.glob("progress*.csv")):
        with open(path, newline="") as f:
            elapsed = [row.get("time/time_elapsed") for row in csv.DictReader(f)]
        values = [float(v) for v in elapsed if v not in (None, "")]
        total += values[-1] if values else 0.0
    return total


def eval_rows(run_dir: Path) -> Dict[str, list]:
    path = run_dir / "eval" / "evaluations.npz"
    if not path.is_file():
        return {"steps": [], "returns": [], "lengths": []}
    with np.load(path) as data:
        return {"steps": [int(s) for s in data["timesteps"]],
                "returns": [[_round(float(v)) for v in row] for row in data["results"]],
                "lengths": [[int(v) for v in row] for row in data["ep_lengths"]]}


def build_record(run_dir: Path, study: str, axes: Dict[str, Any], argv: List[str], **meta: Any) -> Dict[str, Any]:
    """The record of the finished run in ``run_dir`` (see the module docstring)."""
    from cli import run_files
    from cli.common import ASYNC_SUMMARY, library_versions, machine_info

    files = run_files.read(run_dir)
    args, config = files.args, files.config
    updates = update_rows(run_dir)
    # the training path: one run per process (--seed), or seeds trained together (--seeds, a batch of one too);
    # a resumed part of a run may have taken the other path, which its command lines show
    path = "seed-batch" if args.get("seeds") else "single-run"
    if args.get("actors"):  # asynchronous actors (train.py --actors): the lag was measured; its history and settings
        path = "async"
    summary = run_dir / ASYNC_SUMMARY
    asynchronous = json.loads(summary.read_text()) if summary.is_file() else None
    return {
        "format": FORMAT,
        "meta": {
            "name": run_dir.name, "study": study, "axes": axes, "seed": args.get("seed"), "algo": args.get("algo"),
            "env": args.get("env"), "steps": updates["step"][-1] if updates["step"] else 0,
            "n_timesteps": int(config["n_timesteps"]), "config": config, "train_argv": list(argv),
            "command": (run_dir / "command.txt").read_text().strip().splitlines(),
            "code": args.get("code", "unknown"), "versions": library_versions(),
            # the machine that trained the run (args.yml since it records one), else the one recording it
            "machine": args.get("machine") or machine_info(),
            "torch_threads": args.get("num_threads"), "wall_time_s": round(wall_time(run_dir), 1), "path": path,
            "batch_seeds": args.get("seeds") if path == "seed-batch" else None,  # wall time is the batch's
            # asynchronous runs: n_actors, max_staleness, and per trained rollout its measured lag and actor, with
            # their counts (lag_counts), mean and maximum; absent for other runs
            **({"async": asynchronous} if asynchronous is not None else {}),
            "recorded": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), **meta,
        },
        "updates": updates,
        "eval": eval_rows(run_dir),
    }


def record_path(results_dir: Path, name: str) -> Path:
    return Path(results_dir) / "runs" / f"{name}.json"


def write_record(results_dir: Path, record: Dict[str, Any]) -> Path:
    """Write ``record`` under ``results_dir/runs/`` (one JSON line per field of ``updates``: small diffs)."""
    path = record_path(results_dir, record["meta"]["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps(record["meta"], sort_keys=True)
    lines = ["{", f'"format": {json.dumps(record["format"])},', f'"meta": {meta},', '"updates": {']
    cols = list(record["updates"].items())
    lines += [f"  {json.dumps(k)}: {json.dumps(v)}" + ("," if i < len(cols) - 1 else "")
              for i, (k, v) in enumerate(cols)]
    lines += ["},", f'"eval": {json.dumps(record["eval"])}', "}"]
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    return path


def read_record(path: Path) -> Dict[str, Any]:
    return json.loads(Path(path).read_text())


def cpu_capability(record: Dict[str, Any]) -> Optional[str]:
    """torch's CPU capability of the machine that trained the record's run, None for records made before it was
    recorded."""
    return (record["meta"].get("machine") or {}).get("torch_cpu_capability")


def read_records(results_dir: Path) -> List[Dict[str, Any]]:
    """Every record of a study, by name."""
    return [read_record(p) for p in sorted((Path(results_dir) / "runs").glob("*.json"))]


def commit_record(*files: Path, message: str) -> Optional[str]:
    """``git commit`` of these files or folders (other staged or changed files are left alone); an error line or
    None."""
    paths = [str(p) for p in files]
    for attempt in range(5):  # another git process may hold the index lock for a moment
        add = subprocess.run(["git", "add", "--", *paths], cwd=REPO, capture_output=True, text=True)
        res = add if add.returncode else subprocess.run(
            ["git", "commit", "--quiet", "-m", message, "--", *paths], cwd=REPO, capture_output=True, text=True)
        if res.returncode == 0:
            return None
        if "index.lock" not in res.stderr:
            return res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"git exit {res.returncode}"
        time.sleep(1 + attempt)
    return "the git index stayed locked"
