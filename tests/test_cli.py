"""cli.common: the code version recorded with every run and result."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from cli import common as cli


def test_code_version_ignores_results_but_not_code(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "summary.md").write_text("old\n")
    (tmp_path / "train.py").write_text("print(1)\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    monkeypatch.setattr(cli, "ROOT", tmp_path)
    clean = cli.code_version()
    assert clean and not clean.endswith("-dirty") and clean != "unknown"
    (tmp_path / "results" / "summary.md").write_text("new\n")  # a sweep wrote its summary
    assert cli.code_version() == clean
    (tmp_path / "train.py").write_text("print(2)\n")
    assert cli.code_version() == clean + "-dirty"


def test_keep_freed_memory_applies_on_glibc() -> None:
    """train.py and the benchmark set glibc's malloc thresholds through ctypes; elsewhere it is a no-op."""
    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        assert cli.keep_freed_memory() is False
        return
    assert cli.keep_freed_memory() is True and cli.keep_freed_memory() is True  # idempotent


@pytest.mark.parametrize("script", ["train.py", "sweep.py"])
def test_help_does_not_load_torch(script: str) -> None:
    """--help answers without importing torch or SB3 (agents/__init__ loads the algorithms on first use)."""
    from tests.helpers import ROOT

    code = (f"import runpy, sys; sys.argv = [{script!r}, '--help']\n"
            f"try:\n    runpy.run_path({str(ROOT / script)!r}, run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('LOADED', 'torch' in sys.modules or 'stable_baselines3' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "usage:" in res.stdout and res.stdout.strip().endswith("LOADED False"), res.stdout + res.stderr
