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

from cli import run_files
from cli.common import CHECKPOINT, INTERRUPTED, MODEL
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


def _holder(mark: Path) -> Optional[str]:
    """"running" / "running on HOST" when the marker names a live process, None when it is missing or stale."""
    try:
        host, _, pid = mark.read_text().strip().partition(" ")
    except FileNotFoundError:
        return None
    if host != socket.gethostname():
        return f"running on {host}"
    try:
        os.kill(int(pid), 0)
        return "running"
    except PermissionError:
        return "running"  # the process exists (another user's)
    except (ValueError, ProcessLookupError):
        return None  # a stale marker: its process is gone


def claim(mark: Path) -> bool:
    """Take the marker atomically (created only if absent; a stale one is replaced): False when a live process
    holds it, so two sweep processes never start the same run."""
    for _ in range(2):
        try:
            fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _holder(mark) is not None:
                return False
            mark.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}\n")  # this sweep, until train.py runs
        return True
    return False


def run_state(run: RunSpec, runs_dir: Path, recorded: bool) -> str:
    """recorded / running / checkpointed / to do, as ``--dry-run`` lists it."""
    if recorded:
        return "recorded"
    holder = _holder(marker(runs_dir, run.name))
    if holder is not None:
        return holder
    folder = Path(runs_dir) / run.name
    if finished(folder):
        return "finished, not recorded"
    return "checkpointed" if (folder / CHECKPOINT).is_file() else "to do"


def plan(runs: List[RunSpec], runs_dir: Path, batch: bool) -> List[List[RunSpec]]:
    """The units of work: with ``batch``, the runs of one grid cell (same configuration, seeds aside) that start
    afresh train as one seed batch when the configuration allows it (agents/seed_batch.py; a cell's one leftover
    seed is a batch of one, so that its result does not depend on which seeds were left), and the checkpointed
    runs of one interrupted batch resume together when every one of them is here and at the same step (train.py
    refuses a batch whose checkpoints differ: a seed resumed alone since went on to another step); every other run
    is a unit alone."""
    if not batch:
        return [[run] for run in runs]
    units: Dict[tuple, List[RunSpec]] = {}
    for run in runs:
        folder = Path(runs_dir) / run.name
        if (folder / CHECKPOINT).is_file() or (folder / MODEL).is_file():
            mates = _batch_mates(folder)
            key = (("resume", run.cell, mates, _checkpoint_step(folder)) if mates and not finished(folder)
                   else ("alone", run.name))
        else:
            key = ("start", run.cell) if _batchable(run) else ("alone", run.name)
        units.setdefault(key, []).append(run)
    out: List[List[RunSpec]] = []
    for key, unit in units.items():
        if key[0] == "resume" and {r.seed for r in unit} != set(key[2]):  # not every seed of the batch is here
            out += [[run] for run in unit]
        else:
            out.append(unit)
    return out


