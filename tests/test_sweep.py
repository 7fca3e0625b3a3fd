"""sweep.py: a tiny grid from a YAML file, its summary, and resuming (finished runs are skipped)."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from tests.helpers import run_script


def test_grid_file_runs_summarises_and_resumes(tmp_path: Path) -> None:
    grid = tmp_path / "tiny_grid.yml"
    grid.write_text(yaml.safe_dump({
        "env": "CartPole-v1", "algos": ["ppo", "dualclip"], "lags": [0, 2], "seeds": [1], "n_timesteps": 512,
        "hyperparams": ["n_envs:1", "n_steps:128", "batch_size:64", "n_epochs:2", "policy_kwargs:{net_arch: [16]}"],
    }))
    roots = ["--runs-root", str(tmp_path / "runs"), "--results-root", str(tmp_path / "results")]
    first = run_script("sweep.py", [str(grid), "--jobs", "2", *roots])
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(": ok (") == 4
    with open(tmp_path / "results" / "tiny_grid" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["algo"], r["lag"]) for r in rows) == [("dualclip", "0"), ("dualclip", "2"), ("ppo", "0"), ("ppo", "2")]
    assert all(int(r["steps"]) == 512 and r["final_return"] for r in rows)
    lagged = {r["algo"]: float(r["behavior_kl"]) for r in rows if r["lag"] == "2"}
    assert all(v > 0 for v in lagged.values())
    meta = yaml.safe_load((tmp_path / "results" / "tiny_grid" / "sweep.yml").read_text())
    assert meta["finished_runs"] == 4 and meta["code_at_start"] and "sweep.py" in meta["command"]
    assert all(r["code"] for r in rows)  # each run records the code version it ran

    again = run_script("sweep.py", [str(grid), *roots])
    assert again.returncode == 0 and again.stdout.count("done earlier, skipped") == 4


def test_unknown_grid_key_is_one_line(tmp_path: Path) -> None:
    grid = tmp_path / "bad.yml"
    grid.write_text("env: CartPole-v1\nn_timesteps: 10\nlag: [1]\n")
    res = run_script("sweep.py", [str(grid)])
    assert res.returncode == 2 and "lag" in res.stderr and len(res.stderr.strip().splitlines()) == 1
