"""Command-line helpers shared by train.py, evaluate.py and sweep.py."""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, NoReturn, Optional

ROOT = Path(__file__).resolve().parents[1]
#: the files of a run folder that train.py, evaluate.py and sweep.py look for
CHECKPOINT = "checkpoint.pkl"
MODEL = "model.zip"
#: an asynchronous run's settings and measured lags (train.py --actors; studies/records.py, --lag-weights-from read it)
ASYNC_SUMMARY = "async.json"
#: written next to model.zip by a run stopped by a signal (model.zip alone then does not mean finished); removed when
#: the resumed run completes
INTERRUPTED = "interrupted.txt"


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed memory of large tensors instead of returning it to the system (Linux only).

    By default glibc serves blocks above a moving threshold (128 KiB up to 32 MiB) with fresh ``mmap`` pages and trims
    the heap's free top: every minibatch of Atari frames (29 MB as floats) then pays page faults again, and how often
    depends on the run's recent allocations (lagged runs, with their batched values pass, paid twice as long in
    ``preprocess_obs``). Fixing the threshold at its maximum and trimming only above 1 GiB keeps those pages. Values are
    unchanged; only time (and when memory goes back to the system) differs. True if applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 * 2**20)) and bool(mallopt(m_trim_threshold, 2**30))


def code_version() -> str:
    """``git describe --always`` of this checkout, ``-dirty`` when a tracked file outside ``results/`` has uncommitted
    changes (a sweep writing its summaries does not make the code of its later runs dirty), or ``unknown``."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    try:
        described = git("describe", "--always")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    except OSError:
        return "unknown"
    if not described:
        return "unknown"
    return described + ("-dirty" if changed else "")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line naming the problem (no usage dump), exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def draw_seed() -> int:
    """A fresh random seed for a run that was given none (recorded with the run, so it can be repeated)."""
    return int.from_bytes(os.urandom(4), "little") % (2**31 - 1)


def machine_info() -> dict:
    """Platform, CPU model (from /proc/cpuinfo where there is one), core count and torch's CPU capability, for
    result files and run folders.

    The capability (``torch.backends.cpu.get_cpu_capability()``: ``AVX2``, ``AVX512``, ``DEFAULT``, ...) picks which
    of torch's CPU kernels run, and with them the last bits of every sum: a run repeats bit for bit on a machine of
    the same capability and library versions, and only in distribution on another (README.md,
    "Reproducibility").
    """
    import platform

    import torch

    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "")
    return {"platform": platform.platform(), "cpu": model or platform.processor(), "cpus": os.cpu_count(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def whole_number(text: str) -> int:
    """An argparse ``type`` for step counts: ``100000``, ``100_000``, ``1e5`` and ``1.5e5`` are whole numbers and
    read as ints; ``2.5`` or ``abc`` raise ``argparse.ArgumentTypeError`` naming the value."""
    try:
        return int(text.replace("_", ""))
    except ValueError:
        pass
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        value = float("nan")
    if not value.is_integer():  # nan and inf included
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of steps; give e.g. 100000 or 1e5")
    return int(value)


def library_versions() -> Dict[str, str]:
    """Versions of Python and of the libraries a result depends on (MuJoCo, ALE, MinAtar and Ray where installed)."""
    import platform

    import gymnasium
    import numpy
    import stable_baselines3
    import torch

    out = {"python": platform.python_version(), "torch": str(torch.__version__),
           "stable_baselines3": stable_baselines3.__version__, "gymnasium": gymnasium.__version__,
           "numpy": numpy.__version__}
    for name in ("mujoco", "ale_py"):
        try:
            out[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            pass
    from importlib import metadata

    for name in ("minatar", "ray"):  # distributions without a __version__ (minatar) or costly to import (ray)
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def provenance(script: str, argv: List[str], **extra_versions: str) -> dict:
    """What a result file records about its making: command, time, code version, library versions, machine."""
    import time

    return {
        "command": " ".join(["python", script, *argv]),
        "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "code": code_version(),
        "versions": {**library_versions(), **extra_versions},
        "machine": machine_info(),
    }


def refuse_existing(parser: argparse.ArgumentParser, path: Optional[Path]) -> None:
    """Usage error (exit 2) when a result file would be overwritten."""
    if path is not None and Path(path).exists():
        parser.error(f"--out {path} exists: pass a new file name (results are never overwritten)")
