"""A run folder's description, written by train.py in one place and read by everyone else through this module.

- ``config.yml``: the hyperparameters as used (after the YAML file, ``-params`` and the dedicated flags);
- ``args.yml``: train.py's flags as given, the seed (drawn if none was given), the code version and the machine
  (CPU model and torch's CPU capability, which decide whether a re-run repeats bit for bit);
- ``command.txt``: the command line, plus one line per resume.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Sequence

CONFIG, ARGS, COMMAND = "config.yml", "args.yml", "command.txt"


class RunFilesError(ValueError):
    """A run folder whose description is missing or damaged; the message names the file and the reason."""


@dataclass(frozen=True)
class RunFiles:
    """What a run folder says about its run."""

    args: Dict[str, Any]  #: args.yml: train.py's flags (dest names), ``seed``, ``code``, ``machine``
    config: Dict[str, Any]  #: config.yml: the hyperparameters as used

    @property
    def namespace(self) -> argparse.Namespace:
        """``args`` as the Namespace train.py parsed."""
        return argparse.Namespace(**self.args)


def write(run_dir: Path, args: argparse.Namespace, config: Dict[str, Any], code: str,
          machine: Dict[str, Any]) -> None:
    """Create ``run_dir`` (it must not exist) and write its three files; ``machine``: cli.common.machine_info().

    The machine goes to args.yml, not config.yml: config.yml holds the hyperparameters only, which the sweep compares
    key by key with its grid and a resumed run reads back."""
    import yaml

    run_dir.mkdir(parents=True)
    with open(run_dir / CONFIG, "w") as f:
        yaml.safe_dump(config, f, sort_keys=True)
    with open(run_dir / ARGS, "w") as f:
        yaml.safe_dump({**vars(args), "code": code, "machine": machine}, f, sort_keys=True)
    (run_dir / COMMAND).write_text(shlex.join(["python", *sys.argv]) + "\n")


def append_command(run_dir: Path, note: str) -> None:
    """Add this process's command line to ``command.txt`` with a note (e.g. where a resume started)."""
    with open(run_dir / COMMAND, "a") as f:
        f.write(shlex.join(["python", *sys.argv]) + f"  # {note}\n")


def read(run_dir: Path, args_keys: Sequence[str] = (), config_keys: Sequence[str] = ()) -> RunFiles:
    """Both files of ``run_dir``; :class:`RunFilesError` when one is missing, not a YAML mapping, or lacks one of
    the required keys."""
    import yaml

    out = []
    for name, keys in ((ARGS, args_keys), (CONFIG, config_keys)):
        try:
            data = yaml.safe_load((Path(run_dir) / name).read_text())
        except (OSError, yaml.YAMLError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RunFilesError(f"{Path(run_dir) / name}: unreadable ({reason})") from exc
        if not isinstance(data, dict):
            raise RunFilesError(f"{Path(run_dir) / name}: not a YAML mapping")
        missing = [k for k in keys if k not in data]
        if missing:
            raise RunFilesError(f"{Path(run_dir) / name}: missing {', '.join(missing)}")
        out.append(data)
    return RunFiles(args=out[0], config=out[1])


def read_if_present(run_dir: Path) -> RunFiles:
    """Both files, each empty when it is absent (a folder cut off before train.py wrote them)."""
    import yaml

    data = [yaml.safe_load((Path(run_dir) / name).read_text()) if (Path(run_dir) / name).is_file() else {}
            for name in (ARGS, CONFIG)]
    return RunFiles(args=data[0] or {}, config=data[1] or {})
