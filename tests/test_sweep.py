"""sweep.py and studies/: grid files with any axis, per-run records, resuming from records alone, the report,
bad grid files, and the Ray backend (slow)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from studies.grid import GridError, load_grid
from studies.records import read_record, read_records
from tests.helpers import run_script

#: tiny CartPole runs (a few seconds each); evaluation every 128 steps, 2 episodes
TINY = {"n_envs": 1, "n_steps": 64, "batch_size": 32, "n_epochs": 2, "policy_kwargs": {"net_arch": [16]},
        "eval_freq": 128, "eval_episodes": 2}


def grid_file(tmp_path: Path, grid, name: str = "tiny", study: str = "tiny", **extra) -> Path:
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump({"study": study, "settings": {**TINY, **extra.pop("settings", {})},
                                    "envs": {"CartPole-v1": {"n_timesteps": 256}}, "grid": grid, **extra}))
    return path


def roots(tmp_path: Path) -> list:
    return ["--runs-root", str(tmp_path / "runs"), "--results-root", str(tmp_path / "results")]


def sweep(tmp_path: Path, *args: str, timeout: int = 300):
    """sweep.py in its own process (runs train.py processes)."""
    return run_script("sweep.py", [*args, *roots(tmp_path)], timeout=timeout)


def sweep_main(tmp_path: Path, *args: str) -> int:
    """sweep.py's main in this process (dry runs, reports, input errors: nothing that trains)."""
    import sweep as sweep_module

    return sweep_module.main([*args] if args[0] == "report" else [*args, *roots(tmp_path)])


def test_any_axis_names_and_flags(tmp_path: Path) -> None:
    """Flags are passed as flags, other keys as -params; names encode every axis; seed-major order; unions."""
    path = grid_file(tmp_path, [
        {"algo": ["ppo", "dualclip"], "policy_lag": [0, 2], "seed": [1, 2]},
        {"algo": ["dualclip"], "dual_clip": [1.5], "learning_rate": [0.001], "lag_mode": ["uniform"],
         "policy_lag": [2], "seed": [1]},
    ])
    study, runs = load_grid(path)
    assert study == "tiny" and len(runs) == 9
    assert [r.seed for r in runs] == [1] * 5 + [2] * 4  # all of seed 1 first
    names = [r.name for r in runs]
    assert "CartPole-v1_ppo_lag2_s1" in names
    odd = next(r for r in runs if "c1.5" in r.name)
    assert odd.name == "CartPole-v1_dualclip_lag2-uniform_c1.5_learning_rate0.001_s1"
    argv = list(odd.argv)
    assert argv[argv.index("--dual-clip") + 1] == "1.5" and argv[argv.index("--lag-mode") + 1] == "uniform"
    assert "learning_rate:0.001" in argv and "policy_kwargs:{net_arch: [16]}" in argv
    assert argv[argv.index("--eval-freq") + 1] == "128" and argv[argv.index("--n-timesteps") + 1] == "256"


def test_asynchronous_runs_are_never_seed_batched(tmp_path: Path) -> None:
    """A cell with asynchronous actors (--actors N) plans as one unit per seed (train.py refuses --actors with
    --seeds); the same cell without actors is one seed batch."""
    from studies.execute import plan

    for actors, units in ((2, [1, 1]), (None, [2])):
        axes = {"algo": ["ppo"], "seed": [1, 2]} | ({"actors": [actors]} if actors else {})
        _, runs = load_grid(grid_file(tmp_path, axes, name=f"a{actors}"))
        assert [len(u) for u in plan(runs, tmp_path / "runs", batch=True)] == units


def test_an_interrupted_batch_resumes_together_only_at_one_step(tmp_path: Path) -> None:
    """The checkpointed seeds of one interrupted seed batch resume as one batch; when one seed was resumed alone
    since (its checkpoint at another step), train.py would refuse the batch, so each resumes alone."""
    import cloudpickle
    import yaml

    from studies.execute import plan

    _, runs = load_grid(grid_file(tmp_path, {"algo": ["ppo"], "seed": [1, 2]}))
    runs_dir = tmp_path / "runs"

    def checkpoint(run, step: int) -> None:
        folder = runs_dir / run.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "args.yml").write_text(yaml.safe_dump({"seeds": [1, 2]}))
        (folder / "checkpoint.pkl").write_bytes(cloudpickle.dumps({"model_zip": b"", "num_timesteps": step}))

    for run in runs:
        checkpoint(run, 128)
    assert [len(u) for u in plan(runs, runs_dir, batch=True)] == [2]
    checkpoint(runs[0], 192)  # seed 1 went on alone
    assert [[r.seed for r in u] for u in plan(runs, runs_dir, batch=True)] == [[1], [2]]


def test_real_asynchronous_cells_find_their_twins_by_the_pooled_weights() -> None:
    """studies/async_report.py: a real cell (runs with meta.async, by variant and setting) is paired with the
    replaying runs whose weights equal its pooled lag counts, normalised; a twin of an older pool (or of another
    variant) matches no cell and is named; a cell without twins has none."""
    from studies.async_report import lags_of, pooled_counts, twins

    def row(name, variant, setting, meta):
        return {"name": name, "env": "E", "variant": variant, "setting": setting,
                "record": {"meta": meta, "updates": {"rollout/policy_lag": [0.0, 1.0, 2.0]}}}

    two, four = (("env", "E"), ("actors", 2)), (("env", "E"), ("actors", 4))
    real = [row("r2a", "ppo", two, {"async": {"n_actors": 2, "lag_counts": {"0": 1, "2": 8}, "lags": [0, 2]},
                                    "config": {}}),
            row("r2b", "ppo", two, {"async": {"n_actors": 2, "lag_counts": {"0": 1, "1": 1, "2": 9}, "lags": [2]},
                                    "config": {}}),
            row("r4", "ppo", four, {"async": {"n_actors": 4, "lag_counts": {"4": 3}, "lags": [4]}, "config": {}})]
    assert pooled_counts(real[:2]) == [2.0, 1.0, 17.0]
    replay = {"lag_mode": "empirical"}
    sims = [row("twin", "ppo", (), {"config": {**replay, "lag_weights": [0.1, 0.05, 0.85]}}),
            row("old", "ppo", (), {"config": {**replay, "lag_weights": [0.1, 0.0, 0.9]}}),
            row("other arm", "decoupled", (), {"config": {**replay, "lag_weights": [0.1, 0.05, 0.85]}}),
            row("fixed lag", "ppo", (), {"config": {"policy_lag": 2}})]
    pairs, unmatched = twins(real + sims)
    assert [(key[2], [r["name"] for r in r_], [r["name"] for r in s_]) for key, r_, s_ in pairs] == [
        (2, ["r2a", "r2b"], ["twin"]), (4, ["r4"], [])]
    assert unmatched == ["old", "other arm"]
    assert lags_of(real[0]) == [0, 2] and lags_of(sims[0]) == [0, 1, 2]


def test_async_report_speed_of_a_run_and_of_a_seed_batch() -> None:
    """env-steps/s of a single run is its steps over its wall time; a seed batch's record holds the batch's wall time,
    so its speed is the batch's (every seed's steps over that time); no wall time, no speed."""
    from studies.async_report import speed

    def row(path, wall, seeds=None):
        return {"steps": 1000, "wall_time_s": wall, "path": path, "record": {"meta": {"batch_seeds": seeds}}}

    assert speed(row("single-run", 4.0)) == 250.0
    assert speed(row("async", 2.0)) == 500.0
    assert speed(row("seed-batch", 10.0, [1, 2, 3, 4, 5])) == 500.0
    assert speed(row("single-run", None)) is None


