"""A Ray session for train.py's asynchronous actors: a local instance by default, or an existing cluster."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

ROOT = Path(__file__).resolve().parents[1]
#: what a cluster's workers do not need of this checkout (here and in the sweep's Ray backend, studies/execute.py)
EXCLUDES = ["logs/", "results/", ".venv/", ".git/", "*.pkl"]
#: the one line a missing Ray gets
MISSING = "needs Ray: pip install -e '.[cluster]'"
#: The priority of a local instance's worker processes. Ray starts its workers at nice 15 (its ``worker_niceness``
#: setting, which the instance's processes inherit from this variable; each worker renices itself) so that they never
#: slow Ray's own daemons. On a machine with other work (a sweep beside the run) workers at nice 15 get a few per
#: cent of a core: here one actor's 2048 HalfCheetah steps took 26-46 s instead of 2.6-3.1 s at nice 0, with two
#: training processes on the two cores (docs/async.md). That would make the measured lag and speed an artefact of
#: the scheduler, so a local instance runs its workers at the priority of the run that starts it, unless the
#: variable is already set. A cluster's workers keep its own setting (``RAY_worker_niceness=0 ray start ...`` sets
#: it there).
WORKER_NICENESS = ("RAY_worker_niceness", "0")


def init_ray(address: Optional[str], **kwargs: Any) -> None:
    """``ray.init(**kwargs)``: a new local instance (``address`` None; its workers at :data:`WORKER_NICENESS`) or
    the cluster at ``address``. ``"local"`` makes Ray start a new instance even where ``RAY_ADDRESS`` is set or a
    ``ray start`` instance runs on this machine (which ``--address auto`` joins). The variable stays set in this
    process (instances started later from it get it too)."""
    import ray

    if address is None:
        os.environ.setdefault(*WORKER_NICENESS)
    ray.init(address=address or "local", **kwargs)


def ray_available() -> bool:
    """Whether Ray imports (the ``[cluster]`` extra)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def ray_session(address: Optional[str], num_cpus: int) -> Iterator[None]:
    """Ray initialised for the block and shut down after it (if this call started it).

    ``address`` None starts a local instance with ``num_cpus`` CPUs (at least the machine's: actors may outnumber
    cores), without the dashboard; the workers import this checkout through ``PYTHONPATH``. An address (``auto``,
    ``ray://host:10001``, ``host:6379``) joins an existing cluster, and the code travels as Ray's ``working_dir``
    (this checkout without logs/ and results/), as ``sweep.py --backend ray`` does: the nodes need only the same
    Python packages.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        kwargs: Dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if address is None:
            kwargs.update(num_cpus=max(num_cpus, os.cpu_count() or 1), include_dashboard=False,
                          runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        else:
            kwargs.update(runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES})
        init_ray(address, **kwargs)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def descendants(pid: int) -> List[int]:
    """Every process below ``pid`` (children, their children, ...), from Linux's /proc; [] elsewhere."""
    children: Dict[int, List[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def kill_local_ray() -> None:
    """SIGKILL every process this one started: a local Ray instance's daemons, agents and workers. For a second
    Ctrl-C, which exits at once: ``ray.shutdown()`` cannot run inside a signal handler (it waits on the threads the
    interrupted code holds), and without it a few of Ray's agents outlive the run. Actors on a cluster die with
    their driver's job."""
    import signal

    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass  # already gone
