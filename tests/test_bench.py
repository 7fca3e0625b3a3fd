"""bench/bench.py end to end on a tiny budget: the JSON it writes, and that it never overwrites one."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run


@pytest.mark.slow  # about a minute and a half of training; the default suite stays near 5 minutes
def test_bench_writes_ratios_and_never_overwrites(tmp_path) -> None:
    pytest.importorskip("mujoco", reason="MuJoCo extra not installed")
    out = tmp_path / "bench.json"
    argv = ["--cases", "halfcheetah-tuned", "--variants", "stock-sb3", "dualclip-lag0", "dualclip-lag8",
            "--rounds", "2", "--steps", "512", "--threads", "1", "--out", out]
    res = run("bench/bench.py", *argv)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    case = data["summary"]["halfcheetah-tuned"]
    assert case["stock-sb3"]["ratio_to_stock"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    assert case["dualclip-lag0"]["median_steps_per_s"] > 0 and case["dualclip-lag0"]["peak_rss_mib"] > 0
    rounds = data["rounds"]["halfcheetah-tuned"]
    assert len(rounds) == 2 and all(set(row) == {"stock-sb3", "dualclip-lag0", "dualclip-lag8"} for row in rounds)
    # ratios are paired within a round: median of the per-round ratios, not a ratio of medians
    lag = sorted(row["dualclip-lag8"] / row["dualclip-lag0"] for row in rounds)
    assert case["lag8_over_lag0"] == {"median": (lag[0] + lag[1]) / 2, "min": lag[0], "max": lag[1]}
    assert all(r["steps"] == 512 for r in data["standalone"]["halfcheetah-tuned"].values())
    assert data["meta"]["code"] and data["meta"]["versions"]["torch"]

    before = out.read_text()
    again = run("bench/bench.py", *argv)
    assert again.returncode == 2 and "exists" in again.stderr and out.read_text() == before