def test_setting_label_of_asynchronous_and_replaying_runs() -> None:
    """An asynchronous run's lag is measured, so its setting shows the actors and not the lag it was launched with;
    a setting that does not apply (None) is left out; a replaying run shows its lag and weights."""
    from studies.report import setting_label

    assert setting_label((("env", "E"), ("policy_lag", 0), ("actors", 2), ("lag_weights", None))) == "actors 2"
    assert setting_label((("env", "E"), ("policy_lag", 2), ("actors", None), ("lag_weights", (5, 5, 1215)))) == \
        "lag 2, weights 5-5-1215"
    assert setting_label((("env", "E"), ("policy_lag", 0))) == "lag 0"


def test_a_measured_lag_distribution_in_a_grid(tmp_path: Path) -> None:
    """lag_weights is a grid axis or setting (a list per value, the weights of lags 0..K): passed as --lag-weights,
    the run name says K (which the weights imply) and, for an axis, the weights; lag_weights_from names K from the
    run it reads; records of such runs group by their weights in the report."""
    import json

    from studies.grid import check_runs
    from studies.report import effective

    path = grid_file(tmp_path, {"algo": ["ppo"], "lag_weights": [[12, 30, 8], [1, 1]], "seed": [1]},
                     settings={"lag_mode": "empirical"})
    _, runs = load_grid(path)
    assert [r.name for r in runs] == ["CartPole-v1_ppo_lag2-empirical_w12-30-8_s1",
                                      "CartPole-v1_ppo_lag1-empirical_w1-1_s1"]
    argv = list(runs[0].argv)
    assert argv[argv.index("--lag-weights") + 1] == "[12, 30, 8]" and "--policy-lag" not in argv
    assert check_runs(runs, build_models=False) is None
    measured = tmp_path / "async_run"
    measured.mkdir()
    (measured / "async.json").write_text(json.dumps({"lag_counts": {"0": 2, "3": 1}}))
    _, runs = load_grid(grid_file(tmp_path, {"algo": ["ppo"], "seed": [1]}, name="from_run",
                                  settings={"lag_mode": "empirical", "lag_weights_from": str(measured)}))
    assert [r.name for r in runs] == ["CartPole-v1_ppo_lag3-empirical_s1"] and check_runs(runs, False) is None
    # read when the grid is loaded: the run's arguments carry the weights (a lag not measured weighs 0), not the path
    argv = list(runs[0].argv)
    assert argv[argv.index("--lag-weights") + 1] == "[2, 0, 0, 1]" and str(measured) not in " ".join(argv)
    with pytest.raises(GridError, match="lag_weights_from .*nowhere: not found"):
        load_grid(grid_file(tmp_path, {"algo": ["ppo"], "seed": [1]}, name="gone",
                            settings={"lag_mode": "empirical", "lag_weights_from": str(tmp_path / "nowhere")}))
    # a glob pools the runs it matches, lag by lag; as an axis it is named by the pooled weights, not the path
    for seed, counts in ((1, {"0": 1, "2": 5}), (2, {"0": 1, "1": 1, "2": 4, "4": 1})):
        (tmp_path / f"X_actors2_s{seed}.json").write_text(json.dumps({"meta": {"async": {"lag_counts": counts}}}))
    (tmp_path / "X_actors4_s1.json").write_text(json.dumps({"meta": {"async": {"lag_counts": {"0": 3}}}}))
    _, runs = load_grid(grid_file(tmp_path, {"algo": ["ppo"], "seed": [1], "lag_weights_from": [
        str(tmp_path / "X_actors2_s*.json"), str(tmp_path / "X_actors4_s*.json")]}, name="pooled",
        settings={"lag_mode": "empirical"}))
    assert [r.name for r in runs] == ["CartPole-v1_ppo_lag4-empirical_w2-1-9-0-1_s1",
                                      "CartPole-v1_ppo_lag0-empirical_w3_s1"]
    argv = list(runs[0].argv)
    assert argv[argv.index("--lag-weights") + 1] == "[2, 1, 9, 0, 1]"
    with pytest.raises(GridError, match=r"lag_weights_from .*\*\.json: matches no file"):
        load_grid(grid_file(tmp_path, {"algo": ["ppo"], "seed": [1]}, name="none",
                            settings={"lag_mode": "empirical", "lag_weights_from": str(tmp_path / "Y_*.json")}))
    record = {"meta": {"axes": {"lag_weights": [12, 30, 8]}, "algo": "ppo", "config": {}}}
    assert effective(record, "lag_weights") == (12, 30, 8)  # hashable: settings group and sort


@pytest.mark.parametrize("grid, message", [
    ({"algo": ["ppo"], "seed": []}, "must be a non-empty list"),
    ({"algo": ["ppo"]}, "no seed axis"),
    ({"algo": "ppo", "seed": [1]}, "must be a non-empty list"),
    ({"algo": ["ppo"], "seed": [1], "run_name": ["x"]}, "cannot be set in a grid"),
])
def test_bad_grid_structure(tmp_path: Path, grid, message: str) -> None:
    with pytest.raises(GridError, match=message):
        load_grid(grid_file(tmp_path, grid))


@pytest.mark.parametrize("grid, message", [
    ({"algo": ["ppo", "sac"], "seed": [1]}, "argument --algo: invalid choice: 'sac'"),
    ({"algo": ["ppo"], "seed": [1], "not_a_key": [1, 2]}, "not_a_key"),
    ({"algo": ["dualclip"], "seed": [1], "dual_clip": [0.5]}, "--dual-clip 0.5: c must be > 1"),
    ({"algo": ["ppo"], "seed": [1], "batch_size": [64, 1]}, "rejected the hyperparameters"),
    ({"algo": ["ppo"], "seed": [1], "clip_range": [1.5]}, "clip_range=1.5 must be a number in (0, 1)"),
])
def test_bad_grid_values_stop_before_any_run(tmp_path: Path, capsys: pytest.CaptureFixture, grid,
                                             message: str) -> None:
    code = sweep_main(tmp_path, str(grid_file(tmp_path, grid)))  # in this process: the checks build models only
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "nothing was run" in lines[0], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("model.zip"))


def test_unknown_env_and_file_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = grid_file(tmp_path, {"algo": ["ppo"], "seed": [1]})
    table = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**table, "envs": {"CartPol-v1": {"n_timesteps": 256}}}))
    assert sweep_main(tmp_path, str(path)) == 2
    err = capsys.readouterr().err
    assert "unknown env 'CartPol-v1'" in err and "CartPole-v1" in err
    path.write_text(yaml.safe_dump({**table, "seeds": [1]}))
    assert sweep_main(tmp_path, str(path)) == 2
    assert "unknown key 'seeds'" in capsys.readouterr().err


def test_max_runs_takes_a_cells_seeds_together(tmp_path: Path) -> None:
    """The grid's order is seed-major; --max-runs cuts cell by cell, so that it never splits a seed batch."""
    from sweep import first_runs

    _, runs = load_grid(grid_file(tmp_path, {"algo": ["ppo", "dualclip"], "policy_lag": [0, 2], "seed": [1, 2, 3]}))
    assert [r.name for r in runs[:2]] == ["CartPole-v1_ppo_lag0_s1", "CartPole-v1_ppo_lag2_s1"]
    assert [r.name for r in first_runs(runs, 5)] == [
        "CartPole-v1_ppo_lag0_s1", "CartPole-v1_ppo_lag0_s2", "CartPole-v1_ppo_lag0_s3",
        "CartPole-v1_ppo_lag2_s1", "CartPole-v1_ppo_lag2_s2"]
    assert first_runs(runs, 0) == [] and len(first_runs(runs, 100)) == 12


