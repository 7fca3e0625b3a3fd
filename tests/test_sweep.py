"""sweep.py: a tiny grid from a YAML file, its summary, and resuming (finished runs are skipped)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
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

    # the same runs under a grid with another budget are refused, not reused, and results/ stay as they were
    summary = (tmp_path / "results" / "tiny_grid" / "summary.md").read_text()
    grid.write_text(grid.read_text().replace("n_timesteps: 512", "n_timesteps: 1024"))
    other = run_script("sweep.py", [str(grid), *roots])
    assert other.returncode != 0 and other.stdout.count("REFUSED") == 4, other.stdout + other.stderr
    assert "n_timesteps is 512 there, 1024 in this grid" in other.stdout
    assert "no finished run" in other.stderr
    assert (tmp_path / "results" / "tiny_grid" / "summary.md").read_text() == summary


def test_unfinished_runs_are_listed_and_exit_1(tmp_path: Path) -> None:
    roots = ["--runs-root", str(tmp_path / "runs"), "--results-root", str(tmp_path / "results")]
    grid = ["tiny", "--env", "CartPole-v1", "--algos", "ppo", "--seeds", "1", "2", "-n", "128",
            "-params", "n_steps:64", "batch_size:32", "n_epochs:1", "policy_kwargs:{net_arch: [16]}"]
    res = run_script("sweep.py", [*grid, *roots])
    assert res.returncode == 0, res.stderr
    (tmp_path / "runs" / "tiny" / "ppo_lag0_s2" / "model.zip").unlink()  # as if killed before the end
    res = run_script("sweep.py", [*grid, *roots, "--summarise-only"])
    assert res.returncode == 1 and "1 runs unfinished" in res.stdout
    with open(tmp_path / "results" / "tiny" / "summary.csv") as f:
        status = {r["seed"]: r["status"] for r in csv.DictReader(f)}
    assert status == {"1": "finished", "2": "incomplete"}
    assert "| ppo | 0 | 1 of 2 |" in (tmp_path / "results" / "tiny" / "summary.md").read_text()


def test_summarise_only_without_runs_leaves_results(tmp_path: Path) -> None:
    (tmp_path / "results" / "tiny").mkdir(parents=True)
    (tmp_path / "results" / "tiny" / "summary.md").write_text("published")
    res = run_script("sweep.py", ["tiny", "--env", "CartPole-v1", "-n", "128", "--summarise-only",
                                  "--runs-root", str(tmp_path / "runs"), "--results-root", str(tmp_path / "results")])
    assert res.returncode != 0 and "no finished run" in res.stderr
    assert (tmp_path / "results" / "tiny" / "summary.md").read_text() == "published"


def test_unknown_grid_key_is_one_line(tmp_path: Path) -> None:
    grid = tmp_path / "bad.yml"
    grid.write_text("env: CartPole-v1\nn_timesteps: 10\nlag: [1]\n")
    res = run_script("sweep.py", [str(grid)])
    assert res.returncode == 2 and "lag" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv, named",
    [
        (["g", "--env", "CartPole-v1", "-n", "64", "--lag-mode", "bogus"], "lag_mode 'bogus'"),
        (["g", "--env", "CartPole-v1", "-n", "64", "--algos", "sac"], "algos value 'sac'"),
        (["g", "--env", "CartPole-v1", "-n", "64", "--jobs", "0"], "--jobs 0"),
        (["GRID", "--seeds", "4"], "--seeds with a grid file"),
        (["GRID_SEEDS_SCALAR"], "seeds=1 must be a list"),
    ],
)
def test_bad_grid_is_one_line_exit_2(tmp_path: Path, argv: list, named: str) -> None:
    (tmp_path / "grid.yml").write_text("env: CartPole-v1\nn_timesteps: 64\n")
    (tmp_path / "scalar.yml").write_text("env: CartPole-v1\nn_timesteps: 64\nseeds: 1\n")
    argv = [{"GRID": str(tmp_path / "grid.yml"), "GRID_SEEDS_SCALAR": str(tmp_path / "scalar.yml")}.get(a, a)
            for a in argv]
    res = run_script("sweep.py", [*argv, "--runs-root", str(tmp_path / "runs"),
                                  "--results-root", str(tmp_path / "results")])
    assert res.returncode == 2 and named in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