def _checkpoint_step(folder: Path) -> Optional[int]:
    """The environment step of the run's checkpoint, or None when it has none that train.py could read."""
    from agents.checkpoint import read_checkpoint

    try:
        return int(read_checkpoint(folder / CHECKPOINT)["num_timesteps"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _batch_mates(folder: Path) -> Optional[tuple]:
    """The seeds a run was started with as a seed batch (``--seeds`` in its args.yml), or None."""
    seeds = run_files.read_if_present(folder).args.get("seeds") or []
    return tuple(seeds) if len(seeds) > 1 else None


_BATCHABLE: Dict[tuple, bool] = {}


def _batchable(run: RunSpec) -> bool:
    """Whether the seed-batched trainer takes this run's configuration (the model is built once per cell)."""
    if run.cell not in _BATCHABLE:
        import train
        from agents.seed_batch import check_batchable

        args, config = _args_and_config(run)
        if args.actors:  # asynchronous actors (train.py --actors N): each run has its own actors, one seed each
            _BATCHABLE[run.cell] = False
            return False
        model, env = train.make_model(args, config)
        try:
            check_batchable(model)
            _BATCHABLE[run.cell] = True
        except ValueError:
            _BATCHABLE[run.cell] = False
        finally:
            env.close()
    return _BATCHABLE[run.cell]


def _args_and_config(run: RunSpec) -> tuple:
    import train

    args = train.parse_args([*run.argv, "--verbose", "0"])
    return args, train.build_config(args)


def execute(unit: List[RunSpec], runs_dir: str, save_freq: int, batch: bool = False) -> List[Dict[str, Any]]:
    """Train the runs of ``unit`` to the end (one run, or the seeds of one cell as one seed batch; continuing from
    their checkpoints if they have them) and return, per run, ``{"name", "ok", "message", "record"}``; a failure
    returns its last stderr lines and no record. ``batch``: the unit comes from :func:`plan` with ``batch``, so a
    lone seed that starts afresh with a batchable configuration trains as a batch of one (``--seeds S``)."""
    from studies.grid import batch_argv
    from studies.records import build_record

    runs = Path(runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Dict[str, Any]] = {}
    todo: List[RunSpec] = []
    for run in unit:
        folder = runs / run.name
        state = run_state(run, runs, recorded=False)
        if state.startswith("running"):  # another sweep process took it after this one listed its runs
            results[run.name] = {"name": run.name, "ok": True, "record": None, "message": f"{state} (another sweep), skipped"}
            continue
        if (folder / MODEL).is_file() or (folder / CHECKPOINT).is_file():
            differ = _settings_differ(folder, run.train_argv(runs, save_freq))
            if differ:
                results[run.name] = {"name": run.name, "ok": False, "record": None,
                                     "message": f"REFUSED: the run folder {folder} has other settings ({differ}); move it away"}
                continue
        if finished(folder):
            continue
        if not claim(marker(runs, run.name)):  # another sweep process took it after this one listed its runs
            results[run.name] = {"name": run.name, "ok": True, "record": None, "message": "running (another sweep), skipped"}
            continue
        todo.append(run)
    started = [r for r in todo if (runs / r.name / CHECKPOINT).is_file()]
    for run in todo:
        folder = runs / run.name
        if run not in started and folder.exists():  # cut off before its first checkpoint: keep it aside, start again
            folder.rename(folder.with_name(f"{run.name}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}"))
    start = time.time()
    commands: List[tuple] = []
    as_batch = bool(todo) and not started and (len(todo) > 1 or (batch and _batchable(todo[0])))
    if as_batch:
        commands.append((todo, batch_argv(todo, runs, save_freq)))
    elif len(todo) > 1 and len(started) == len(todo):
        commands.append((todo, ["--resume", *(str(runs / r.name) for r in todo)]))
    else:
        commands += [([r], ["--resume", str(runs / r.name)] if r in started else r.train_argv(runs, save_freq))
                     for r in todo]
    for members, argv in commands:
        failure = _train(members, runs, argv)
        for run in members:
            if failure is not None:
                results[run.name] = {"name": run.name, "ok": False, "record": None, "message": failure}
    for run in unit:
        if run.name not in results:
            record = build_record(runs / run.name, run.study, run.axes, list(run.argv), host=socket.gethostname())
            how = f" (seed batch of {len(todo)})" if as_batch and run in todo else ""
            results[run.name] = {"name": run.name, "ok": True, "record": record,
                                 "message": f"ok ({time.time() - start:.0f} s{how})"}
    return [results[run.name] for run in unit]


def _train(members: List[RunSpec], runs: Path, argv: List[str]) -> Optional[str]:
    """Run train.py with ``argv`` for the runs ``members``, whose ``.running`` markers this process claimed (they
    name train.py's pid while it runs, and go when it ends); the failure message, or None."""
    marks = [marker(runs, run.name) for run in members]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
    except BaseException:
        for mark in marks:
            mark.unlink(missing_ok=True)
        raise
    for mark in marks:  # train.py's pid: it outlives a killed sweep
        tmp = mark.with_name(mark.name + ".tmp")
        tmp.write_text(f"{socket.gethostname()} {proc.pid}\n")
        tmp.replace(mark)
    try:
        _, stderr = proc.communicate()
    finally:
        for mark in marks:
            mark.unlink(missing_ok=True)
    if proc.returncode != 0:
        tail = " | ".join(stderr.strip().splitlines()[-3:])[-400:]
        return f"FAILED rc={proc.returncode}: {tail}"
    return None


def _settings_differ(folder: Path, argv: List[str]) -> Optional[str]:
    """Why an existing run folder does not hold this run (another config or seed), else None."""
    import yaml

    import train

    try:
        expected = yaml.safe_load(yaml.safe_dump(train.build_config(train.parse_args(argv))))
    except (train.UsageError, ValueError) as exc:
        return f"this grid's config cannot be rebuilt here ({exc})"
    files = run_files.read_if_present(folder)
    config, saved = files.config, files.args
    config = {**IMPLIED_BY_ABSENCE, **config}  # a folder written before these keys existed had their defaults
    keys = sorted(k for k in set(expected) | set(config) if expected.get(k) != config.get(k))
    if keys:
        return f"{keys[0]} is {config.get(keys[0])!r} there, {expected.get(keys[0])!r} in this grid"
    seed = int(argv[argv.index("--seed") + 1])
    if saved.get("seed") != seed:
        return f"seed is {saved.get('seed')!r} there, {seed} in this grid"
    return None


def run_local(units: List[List[RunSpec]], runs_dir: Path, save_freq: int, jobs: int,
              batch: bool = False) -> Iterator[Dict[str, Any]]:
    """Results in the order units finish, ``jobs`` units at a time (each a process with one torch thread);
    ``batch``: the units come from :func:`plan` with ``batch`` (see :func:`execute`)."""
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures: List[Future] = [pool.submit(execute, unit, str(runs_dir), save_freq, batch) for unit in units]
    try:
        for future in as_completed(futures):
            yield from future.result()
    finally:  # Ctrl-C: the running train.py processes stop at their next boundary; queued runs never start
        pool.shutdown(wait=True, cancel_futures=True)


def run_ray(units: List[List[RunSpec]], runs_dir: Path, save_freq: int, address: Optional[str],
            num_cpus: Optional[int] = None, batch: bool = False) -> Iterator[Dict[str, Any]]:
    """Each unit (a run, or a seed batch) as a Ray task with one CPU. ``address``: an existing cluster (``ray start --head`` prints it;
    ``auto`` finds a local one); None starts a local instance. The code travels as Ray's ``working_dir`` (this
    checkout without logs/ and results/), so workers need only the same Python packages."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise RuntimeError("--backend ray needs Ray: pip install -e '.[cluster]'") from exc
    started = not ray.is_initialized()
    if started:
        from cli.ray_session import EXCLUDES, init_ray

        kwargs: Dict[str, Any] = {"runtime_env": {"working_dir": str(ROOT), "excludes": EXCLUDES},
                                  "log_to_driver": False}
        if address is None:
            kwargs["num_cpus"] = num_cpus
        init_ray(address, **kwargs)
    remote = ray.remote(num_cpus=1, max_retries=0)(execute)
    try:
        pending = {remote.remote(unit, str(runs_dir), save_freq, batch): unit for unit in units}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                unit = pending.pop(ref)
                try:
                    yield from ray.get(ref)
                except Exception as exc:  # a worker that died: report its runs as failed, go on
                    for run in unit:
                        yield {"name": run.name, "ok": False, "record": None, "message": f"FAILED on Ray: {exc}"}
    finally:
        if started:
            ray.shutdown()