def test_records_resume_from_records_alone_and_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = grid_file(tmp_path, {"algo": ["ppo", "dualclip"], "policy_lag": [0, 2], "seed": [1, 2]})
    # a sweep stopped after 3 of its 8 runs
    first = sweep(tmp_path, str(path), "--max-runs", "3", "--jobs", "2", "--no-report")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(": ok (") == 3
    records = tmp_path / "results" / "tiny" / "runs"
    assert len(list(records.glob("*.json"))) == 3

    # another machine: only the committed records, no run folders
    shutil.rmtree(tmp_path / "runs")
    assert sweep_main(tmp_path, str(path), "--dry-run") == 0
    dry = capsys.readouterr().out
    states = [line.split()[-1] for line in dry.splitlines() if line.startswith("tiny  ")]
    assert states.count("recorded") == 3 and states.count("do") == 5
    assert "5 runs to do: about" in dry  # estimated from the recorded runs' speed
    rest = sweep(tmp_path, str(path), "--jobs", "2", "--no-report")
    assert rest.returncode == 0, rest.stderr
    assert rest.stdout.count(": ok (") == 5  # only the missing runs
    assert sweep_main(tmp_path, str(path), "--dry-run") == 0
    assert "tiny: 8 of 8 recorded" in capsys.readouterr().out

    record = json.loads((records / "CartPole-v1_dualclip_lag2_s1.json").read_text())
    assert (records / "CartPole-v1_dualclip_lag2_s1.json").stat().st_size < 100_000
    meta = record["meta"]
    assert meta["axes"] == {"env": "CartPole-v1", "algo": "dualclip", "policy_lag": 2, "seed": 1}
    assert meta["config"]["dual_clip"] == 3.0 and meta["code"] and meta["versions"]["torch"] and meta["machine"]["cpu"]
    assert meta["steps"] == 256 and meta["wall_time_s"] >= 0 and "train.py" in meta["command"][0]
    updates = record["updates"]
    assert updates["step"] == [64, 128, 192, 256]
    assert updates["rollout/policy_lag"] == [0.0, 1.0, 2.0, 2.0]  # warm-up: no older snapshot yet
    # each update's train/* values sit in its rollout's row (SB3 writes them one dump later); the last update's
    # are never written (as in stock SB3)
    assert updates["train/behavior_kl"][0] == 0.0 and updates["train/behavior_kl"][1] > 0
    assert updates["train/behavior_kl"][-1] is None
    assert record["eval"]["steps"] == [0, 128, 256] and all(len(r) == 2 for r in record["eval"]["returns"])

    # --record-only writes the missing record of a finished run folder and trains nothing
    (records / "CartPole-v1_dualclip_lag2_s1.json").unlink()
    capsys.readouterr()
    assert sweep_main(tmp_path, str(path), "--record-only", "--no-report") == 0
    out = capsys.readouterr().out
    assert "1 runs to do" in out and "CartPole-v1_dualclip_lag2_s1: ok" in out
    assert json.loads((records / "CartPole-v1_dualclip_lag2_s1.json").read_text())["updates"] == updates

    # the report from records alone
    shutil.rmtree(tmp_path / "runs")
    assert sweep_main(tmp_path, "report", str(tmp_path / "results" / "tiny"), "--reps", "200") == 0
    out = tmp_path / "results" / "tiny"
    summary = (out / "summary.md").read_text()
    assert "| lag 2 | dualclip | 2 |" in summary and "P(X > ppo)" in summary
    for figure in ("curves", "final_vs_lag", "diagnostics_vs_lag"):
        assert (out / "figures" / f"{figure}_CartPole-v1.png").stat().st_size > 10_000
        assert f"figures/{figure}_CartPole-v1.png" in summary
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(r["final_eval"] for r in rows)
    # diagnostics over full-lag updates only: lag 2 leaves out updates 0 and 1 (the last has no train values)
    row = next(r for r in rows if r["name"] == "CartPole-v1_dualclip_lag2_s1")
    assert float(row["behavior_kl"]) == pytest.approx(updates["train/behavior_kl"][2], rel=1e-5)

    # the same runs in a grid with another budget: refused (exit 1), the records kept as they were
    before = (records / "CartPole-v1_dualclip_lag2_s1.json").read_text()
    path.write_text(path.read_text().replace("n_timesteps: 256", "n_timesteps: 320"))
    assert sweep_main(tmp_path, str(path), "--no-report") == 1
    out = capsys.readouterr().out
    assert out.count("REFUSED") == 8 and ": ok (" not in out
    assert (records / "CartPole-v1_dualclip_lag2_s1.json").read_text() == before


