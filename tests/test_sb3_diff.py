"""tools/sb3_diff.py: our copies of SB3's collect_rollouts and train mark every line that differs from SB3."""

from __future__ import annotations

import importlib.util

from tests.helpers import ROOT, run_script


def _tool():
    spec = importlib.util.spec_from_file_location("sb3_diff", ROOT / "tools" / "sb3_diff.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_differing_line_is_marked() -> None:
    """A line of LaggedPPO.collect_rollouts / train (+ _minibatch_loss) that the installed SB3 does not have carries
    ``# LAG`` or ``# OURS`` (or sits in a block such a comment opens): after an SB3 upgrade the diff stays readable."""
    tool = _tool()
    for name, sb3, ours in tool.pairs():
        assert len(sb3) > 30 and len(ours) > 30, name  # the methods were found
        assert tool.unmarked(sb3, ours) == [], name


def test_an_unmarked_change_is_caught() -> None:
    tool = _tool()
    sb3 = ["x = 1", "if x:", "    y = 2", "z = 3"]
    assert tool.unmarked(sb3, ["x = 1", "w = 5", "z = 3"]) == ["w = 5"]
    assert tool.unmarked(sb3, ["x = 1", "w = 5  # OURS", "z = 3"]) == []
    assert tool.unmarked(sb3, ["# OURS: two new lines", "a = 1", "b = 2", "z = 3", "c = 4"]) == ["c = 4"]
    assert tool.unmarked(sb3, ["if q:  # LAG", "    a = 1", "z = 3"]) == []


def test_the_script_prints_the_diffs() -> None:
    res = run_script("tools/sb3_diff.py", [])
    assert res.returncode == 0, res.stderr
    assert "--- collect_rollouts: 0 differing line(s) without a marker" in res.stdout
    assert "--- train: 0 differing line(s) without a marker" in res.stdout and "+++ ours train" in res.stdout
