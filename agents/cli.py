"""Command-line helpers shared by train.py, evaluate.py and sweep.py."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]


def code_version() -> str:
    """``git describe --always --dirty`` of this checkout (``-dirty``: uncommitted changes), or ``unknown``."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line naming the problem (no usage dump), exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def draw_seed() -> int:
    """A fresh random seed for a run that was given none (recorded with the run, so it can be repeated)."""
    return int.from_bytes(os.urandom(4), "little") % (2**31 - 1)
