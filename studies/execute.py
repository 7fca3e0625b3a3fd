"""Running one run of a grid, and the two ways of running many: a local pool or Ray tasks.

:func:`execute` is the unit of work on either backend: it runs (or continues) one ``train.py`` run in its own
process under ``runs_dir`` and returns the run's record (:mod:`studies.records`), which the sweep's driver writes
under ``results/<study>/runs/``. On Ray the run folder stays on the worker that ran it; only the record travels.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from agents.cli import CHECKPOINT, INTERRUPTED, MODEL
from studies.grid import RunSpec

ROOT = Path(__file__).resolve().parents[1]


#: config.yml keys that train.py writes since a later version, with the value a run folder without them had
IMPLIED_BY_ABSENCE = {"behavior_temperature": 1.0, "temperature_mode": "fixed"}


def finished(folder: Path) -> bool:
    """Whether the run folder holds a run that reached its budget."""
    return (folder / MODEL).is_file() and not (folder / INTERRUPTED).is_file()


def marker(runs_dir: Path, name: str) -> Path:
    """``<runs_dir>/<name>.running``: host and pid of the process running the run (for ``--dry-run``)."""
    return Path(runs_dir) / f"{name}.running"


def run_state(run: RunSpec, runs_dir: Path, recorded: bool) -> str:
    """recorded / running / checkpointed / to do, as ``--dry-run`` lists it."""
    if recorded:
        return "recorded"
    mark = marker(runs_dir, run.name)
    if mark.is_file():
        host, _, pid = mark.read_text().strip().partition(" ")
        if host != socket.gethostname():
            return f"running on {host}"
        try:
            os.kill(int(pid), 0)
            return "running"
        except PermissionError:
            return "running"  # the process exists (another user's)
        except (ValueError, ProcessLookupError):
            pass  # a stale marker: its process is gone
    folder = Path(runs_dir) / run.name
    if finished(folder):
        return "finished, not recorded"
    return "checkpointed" if (folder / CHECKPOINT).is_file() else "to do"


def execute(run: RunSpec, runs_dir: str, save_freq: int) -> Dict[str, Any]:
    """Train ``run`` to the end (continuing from its checkpoint if it has one) and return
    ``{"name", "ok", "message", "record"}``; a failure returns its last stderr lines and no record."""
    from studies.records import build_record

    runs = Path(runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    folder = runs / run.name
    argv = run.train_argv(runs, save_freq)
    state = run_state(run, runs, recorded=False)
    if state.startswith("running"):  # another sweep process took it after this one listed its runs
        return {"name": run.name, "ok": True, "record": None, "message": f"{state} (another sweep), skipped"}
    if (folder / MODEL).is_file() or (folder / CHECKPOINT).is_file():
        differ = _settings_differ(folder, argv)
        if differ:
            return {"name": run.name, "ok": False, "record": None,
                    "message": f"REFUSED: the run folder {folder} has other settings ({differ}); move it away"}
    if finished(folder):
        cmd = None  # finished earlier, only its record is missing
    elif (folder / CHECKPOINT).is_file():
        cmd = [sys.executable, str(ROOT / "train.py"), "--resume", str(folder)]
    else:
        if folder.exists():  # cut off before its first checkpoint: keep it aside, start again
            folder.rename(folder.with_name(f"{run.name}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}"))
        cmd = [sys.executable, str(ROOT / "train.py"), *argv]
    start = time.time()
    if cmd is not None:
        mark = marker(runs, run.name)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        mark.write_text(f"{socket.gethostname()} {proc.pid}\n")  # train.py's pid: it outlives a killed sweep
        try:
            _, stderr = proc.communicate()
        finally:
            mark.unlink(missing_ok=True)
        if proc.returncode != 0:
            tail = " | ".join(stderr.strip().splitlines()[-3:])[-400:]
            return {"name": run.name, "ok": False, "record": None, "message": f"FAILED rc={proc.returncode}: {tail}"}
    record = build_record(folder, run.study, run.axes, list(run.argv), host=socket.gethostname())
    return {"name": run.name, "ok": True, "record": record, "message": f"ok ({time.time() - start:.0f} s)"}


def _settings_differ(folder: Path, argv: List[str]) -> Optional[str]:
    """Why an existing run folder does not hold this run (another config or seed), else None."""
    import yaml

    import train

    try:
        expected = yaml.safe_load(yaml.safe_dump(train.build_config(train.parse_args(argv))))
    except (train.UsageError, ValueError) as exc:
        return f"this grid's config cannot be rebuilt here ({exc})"
    config = yaml.safe_load((folder / "config.yml").read_text()) if (folder / "config.yml").is_file() else {}
    saved = yaml.safe_load((folder / "args.yml").read_text()) if (folder / "args.yml").is_file() else {}
    config = {**IMPLIED_BY_ABSENCE, **config}  # a folder written before these keys existed had their defaults
    keys = sorted(k for k in set(expected) | set(config) if expected.get(k) != config.get(k))
    if keys:
        return f"{keys[0]} is {config.get(keys[0])!r} there, {expected.get(keys[0])!r} in this grid"
    seed = int(argv[argv.index("--seed") + 1])
    if saved.get("seed") != seed:
        return f"seed is {saved.get('seed')!r} there, {seed} in this grid"
    return None


def run_local(runs: List[RunSpec], runs_dir: Path, save_freq: int, jobs: int) -> Iterator[Dict[str, Any]]:
    """Results in the order runs finish, ``jobs`` at a time (each a process with one torch thread)."""
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures: List[Future] = [pool.submit(execute, run, str(runs_dir), save_freq) for run in runs]
    try:
        for future in as_completed(futures):
            yield future.result()
    finally:  # Ctrl-C: the running train.py processes stop at their next boundary; queued runs never start
        pool.shutdown(wait=True, cancel_futures=True)


def run_ray(runs: List[RunSpec], runs_dir: Path, save_freq: int, address: Optional[str],
            num_cpus: Optional[int] = None) -> Iterator[Dict[str, Any]]:
    """Each run as a Ray task with one CPU. ``address``: an existing cluster (``ray start --head`` prints it;
    ``auto`` finds a local one); None starts a local instance. The code travels as Ray's ``working_dir`` (this
    checkout without logs/ and results/), so workers need only the same Python packages."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise RuntimeError("--backend ray needs Ray: pip install -e '.[cluster]'") from exc
    started = not ray.is_initialized()
    if started:
        runtime_env = {"working_dir": str(ROOT), "excludes": ["logs/", "results/", ".venv/", ".git/", "*.pkl"]}
        kwargs: Dict[str, Any] = {"runtime_env": runtime_env, "log_to_driver": False}
        if address is None:
            kwargs["num_cpus"] = num_cpus
        else:
            kwargs["address"] = address
        ray.init(**kwargs)
    remote = ray.remote(num_cpus=1, max_retries=0)(execute)
    try:
        pending = {remote.remote(run, str(runs_dir), save_freq): run.name for run in runs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                name = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # a worker that died: report the run as failed, go on
                    yield {"name": name, "ok": False, "record": None, "message": f"FAILED on Ray: {exc}"}
    finally:
        if started:
            ray.shutdown()