@pytest.mark.slow
def test_ray_backend_runs_a_tiny_grid(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    path = grid_file(tmp_path, {"algo": ["ppo", "dualclip"], "policy_lag": [2], "seed": [1]})
    # Ray's workers unpack the code and import torch first: minutes on a busy 2-core machine
    res = sweep(tmp_path, str(path), "--backend", "ray", "--jobs", "2", timeout=1200)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count(": ok (") == 2
    assert len(read_records(tmp_path / "results" / "tiny")) == 2
    assert (tmp_path / "results" / "tiny" / "summary.md").is_file()


def test_records_are_not_ignored_by_git() -> None:
    """Records are meant to be committed: no .gitignore pattern may match results/<study>/runs/."""
    import subprocess

    from tests.helpers import ROOT

    res = subprocess.run(["git", "check-ignore", "-q", "results/any_study/runs/any_run.json"], cwd=ROOT)
    assert res.returncode == 1  # 1: not ignored (0 would be ignored)


def test_run_folder_from_before_the_temperature_keys_is_not_refused(tmp_path: Path) -> None:
    """A checkpointed run folder whose config.yml predates behavior_temperature / temperature_mode still resumes."""
    import train
    from studies.execute import _settings_differ

    _, (run,) = load_grid(grid_file(tmp_path, {"algo": ["ppo"], "seed": [1]}))
    argv = run.train_argv(tmp_path / "runs", 50_000)
    config = train.build_config(train.parse_args(argv))
    folder = tmp_path / "runs" / run.name
    folder.mkdir(parents=True)
    (folder / "args.yml").write_text(yaml.safe_dump({"seed": 1}))
    old = {k: v for k, v in config.items() if k not in ("behavior_temperature", "temperature_mode")}
    (folder / "config.yml").write_text(yaml.safe_dump(old))
    assert _settings_differ(folder, argv) is None
    (folder / "config.yml").write_text(yaml.safe_dump({**old, "behavior_temperature": 2.0}))
    assert "behavior_temperature is 2.0 there, 1.0 in this grid" in _settings_differ(folder, argv)


def fake_record(algo: str, seed: int, n_timesteps: int, evals: dict, **axes) -> dict:
    """A record as studies.records writes one, with only what the report reads."""
    meta = {"name": f"{algo}_{n_timesteps}_{axes}_{seed}", "algo": algo, "seed": seed, "env": "E-v0",
            "axes": {"env": "E-v0", "algo": algo, "seed": seed, **axes},
            "config": {"policy_lag": axes.get("policy_lag", 0), "dual_clip": axes.get("dual_clip", 3.0)},
            "n_timesteps": n_timesteps, "steps": n_timesteps, "wall_time_s": 1.0, "code": "x", "path": "single-run",
            "machine": {"cpu": "c"}}
    return {"meta": meta, "updates": {"step": [n_timesteps], "rollout/ep_rew_mean": [0.0]},
            "eval": {"steps": list(evals), "returns": [[v] for v in evals.values()], "lengths": [[1]] * len(evals)}}


def test_c_sweep_takes_longer_runs_at_its_budget() -> None:
    """A 300k-step c-sweep gets c = 3 from a 500k-step grid, scored at the sweep's step 300k, not at its end, with
    its diagnostics averaged over the updates up to step 300k."""
    from studies.report import _longer_runs, run_rows

    records = [fake_record("dualclip", 1, 300, {300: 10.0}, dual_clip=1.5, policy_lag=4),
               fake_record("dualclip", 1, 500, {300: 20.0, 500: 99.0}, policy_lag=4),  # updates below
               fake_record("dualclip", 1, 500, {400: 5.0, 500: 7.0}, policy_lag=8)]
    # lag 4: the first 4 updates are left out; then 1 % active up to step 300, 50 % after it
    records[1]["updates"] = {"step": [50 * i for i in range(1, 11)], "rollout/ep_rew_mean": [0.0] * 10,
                             "train/pg_clipfrac_lower": [9.0] * 4 + [0.01, 0.01] + [0.5] * 4}
    rows, keys = run_rows(records)
    assert "n_timesteps" in keys  # budgets differ: separate cells
    sweep_setting = next(r["setting"] for r in rows if r["dual_clip"] == 1.5)
    (longer,) = _longer_runs(rows, sweep_setting, 300)
    assert longer["dual_clip"] == 3.0 and longer["final_eval"] == 20.0 and longer["score_step"] == 300
    assert longer["bound_active"] == 0.01  # steps 250 and 300, not the whole run (0.337)


def test_c_sweep_refuses_a_longer_run_without_the_step() -> None:
    """A longer run without an evaluation at the sweep's scoring step stops the report, naming the run."""
    from studies.report import ReportError, c_sensitivity_table, run_rows

    records = [fake_record("dualclip", 1, 300, {300: 10.0}, dual_clip=1.5, policy_lag=4),
               fake_record("dualclip", 1, 300, {300: 12.0}, dual_clip=2.0, policy_lag=4),
               fake_record("dualclip", 1, 500, {250: 20.0, 500: 99.0}, policy_lag=4)]
    rows, _ = run_rows(records)
    with pytest.raises(ReportError, match=re.escape(f"run {records[2]['meta']['name']} has no evaluation at step 300")):
        c_sensitivity_table(rows, reps=200)


def test_c_sensitivity_table_rows() -> None:
    """summary.md's c table: ppo, then one row per c (c = 3 joined from the longer grid at the sweep's step), the
    late return first, with exact and paired tests."""
    from studies.report import c_sensitivity_table, run_rows

    records = [fake_record(algo, seed, 300, {300: value}, policy_lag=4, **({"dual_clip": c} if c else {}))
               for algo, c, seed, value in [("dualclip", 1.5, 1, 10.0), ("dualclip", 1.5, 2, 30.0),
                                            ("ppo", None, 1, 0.0), ("ppo", None, 2, 5.0)]]
    records += [fake_record("dualclip", seed, 500, {200: 7.0, 300: 20.0 + seed, 500: 99.0}, policy_lag=4)
                for seed in (1, 2)]
    rows, _ = run_rows(records)
    table = c_sensitivity_table(rows, reps=200)
    body = [line.split(" | ")[1:10] for line in table[2:]]
    assert [b[0] for b in body] == ["ppo", "dualclip c=1.5", "dualclip c=3"]
    assert [b[1] for b in body] == ["2", "2", "2"]
    # late return: the last 10 % of the 300-step budget holds one evaluation, so the last 3 up to step 300 (c = 3:
    # steps 200 and 300, its step-500 one is out): (7 + 21) / 2 and (7 + 22) / 2
    assert body[1][2].startswith("20 [") and body[2][2].startswith("14.25 [")
    assert body[1][3] == "1 [1, 1] (degenerate)" and body[0][3] == ""  # every run above ppo's: agreement, not certainty
    assert body[1][4] == "0.33"  # 2 of the 6 splits of 4 runs into 2 + 2 are as extreme
    assert body[1][5].startswith("17.5 [") and body[1][5].endswith("(2)")  # seed 1: 10 - 0, seed 2: 30 - 5
    assert body[1][6] == "0.5"  # sign flips of (10, 25): |35| twice of 4
    assert body[2][7].startswith("21.5 [")  # c = 3's final evaluation at step 300, not 99


def test_same_step_join_ignores_a_swing_after_the_budget() -> None:
    """Every run of a table is scored at the budget's evaluation step, whatever it did after: a run evaluated once
    more at its very end (one update later, a swing from 100 to -900) is scored at step 500 like the others; the
    late return averages the last evaluations up to it."""
    from studies.report import ReportError, late_window, run_rows

    swing = fake_record("ppo", 1, 500, {0: 0.0, 300: 60.0, 400: 80.0, 500: 100.0, 512: -900.0})
    plain = fake_record("ppo", 2, 500, {0: 0.0, 300: 30.0, 400: 40.0, 500: 50.0})
    rows, _ = run_rows([swing, plain])
    by_seed = {r["seed"]: r for r in rows}
    assert by_seed[1]["score_step"] == by_seed[2]["score_step"] == 500
    assert by_seed[1]["final_eval"] == 100.0 and by_seed[2]["final_eval"] == 50.0
    assert late_window(swing, 500, 500) == [300, 400, 500]  # 10 % of 500 holds one: at least 3
    assert by_seed[1]["late_eval"] == 80.0 and by_seed[2]["late_eval"] == 40.0
    long_window = fake_record("ppo", 3, 1000, {s: float(s) for s in range(0, 1001, 25)})
    assert late_window(long_window, 1000, 1000) == [900, 925, 950, 975, 1000]  # 10 % of 1,000: five evaluations
    # the nearest evaluation at or before the budget, the same for all; a run without it is refused by name
    early = fake_record("ppo", 1, 500, {0: 0.0, 480: 1.0})
    assert run_rows([early, fake_record("ppo", 2, 500, {0: 0.0, 480: 2.0})])[0][0]["score_step"] == 480
    odd = fake_record("ppo", 2, 500, {0: 0.0, 490: 2.0})  # its 490 is the nearest: the run without it is named
    with pytest.raises(ReportError, match=re.escape(f"run {early['meta']['name']} has no evaluation at step 490")):
        run_rows([early, odd])


def test_a_vector_env_run_is_scored_where_it_crossed_the_budget() -> None:
    """With 64 envs the step count moves 64 at a time: the evaluation the 500-step mark triggered is at 512, and it
    scores the run (not the one at 448); a lag-0 ppo not above its untrained policy is left out of the
    normalised aggregate; two records of one seed in a cell are refused by name."""
    from studies.report import ReportError, cells, compare, normalisation, run_rows

    recs = [fake_record("ppo", seed, 500, {0: 0.0, 448: 1.0, 512: 2.0 + seed, 576: -50.0}) for seed in (1, 2)]
    for rec in recs:
        rec["meta"]["config"]["n_envs"] = 64
    rows, _ = run_rows(recs)
    assert {r["score_step"] for r in rows} == {512} and sorted(r["final_eval"] for r in rows) == [3.0, 4.0]
    tasks = {"E-v0": rows}
    assert normalisation(tasks) == {"E-v0": (0.0, 1.5)}  # late: (0 + 1 + 3) / 3 and (0 + 1 + 4) / 3, mean 1.5
    flat = [fake_record("ppo", 1, 500, {0: 5.0, 500: 5.0})]
    assert normalisation({"F-v0": run_rows(flat)[0]}) == {}
    twice = run_rows([fake_record("ppo", 1, 500, {500: 1.0}), fake_record("ppo", 1, 500, {500: 2.0}),
                      fake_record("dualclip", 1, 500, {500: 3.0}), fake_record("dualclip", 2, 500, {500: 4.0})])[0]
    groups = cells(twice)
    with pytest.raises(ReportError, match="same seed"):
        compare(groups[(twice[2]["setting"], "dualclip")], groups[(twice[0]["setting"], "ppo")], "late_eval", 200)


def test_task_table_normalises_per_task() -> None:
    """Across tasks: each task's late return with P(X > ppo); the aggregate normalises per task between the
    untrained policy's evaluation (0) and ppo's lag-0 late return (1)."""
    from studies.report import normalisation, run_rows, task_rows, task_table

    records = []
    for env, scale in (("E-v0", 1.0), ("F-v0", 100.0)):
        for seed in (1, 2):
            for algo, final in (("ppo", 10.0), ("dualclip", 20.0)):
                rec = fake_record(algo, seed, 500, {0: 0.0, 300: scale * final, 400: scale * final,
                                                   500: scale * final})
                rec["meta"]["env"] = rec["meta"]["axes"]["env"] = env
                rec["meta"]["name"] += env
                records.append(rec)
    rows, _ = run_rows(records)
    tasks = task_rows(rows)
    assert normalisation(tasks) == {"E-v0": (0.0, 10.0), "F-v0": (0.0, 1000.0)}
    table = task_table(tasks, reps=200)
    ppo, dual = (line.split(" | ") for line in table[2:])
    assert ppo[2] == "10 (2)" and ppo[3] == "1000 (2)" and ppo[5].startswith("1 [")  # normalised: 1 on each
    assert dual[2] == "20 (2; 1, p 0.33)" and dual[5].startswith("2 [")  # twice ppo's on each task
    assert dual[6].startswith("1 [1, 1] (degenerate)")


def test_tasks_of_different_budgets_are_also_scored_at_the_shortest() -> None:
    """Across tasks with different budgets, every run is scored again at the shortest one: its late return over
    the last evaluations up to that step (at least three), its final evaluation there; equal budgets add nothing."""
    from studies.report import at_common_budget, run_rows, task_rows

    records = []
    for env, budget, evals in (("E-v0", 500, {0: 0.0, 300: 1.0, 400: 1.0, 500: 1.0}),
                               ("F-v0", 1000, {0: 0.0, 400: 1.0, 450: 2.0, 500: 3.0, 900: 10.0, 950: 10.0,
                                               1000: 10.0})):
        rec = fake_record("ppo", 1, budget, evals)
        rec["meta"]["env"] = rec["meta"]["axes"]["env"] = env
        rec["meta"]["name"] += env
        records.append(rec)
    tasks = task_rows(run_rows(records)[0])
    assert tasks["F-v0"][0]["late_eval"] == 10.0
    step, common = at_common_budget(tasks)
    assert step == 500
    assert (common["F-v0"][0]["late_eval"], common["F-v0"][0]["final_eval"]) == (2.0, 3.0)
    assert common["E-v0"][0]["late_eval"] == 1.0
    assert at_common_budget({"E-v0": tasks["E-v0"]}) == (None, {})


def test_falls_table_across_tasks_hand_checked() -> None:
    """The cross-task stability table: per task, lag and arm each seed's best → final evaluation, the drop from the
    best, the deepest fall below an earlier evaluation with P(X > ppo) and its exact p, and KL bursts per seed."""
    from studies.report import falls_table, run_rows, task_rows

    records = [fake_record("ppo", 1, 500, {0: 0.0, 250: 100.0, 450: 100.0, 500: 100.0}),
               fake_record("ppo", 2, 500, {0: 0.0, 250: 200.0, 450: 150.0, 500: 200.0}),
               # fell from 300 to -100 and recovered to 250; fell from 400 to 0 and stayed
               fake_record("decoupled", 1, 500, {0: 0.0, 250: 300.0, 450: -100.0, 500: 250.0}, dual_clip=None),
               fake_record("decoupled", 2, 500, {0: 0.0, 250: 400.0, 450: 0.0, 500: 0.0}, dual_clip=None)]
    records[2]["updates"] = {"step": [100, 300, 500], "rollout/ep_rew_mean": [0.0] * 3,
                             "train/ppo_kl": [0.5, 0.01, 0.9]}
    table = falls_table(task_rows(run_rows(records)[0]), reps=200)
    assert len(table) == 4
    ppo, dec = (line.split(" | ") for line in table[2:])
    assert ppo[:5] == ["| E-v0", "0", "ppo", "2", "100 → 100, 200 → 200"]
    assert ppo[5].startswith("0 [") and ppo[6].startswith("25 [")  # ppo seed 2 fell 50 once: mean (0 + 50) / 2
    assert ppo[7] == ppo[8] == ""  # no test of ppo against itself
    assert dec[4] == "300 → 250, 400 → 0" and dec[5].startswith("225 [")  # (50 + 400) / 2
    assert dec[6].startswith("400 [")  # both fell by 400
    assert dec[7] == "1 [1, 1] (degenerate)" and dec[8] == "0.33"  # every decoupled fall deeper than every ppo one
    assert dec[9] == "2, n/a |"  # lag 0: every update counts; a record without ppo_kl is not counted as 0
    assert ppo[9] == "n/a |"  # stock SB3 PPO logs no ppo_kl


def test_same_computations_are_named() -> None:
    """Two arms whose runs of one seed evaluate identically beyond step 0 are named as one computation."""
    from studies.report import cells, run_rows, same_computations

    records = [fake_record("ppo", 1, 500, {0: 1.0, 250: 5.0, 500: 9.0}),
               fake_record("decoupled", 1, 500, {0: 1.0, 250: 5.0, 500: 9.0}, dual_clip=None),
               fake_record("ppo", 2, 500, {0: 1.0, 250: 5.0, 500: 9.0}),
               fake_record("decoupled", 2, 500, {0: 1.0, 250: 5.0, 500: 8.0}, dual_clip=None),
               fake_record("ppo", 3, 500, {0: 1.0, 250: 5.0, 500: 9.0}),
               fake_record("decoupled", 3, 500, {0: 1.0, 250: 4.0, 500: 9.0}, dual_clip=None)]
    rows, _ = run_rows(records)
    assert same_computations(cells(rows)) == [
        "- lag 0: ppo and decoupled evaluate identically, seed 1 to the end; seed 2 to step 250"]


@pytest.mark.slow  # three sweeps; the default path (seed batches) is also run by the records test above
def test_seeds_of_a_cell_train_as_one_seed_batch(tmp_path: Path) -> None:
    """By default the seeds of one grid cell train in one process (train.py --seeds), each in its own run folder
    with its own record, which names the path; --no-batch trains one process per run."""
    path = grid_file(tmp_path, {"algo": ["decoupled"], "policy_lag": [2], "seed": [1, 2, 3]})
    res = sweep(tmp_path, str(path), "--no-report")
    assert res.returncode == 0, res.stderr
    assert "3 runs train as 1 seed batches" in res.stdout and res.stdout.count("(seed batch of 3)") == 3
    records = {r["meta"]["seed"]: r for r in read_records(tmp_path / "results" / "tiny")}
    assert sorted(records) == [1, 2, 3]
    for seed, record in records.items():
        meta = record["meta"]
        assert meta["path"] == "seed-batch" and meta["batch_seeds"] == [1, 2, 3]
        assert "--seeds 1 2 3" in meta["command"][0] and meta["train_argv"][meta["train_argv"].index("--seed") + 1] == str(seed)
        assert record["updates"]["step"] == [64, 128, 192, 256] and record["eval"]["steps"] == [0, 128, 256]
    assert records[1]["updates"]["train/loss"] != records[2]["updates"]["train/loss"]

    # a cell's one leftover seed trains as a batch of one, as it would inside the batch
    left = grid_file(tmp_path, {"algo": ["decoupled"], "policy_lag": [2], "seed": [1, 2, 3, 4]})
    res = sweep(tmp_path, str(left), "--no-report")
    assert res.returncode == 0, res.stderr
    assert "(seed batch of 1)" in res.stdout and "1 runs train" not in res.stdout
    meta = read_record(tmp_path / "results" / "tiny" / "runs" / "CartPole-v1_decoupled_lag2_s4.json")["meta"]
    assert meta["path"] == "seed-batch" and meta["batch_seeds"] == [4] and "--seeds 4" in meta["command"][0]

    alone = grid_file(tmp_path, {"algo": ["ppo"], "seed": [1, 2]}, name="alone", study="alone")
    res = sweep(tmp_path, str(alone), "--no-report", "--no-batch")
    assert res.returncode == 0, res.stderr
    assert "seed batch" not in res.stdout
    assert {r["meta"]["path"] for r in read_records(tmp_path / "results" / "alone")} == {"single-run"}


def test_a_run_marker_is_claimed_once(tmp_path: Path) -> None:
    """Two sweep processes cannot both take a run: the marker is created exclusively; a stale one (its process
    gone) is taken over."""
    import socket

    from studies.execute import claim, marker

    mark = marker(tmp_path, "run")
    assert claim(mark) and not claim(mark)  # held by this (live) process
    mark.write_text(f"{socket.gethostname()} 999999999\n")  # a process that no longer exists
    assert claim(mark) and mark.read_text().split()[1] != "999999999"


def test_intervals_are_reproducible() -> None:
    """The same values give the same bootstrap intervals whatever numpy's global generator did before (rliable
    draws from it), and the global generator is left as it was."""
    import numpy as np

    from studies.report import curve_band, improvement_ci, mean_ci

    x, y = [1.0, 5.0, 2.0, 8.0], [0.0, 3.0, 4.0]
    first = (mean_ci(x, reps=300), improvement_ci(x, y, reps=300), curve_band(np.array([x, y + [1.0]]), reps=300)[1])
    np.random.random(7)
    again = (mean_ci(x, reps=300), improvement_ci(x, y, reps=300), curve_band(np.array([x, y + [1.0]]), reps=300)[1])
    assert first[:2] == again[:2] and np.array_equal(first[2], again[2])
    np.random.seed(123)
    np.random.random(7)
    after = np.random.random()
    np.random.seed(123)
    np.random.random(7)
    mean_ci(x, reps=300)
    assert np.random.random() == after


def test_stability_table_hand_checked() -> None:
    """The decoupled-stability table: the late return against the default variant, the drop from the best
    evaluation, the deepest fall, and KL bursts and updates with every behaviour weight at its floor, both counted
    only over updates with the full lag, seed by seed."""
    import math

    import numpy as np

    from agents.losses import LOG_RATIO_CLAMP
    from studies.report import KL_BURST, WEIGHT_FLOOR, cells, run_rows, stability_table

    assert WEIGHT_FLOOR == math.exp(-LOG_RATIO_CLAMP)
    floor32 = float(np.float32(WEIGHT_FLOOR))  # as a record holds it
    # seed 1: at the floor in updates 0 (not yet lagged: left out) and 2; seed 2: every weight filtered (0)
    # in update 1, just above the floor in update 2
    weights = {1: [floor32, 3.0, floor32], 2: [2.0, 0.0, 1.5 * WEIGHT_FLOOR]}
    records = []
    for seed, (final, kl) in enumerate([(100.0, [0.9, 0.01, 0.5]), (300.0, [0.01, 0.02, 0.03])], start=1):
        rec = fake_record("decoupled", seed, 500, {250: 400.0, 450: -300.0, 500: final}, policy_lag=1, dual_clip=None)
        rec["updates"] = {"step": [100, 300, 500], "rollout/ep_rew_mean": [0.0] * 3, "train/ppo_kl": kl,
                          "train/is_weight_max": weights[seed]}
        records.append(rec)
    for seed in (1, 2):
        records.append(fake_record("decoupled", seed, 500, {500: 1000.0}, policy_lag=1, dual_clip=None,
                                   is_weight_mode="filter", is_weight_max=5))
    rows, _ = run_rows(records)
    table = stability_table(cells(rows), reps=200)
    assert KL_BURST == 0.3 and len(table) == 4
    base, filt = (line.split(" | ")[1:16] for line in table[2:])
    assert base[0] == "decoupled" and filt[0] == "decoupled filter@5"
    # late: the last 3 evaluations up to 500, (400 - 300 + 100) / 3 and (400 - 300 + 300) / 3; no tests against itself
    assert base[2].startswith("100 [") and base[3] == base[4] == ""
    assert base[7].startswith("200 [")  # final: mean of 100 and 300
    assert base[9] == "400 → 100, 400 → 300" and base[10].startswith("200 [")  # best 400 - final: 300 and 100
    assert base[11].startswith("700 [")  # both seeds fell from 400 to -300, whatever they ended at
    assert base[13] == "1, 0" and base[14] == "0.5"  # the 0.9 of update 0 (lag 1: data not yet lagged) is left out
    assert table[2].split(" | ")[-1] == "1, 1 |"  # the floor, seed by seed
    assert table[3].split(" | ")[-1] == "n/a |"  # records without the weights' log
    assert filt[3] == "1 [1, 1] (degenerate)" and filt[4] == "0.33" and filt[8] == "1 [1, 1] (degenerate)"
    assert filt[5].startswith("900 [") and filt[6] == "0.5"  # paired: 1000 - 66.7 and 1000 - 133.3
    assert filt[10].startswith("0 [") and filt[11].startswith("0 [") and filt[12] == "0.33"


def test_weight_share_curve_sums_truncated_and_filtered() -> None:
    """The figure's last panel: a filter-mode run logs a truncated share of 0 beside its filtered share, and a
    record from before filtering existed logs no filtered share; the curve is their sum, in %, either way."""
    from studies.report import _update_curves

    filt = fake_record("decoupled", 1, 300, {300: 0.0})
    filt["updates"].update({"step": [100, 200, 300], "train/is_weight_truncated": [None, 0.0, 0.0],
                            "train/is_weight_filtered": [None, 0.04, 0.1]})
    old = fake_record("decoupled", 2, 300, {300: 0.0})
    old["updates"].update({"step": [100, 200, 300], "train/is_weight_truncated": [None, 0.01, 0.02]})
    steps, curves = _update_curves([{"record": filt}, {"record": old}],
                                   ["train/is_weight_truncated", "train/is_weight_filtered"], 100)
    assert list(steps) == [200, 300]  # an update without a value is left out
    assert curves.tolist() == [[4.0, 10.0], [1.0, 2.0]]
    assert _update_curves([{"record": old}], ["train/ppo_kl"], 1) == (None, None)


def test_bound_activity_table_by_hand() -> None:
    """The real-ALE diagnostics table: every cell of the reported study, and only the other studies' dualclip cells
    at c = 3, fixed lag and tau = 1; diagnostics from the updates with the full lag, the largest ratio over runs."""
    from studies.report import bound_activity_table, run_rows

    def rec(algo: str, seed: int, lag: int, ratio_max: list, env: str, **axes) -> dict:
        r = fake_record(algo, seed, 500, {500: 1.0}, policy_lag=lag, **axes)
        r["meta"]["env"] = r["meta"]["axes"]["env"] = env
        r["updates"] = {"step": [100 * (i + 1) for i in range(len(ratio_max))], "rollout/ep_rew_mean": [0.0] * 4,
                        "train/ratio_max": ratio_max, "train/pg_clipfrac_lower": [0.5, 0.01, 0.02, 0.03]}
        return r

    ale = [rec("dualclip", seed, 1, [50.0, 9.0, 2.0, 3.0 * seed], "ALE/X-v5") for seed in (1, 2)]
    other = [rec("dualclip", 1, 1, [1.0, 2.0, 2.0, 2.0], "M-v0"),
             rec("dualclip", 1, 1, [1.0, 7.0, 7.0, 7.0], "M-v0", dual_clip=1.5),  # another c: left out
             rec("dualclip", 1, 1, [1.0, 8.0, 8.0, 8.0], "M-v0", behavior_temperature=1.5),  # exploring: left out
             rec("ppo", 1, 1, [1.0, 6.0, 6.0, 6.0], "M-v0")]  # not the dual-clip arm: left out
    lines = bound_activity_table({"diag": run_rows(ale)[0], "other": run_rows(other)[0]})
    assert len(lines) == 2 + 2
    # lag 1: the first update (ratio max 50) is left out; seeds' means (9+2+3)/3 and (9+2+6)/3, largest 9
    assert lines[2].startswith("| diag | ALE/X-v5 | lag 1 | dualclip | 2 | ") and "| 5.17 | 9 | " in lines[2]
    assert lines[2].endswith("| 2 % |")  # bound active: mean of 0.01, 0.02, 0.03
    assert lines[3].startswith("| other | M-v0 | lag 1 | dualclip | 1 | ") and "| 2 | 2 | " in lines[3]


def test_late_entropy_is_the_last_tenth_of_the_updates() -> None:
    """The late entropy averages -entropy_loss over the last 10 % of the updates (at least one), skipping updates
    without a value; a run without entropy has none."""
    from studies.report import late_entropy

    rec = fake_record("ppo", 1, 500, {500: 1.0})
    rec["updates"]["train/entropy_loss"] = [None] + [-1.0] * 17 + [-0.5, -0.25]  # 19 values: the last 2
    assert late_entropy(rec) == 0.375
    rec["updates"]["train/entropy_loss"] = [-2.0, None]
    assert late_entropy(rec) == 2.0
    assert late_entropy(fake_record("ppo", 1, 500, {500: 1.0})) is None


def test_an_older_version_of_a_game_stays_out_of_the_aggregate() -> None:
    """Breakout-v0 (the full action set) beside Breakout-v1 is an ablation of one game: shown per task, left out of
    the aggregate over games, which counts Breakout once."""
    from studies.report import aggregate_exclusions, normalisation, other_version

    envs = ["MinAtar/Breakout-v0", "MinAtar/Breakout-v1", "MinAtar/SpaceInvaders-v1", "ALE/Breakout-v5", "Odd"]
    assert other_version("MinAtar/Breakout-v0", envs) == "MinAtar/Breakout-v1"
    assert [other_version(e, envs) for e in envs[1:]] == [None] * 4  # ALE's game is another game
    tasks = {}
    for env in envs[:3]:
        recs = [fake_record("ppo", seed, 500, {0: 0.0, 500: 10.0}) for seed in (1, 2)]
        for r in recs:
            r["meta"]["env"] = r["meta"]["axes"]["env"] = env
        tasks[env] = [{"record": r, "algo": "ppo", "policy_lag": 0, "late_eval": 10.0} for r in recs]
    assert list(aggregate_exclusions(tasks)) == ["MinAtar/Breakout-v0"]
    assert normalisation(tasks) == {"MinAtar/Breakout-v1": (0.0, 10.0), "MinAtar/SpaceInvaders-v1": (0.0, 10.0)}


def test_replicates_that_part_at_a_resume_say_so() -> None:
    """Two arms identical until one was resumed: the not-replicates line names a resume before the first evaluation
    that differs (identical evaluations may outlast it), and no resume after it."""
    from studies.report import cells, resumed_at, run_rows, same_computations

    ppo = fake_record("ppo", 1, 500, {0: 0.0, 250: 5.0, 500: 9.0})
    dual = fake_record("dualclip", 1, 500, {0: 0.0, 250: 5.0, 500: 7.0})
    dual["meta"]["command"] = ["python train.py ...", "python train.py --resume RUN  # resumed at step 384"]
    ppo["meta"]["command"] = ["python train.py ...", "python train.py --resume RUN  # resumed at step 512"]
    assert resumed_at(dual) == [384] and resumed_at(fake_record("ppo", 2, 500, {500: 1.0})) == []
    (line,) = same_computations(cells(run_rows([ppo, dual])[0]))
    assert line == "- lag 0: ppo and dualclip evaluate identically, seed 1 to step 250 (dualclip resumed at step 384)"


def test_final_vs_lag_puts_every_variant_at_its_own_lags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A variant run at fewer lags than the others (lags 4 and 16 beside 0, 4 and 16) is drawn at the positions of
    its own lags, under the right tick labels, each variant slightly offset, with its exact number of seeds."""
    import studies.report as report

    records = [fake_record("decoupled", seed, 500, {500: 1.0}, policy_lag=lag, dual_clip=None)
               for lag in (0, 4, 16) for seed in (1, 2)]
    records += [fake_record("decoupled", seed, 500, {500: 2.0}, policy_lag=lag, dual_clip=None,
                            is_weight_mode="filter", is_weight_max=5) for lag in (4, 16) for seed in (1, 2)]
    records.append(fake_record("decoupled", 3, 500, {500: 2.0}, policy_lag=4, dual_clip=None,
                               is_weight_mode="filter", is_weight_max=5))  # three seeds at lag 4, two at 16
    rows, _ = report.run_rows(records)
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, title, path: figures.append(fig) or path)
    report.fig_final_vs_lag("E-v0", rows, tmp_path, reps=50)
    ax = figures[0].axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["0", "4", "16"]
    drawn = {bars.get_label(): [ticks[round(x)] for x in bars.lines[0].get_xdata()] for bars in ax.containers}
    assert drawn == {"decoupled (n=2)": ["0", "4", "16"], "decoupled filter@5 (n=3/2 by lag)": ["4", "16"]}
    # each variant at its own offset around the lag (error bars never overlap), in its own colour, legend outside
    at_lag_4 = [bars.lines[0].get_xdata()[-2] for bars in ax.containers]
    assert at_lag_4[0] < 1 < at_lag_4[1]
    assert len({bars.lines[0].get_color() for bars in ax.containers}) == 2
    assert ax.get_legend().get_bbox_to_anchor().x0 > ax.get_window_extent().x1


def test_every_variant_of_a_study_gets_its_own_colour() -> None:
    """The MuJoCo study's 12 variants: with tab10 alone, two decoupled variants shared ppo's and dualclip's colours."""
    from studies.report import _colors

    variants = ["ppo", "dualclip", "decoupled", "decoupled c=3", "decoupled filter@2", "decoupled filter@5",
                "decoupled truncate@5"] + [f"dualclip c={c}" for c in ("1.2", "1.5", "2", "5", "10")]
    colours = _colors(variants)
    assert len(set(colours.values())) == len(variants) == 12
    assert _colors(variants[:3])["ppo"] == colours["ppo"]  # ppo first, so the same colour in every figure


def test_sweep_final_eval_evaluates_each_run_as_it_is_recorded(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """``--final-eval N`` writes each run's final-evaluation record beside its training record as the run lands (run
    folders are not committed: evaluated later, a lost folder loses the evaluation); `final-eval` then has nothing
    left to do."""
    path = grid_file(tmp_path, {"algo": ["ppo"], "policy_lag": [1], "seed": [3]})
    res = sweep(tmp_path, str(path), "--no-report", "--final-eval", "2")
    assert res.returncode == 0, res.stderr
    assert "CartPole-v1_ppo_lag1_s3: ok" in res.stdout and "; final evaluation: deterministic " in res.stdout
    study = tmp_path / "results" / "tiny"
    final = json.loads((study / "final_eval" / "CartPole-v1_ppo_lag1_s3.json").read_text())
    record = read_record(study / "runs" / "CartPole-v1_ppo_lag1_s3.json")
    assert final["of_record"] == {"recorded": record["meta"]["recorded"], "steps": 256}
    assert final["seed"] == 1003 and final["study"] == "tiny" and final["command"].startswith("python sweep.py ")
    assert len(final["deterministic"]["returns"]) == 2 and len(final["stochastic"]["returns"]) == 2
    import sweep as sweep_module

    assert sweep_module.main(["final-eval", str(study), "--runs-root", str(tmp_path / "runs"), "--episodes", "2"]) == 0
    assert "0 written, 0 left out" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        sweep_main(tmp_path, str(path), "--final-eval", "-1")
    assert exc.value.code == 2 and "--final-eval -1" in capsys.readouterr().err


def test_reused_records_from_another_cpu_capability_are_named_in_one_line(tmp_path: Path) -> None:
    """A record names torch's CPU capability (which decides bit-for-bit repeats); the sweep says, in one line per
    study, how many of the records it reuses came from another capability or name none (older records)."""
    import torch

    import sweep as sweep_module
    from studies.records import write_record

    here = torch.backends.cpu.get_cpu_capability()
    machines = {"a": {"cpu": "c", "torch_cpu_capability": here}, "b": {"cpu": "c", "torch_cpu_capability": "OTHER"},
                "c": {"cpu": "c"}}
    for name, machine in machines.items():
        record = fake_record("ppo", 1, 100, {100: 1.0})
        record["format"], record["meta"]["name"], record["meta"]["machine"] = 1, name, machine
        write_record(tmp_path, record)
    note = sweep_module.capability_note("tiny", tmp_path, ["a", "b", "c"])
    assert note.startswith("tiny: of the 3 records reused, 1 on OTHER, 1 on an unknown one") and here in note
    assert "\n" not in note
    assert sweep_module.capability_note("tiny", tmp_path, ["a"]) is None


def test_final_eval_scores_each_run_both_ways_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = grid_file(tmp_path, {"algo": ["ppo", "dualclip"], "policy_lag": [2], "seed": [1]})
    assert sweep(tmp_path, str(path), "--no-report").returncode == 0
    study = tmp_path / "results" / "tiny"
    import sweep as sweep_module

    args = ["final-eval", str(study), "--runs-root", str(tmp_path / "runs"), "--episodes", "2"]
    assert sweep_module.main(args) == 0
    assert "2 written, 0 left out" in capsys.readouterr().out
    evals = {p.stem: json.loads(p.read_text()) for p in (study / "final_eval").glob("*.json")}
    assert sorted(evals) == ["CartPole-v1_dualclip_lag2_s1", "CartPole-v1_ppo_lag2_s1"]
    for name, e in evals.items():
        assert e["seed"] == 1001 and e["model_timesteps"] == 256 and e["episodes"] == 2
        assert e["of_record"] == {"recorded": read_record(study / "runs" / f"{name}.json")["meta"]["recorded"],
                                  "steps": 256}
        assert len(e["deterministic"]["returns"]) == 2 and len(e["stochastic"]["returns"]) == 2
        assert e["deterministic"]["mean"] == pytest.approx(sum(e["deterministic"]["returns"]) / 2)
    # a second call evaluates nothing again
    assert sweep_module.main(args) == 0
    assert "0 written, 0 left out" in capsys.readouterr().out

    # the report's table: one row per cell with a final evaluation that belongs to the cell's training record
    ppo_record = study / "runs" / "CartPole-v1_ppo_lag2_s1.json"
    original = ppo_record.read_text()
    ppo_record.write_text(original.replace('"recorded": "', '"recorded": "retrained '))  # a run trained again
    assert sweep_main(tmp_path, "report", str(study), "--reps", "200") == 0
    summary = (study / "summary.md").read_text()
    final = summary[summary.index("| setting | variant | runs | greedy, mean [95 % CI] |"):].split("\n\n")[0]
    assert "| lag 2 | dualclip | 1 |" in final and "| ppo |" not in final  # ppo's belongs to the old record

    # a stale final evaluation is made again; a folder holding another model, a missing folder and an unreadable
    # model are left out, each in one line, and the others still evaluated
    ppo_record.write_text(original.replace('"steps": 256', '"steps": 320'))
    (study / "final_eval" / "CartPole-v1_dualclip_lag2_s1.json").unlink()
    (tmp_path / "runs" / "tiny" / "CartPole-v1_dualclip_lag2_s1" / "model.zip").write_bytes(b"not a zip")
    assert sweep_module.main(args) == 0
    out = capsys.readouterr().out
    assert "0 written, 2 left out" in out
    assert "model.zip is at step 256, the record at 320: not the recorded model" in out
    assert "left out: CartPole-v1_dualclip_lag2_s1: " in out and "zip" in out.split("CartPole-v1_dualclip_lag2_s1: ")[1]
    shutil.rmtree(tmp_path / "runs" / "tiny" / "CartPole-v1_dualclip_lag2_s1")
    assert sweep_module.main(args) == 0
    assert f"no {tmp_path / 'runs' / 'tiny' / 'CartPole-v1_dualclip_lag2_s1' / 'model.zip'} here" in capsys.readouterr().out
    # a bad runs root is one line, exit 2
    with pytest.raises(SystemExit) as exc:
        sweep_module.main(["final-eval", str(study), "--runs-root", str(tmp_path / "nowhere")])
    assert exc.value.code == 2 and "--runs-root" in capsys.readouterr().err
