"""train.py end to end: the smoke run, the run folder, what it prints, one-line errors for bad input, and what
--resume accepts."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import yaml
from tbparse import SummaryReader

from tests.helpers import run_script

TINY_PARAMS = ["-params", "n_steps:64", "batch_size:32", "n_epochs:2", "policy_kwargs:{net_arch: [16]}"]


def test_halfcheetah_smoke_run_writes_run_folder(tmp_path) -> None:
    res = run_script(
        "train.py",
        ["--algo", "dualclip", "--env", "HalfCheetah-v4", "-n", "1024", "--seed", "3", "-f", str(tmp_path),
         "--verbose", "0"],
    )
    assert res.returncode == 0, res.stderr
    run = tmp_path / "HalfCheetah-v4_dualclip_lag0_s3"
    for name in ("config.yml", "args.yml", "command.txt", "model.zip", "vecnormalize.pkl"):
        assert (run / name).is_file(), name
    config = yaml.safe_load((run / "config.yml").read_text())
    assert config["n_steps"] == 512 and config["dual_clip"] == 3.0 and config["n_timesteps"] == 1024
    assert "--algo dualclip" in (run / "command.txt").read_text()
    scalars = SummaryReader(str(run)).scalars
    tags = set(scalars["tag"])
    assert {"train/pg_clipfrac_lower", "train/pg_clipfrac", "train/ppo_kl", "train/behavior_kl",
            "train/dual_clip_would_bound", "rollout/policy_lag", "rollout/behavior_temperature"} <= tags
    assert scalars[scalars.tag == "train/pg_clipfrac_lower"]["step"].tolist() == [1024]
    reader = SummaryReader(str(run))
    hparams = dict(zip(reader.hparams["tag"], reader.hparams["value"]))
    assert hparams["algo"] == "dualclip" and hparams["policy_lag"] == 0 and hparams["lag_mode"] == "fixed"
    assert hparams["behavior_temperature"] == 1.0 and hparams["temperature_mode"] == "fixed"
    assert "train/log_ratio" in set(reader.histograms["tag"])
    with open(run / "vecnormalize.pkl", "rb") as f:  # rl-zoo3's tuned entry has gamma 0.98: so has VecNormalize
        assert pickle.load(f).gamma == config["gamma"] == 0.98


def test_vecnormalize_gamma_is_the_algorithms() -> None:
    from cli.hyperparams import normalize_kwargs

    assert normalize_kwargs({"normalize": False, "gamma": 0.9}) is False
    assert normalize_kwargs({"normalize": True}) == {"gamma": 0.99}  # SB3 PPO's default
    assert normalize_kwargs({"normalize": True, "gamma": 0.98}) == {"gamma": 0.98}
    assert normalize_kwargs({"normalize": {"gamma": 0.9, "norm_obs": False}, "gamma": 0.98}) == {
        "gamma": 0.9, "norm_obs": False}  # given inside normalize: wins


@pytest.mark.parametrize("algo", ["ppo", pytest.param("decoupled", marks=pytest.mark.slow)])
def test_lagged_run_names_and_second_run_never_overwrites(tmp_path, algo: str) -> None:
    args = ["--algo", algo, "--env", "CartPole-v1", "-n", "128", "--seed", "1", "--policy-lag", "2",
            "--lag-mode", "per-env", "-f", str(tmp_path), "--verbose", "0", *TINY_PARAMS]
    assert run_script("train.py", args).returncode == 0
    assert run_script("train.py", args).returncode == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"CartPole-v1_{algo}_lag2-per-env_s1", f"CartPole-v1_{algo}_lag2-per-env_s1_2"]
    config = yaml.safe_load((tmp_path / names[0] / "config.yml").read_text())
    assert config["policy_lag"] == 2 and config["lag_mode"] == "per-env"


BAD_INPUT = [
    (["--algo", "sac", "--env", "CartPole-v1"], "sac"),
    (["--algo", "ppo", "--env", "CartPol-v1"], "CartPole-v1"),
    (["--algo", "dualclip", "--env", "CartPole-v1", "--dual-clip", "0.8"], "0.8"),
    (["--algo", "ppo", "--env", "CartPole-v1", "-params", "learning_rate"], "learning_rate"),
    (["--algo", "ppo", "--env", "CartPole-v1", "-params", "n_steps:[64"], "n_steps"),
    (["--algo", "ppo", "--env", "CartPole-v1", "-params", "learning_rat:1e-3"], "learning_rate"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--policy-lag", "-1"], "-1"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--policy-lag", "1.5"], "1.5"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--lag-mode", "random"], "random"),
    (["--algo", "ppo", "--env", "CartPole-v1", "-params", "clip_range:1.5"], "clip_range=1.5"),
    (["--algo", "dualclip", "--env", "CartPole-v1", "--loss-agg-mode", "mean"], "mean"),
    (["--algo", "ppo", "--env", "CartPole-v1", "-n", "0"], "-n 0"),
    (["--algo", "ppo", "--env", "CartPole-v1", "-n", "2.5"], "2.5 is not a whole number of steps"),
    (["--algo", "ppo", "--env", "CartPole-v1", "-n", "1e5x"], "1e5x is not a whole number of steps"),
    (["--algo", "ppo", "--env", "CartPole-v1", "-params", "n_timesteps:1.5"], "n_timesteps 1.5"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--device", "foo"], "--device foo"),
    (["--algo", "ppo", "--env", "CartPole-v1", "-params", "n_envs:0"], "n_envs=0"),
    (["--algo", "ppo", "--env", "CartPole-v1", "-params", "n_steps:abc"], "ppo rejected the hyperparameters"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--loss-agg-mode", "seq-mean-token-sum"],
     "--algo ppo has no loss_agg_mode; use an arm that has: dualclip, decoupled"),
    (["--algo", "ppo", "--env", "CartPole-v1", "-conf", "broken.yml"], "broken.yml is not valid YAML"),
    (["--algo", "ppo", "--env", "CartPole-v1", "-params", "policy_lag:4"], "set it with --policy-lag"),
    (["--algo", "dualclip", "--env", "CartPole-v1", "--is-weight-mode", "filter"], "use an arm that has: decoupled"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--behavior-temperature", "0"], "--behavior-temperature 0.0"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--behavior-temperature", "hot"], "hot"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--temperature-mode", "random"], "random"),
    (["--algo", "ppo", "--env", "Pendulum-v1", "--behavior-temperature", "2", "-params", "use_sde:true"],
     "use_sde=True with behavior_temperature"),
    (["--algo", "decoupled", "--env", "CartPole-v1", "--is-weight-mode", "drop"], "drop"),
    (["--algo", "decoupled", "--env", "CartPole-v1", "--is-weight-max", "0"], "--is-weight-max 0.0"),
    (["--algo", "decoupled", "--env", "CartPole-v1", "-params", "is_weight_mode:drop"], "is_weight_mode='drop'"),
    # the empirical lag mode: its weights (flags, values, a file to read them from)
    (["--algo", "ppo", "--env", "CartPole-v1", "--lag-mode", "empirical"],
     "--lag-mode empirical needs the weights of lags 0..K: --lag-weights 0:12,1:30,2:8"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--lag-weights", "1,2"], "--lag-weights needs --lag-mode empirical"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--lag-mode", "empirical", "--lag-weights", "1,2",
      "--lag-weights-from", "x"], "--lag-weights and --lag-weights-from: give one of them"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--lag-mode", "empirical", "--lag-weights", "0:1,2:3", "--policy-lag",
      "3"], "--policy-lag 3 with --lag-weights 0:1,2:3: K is the weights' largest lag, 2"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--lag-mode", "empirical", "--lag-weights", "12,30,0"],
     "--lag-weights 12,30,0: lag_weights=[12.0, 30.0, 0.0]: the weight of lag K=2 is 0"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--lag-mode", "empirical", "--lag-weights", "0:1,1:-2"],
     "negative or not finite (-2.0)"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--lag-mode", "empirical", "--lag-weights", "0:1,0:3"],
     "lag '0' is named twice"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--lag-mode", "empirical", "--lag-weights", "1,x"],
     "weight 'x' is not a number"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--lag-mode", "empirical", "--lag-weights-from", "missing"],
     "--lag-weights-from missing: not found: pass an asynchronous run's folder"),
    (["--algo", "ppo", "--env", "CartPole-v1", "--lag-mode", "empirical", "--lag-weights-from", "broken.yml"],
     "broken.yml is not readable JSON"),
    (["--algo", "ppo", "--env", "CartPole-v1", "-params", "lag_weights:[1, 2]"], "set it with --lag-weights"),
]


def test_lag_weights_from_an_asynchronous_run_land_in_config_yml(tmp_path) -> None:
    """--lag-weights-from reads the measured lag_counts (a lag not measured weighs 0) of an asynchronous run's folder,
    its async.json or its results record; train.py records them normalised in config.yml with policy_lag = the
    largest lag (--policy-lag may say the same). The sweep's check finds that config equal to its command's, and to
    the command that gives the recorded probabilities back with --lag-weights (in a grid's list format): the run is
    reproducible from config.yml alone."""
    import json

    from cli.lag_weights import read_lag_counts
    from studies.execute import _settings_differ

    measured = tmp_path / "CartPole-v1_ppo_actors2_s1"
    measured.mkdir()
    summary = {"n_actors": 2, "max_staleness": None, "address": None, "lags": [1, 3, 1, 0] + [1] * 5 + [3] * 5,
               "actors": [0, 1] * 7, "staleness_waits": 0, "lag_counts": {"0": 1, "1": 7, "3": 6}}
    (measured / "async.json").write_text(json.dumps(summary))
    (tmp_path / "record.json").write_text(json.dumps({"format": 1, "meta": {"async": summary}, "updates": {}}))
    (tmp_path / "sync_record.json").write_text(json.dumps({"format": 1, "meta": {"path": "single-run"}}))
    for source in (measured, measured / "async.json", tmp_path / "record.json"):
        assert read_lag_counts(source) == [1.0, 7.0, 0.0, 6.0]
    with pytest.raises(ValueError, match="record of a run without asynchronous actors"):
        read_lag_counts(tmp_path / "sync_record.json")

    argv = ["--algo", "ppo", "--env", "CartPole-v1", "-n", "64", "--seed", "1", "--lag-mode", "empirical",
            "--lag-weights-from", str(measured), "-f", str(tmp_path / "logs"), "--verbose", "0", *TINY_PARAMS,
            "n_envs:1"]
    res = run_script("train.py", argv)
    assert res.returncode == 0, res.stderr
    run = tmp_path / "logs" / "CartPole-v1_ppo_lag3-empirical_s1"
    config = yaml.safe_load((run / "config.yml").read_text())
    assert (config["policy_lag"], config["lag_mode"]) == (3, "empirical")
    assert config["lag_weights"] == [1 / 14, 7 / 14, 0.0, 6 / 14]
    assert _settings_differ(run, argv) is None
    explicit = argv[:argv.index("--lag-weights-from")] + ["--lag-weights", str(config["lag_weights"]),
                                                         "--policy-lag", "3"] + argv[argv.index("-f"):]
    assert _settings_differ(run, explicit) is None
    counts = [a if a != str(config["lag_weights"]) else "1,7,0,6" for a in explicit]  # counts: the same probabilities
    assert _settings_differ(run, counts) is None


def test_a_flag_that_changes_nothing_is_accepted_by_every_arm(tmp_path) -> None:
    """--loss-agg-mode token-mean is what ppo (SB3's loss) does anyway: accepted, so one grid can set it for all arms."""
    res = run_script("train.py", ["--algo", "ppo", "--env", "CartPole-v1", "-n", "64", "--seed", "1", "--verbose", "0",
                                  *TINY_PARAMS, "--loss-agg-mode", "token-mean", "-f", str(tmp_path)])
    assert res.returncode == 0, res.stderr
    assert "loss_agg_mode" not in yaml.safe_load((tmp_path / "CartPole-v1_ppo_lag0_s1" / "config.yml").read_text())


def test_decoupled_weight_flags_win_over_the_yaml(tmp_path) -> None:
    common = ["--algo", "decoupled", "--env", "CartPole-v1", "-n", "128", "--seed", "1", "--verbose", "0",
              "--policy-lag", "1", *TINY_PARAMS, "n_envs:1", "is_weight_max:7", "is_weight_mode:truncate"]
    res = run_script("train.py", [*common, "-f", str(tmp_path), "--is-weight-mode", "filter", "--is-weight-max", "5"])
    assert res.returncode == 0, res.stderr
    run = tmp_path / "CartPole-v1_decoupled_lag1_s1"
    config = yaml.safe_load((run / "config.yml").read_text())
    assert config["is_weight_mode"] == "filter" and config["is_weight_max"] == 5.0
    assert "train/is_weight_filtered" in set(SummaryReader(str(run)).scalars["tag"])


def train_in_process(argv: list, capsys) -> tuple:
    """``train.main(argv)`` in this process, as the console script calls it: (exit code, stderr). The refusals run
    here: a subprocess each would spend seconds importing torch; test_existing_run_name_is_refused checks the same
    contract through a real process."""
    import train

    try:
        code = train.main(argv)
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, named", BAD_INPUT, ids=[" ".join(a[2:]) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys, argv: list, named: str) -> None:
    (tmp_path / "broken.yml").write_text("default: [\n")
    monkeypatch.chdir(tmp_path)
    code, err = train_in_process([*argv, "-f", str(tmp_path / "logs")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert named in lines[0]
    assert not (tmp_path / "logs").exists()


def test_existing_run_name_is_refused(tmp_path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("precious")
    res = run_script("train.py", ["--algo", "ppo", "--env", "CartPole-v1", "-f", str(tmp_path), "--run-name", "mine"])
    assert res.returncode == 2 and "mine" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["keep.txt"]


def test_given_flags_win_over_the_yaml_and_tensorboard_folders_never_collide(tmp_path) -> None:
    common = ["--algo", "dualclip", "--env", "CartPole-v1", "-n", "64", "--seed", "1", "--verbose", "0",
              "-tb", str(tmp_path / "tb"), *TINY_PARAMS, "dual_clip:5", "loss_agg_mode:seq-mean-token-mean"]
    assert run_script("train.py", [*common, "-f", str(tmp_path / "a")]).returncode == 0
    config = yaml.safe_load((tmp_path / "a" / "CartPole-v1_dualclip_lag0_s1" / "config.yml").read_text())
    assert config["dual_clip"] == 5 and config["loss_agg_mode"] == "seq-mean-token-mean"  # -params stand
    res = run_script("train.py", [*common, "-f", str(tmp_path / "b"), "--dual-clip", "2",
                                  "--loss-agg-mode", "token-mean"])
    assert res.returncode == 0, res.stderr
    # the same run name under another -f: its TensorBoard folder in the shared -tb is taken, so it gets _2
    config = yaml.safe_load((tmp_path / "b" / "CartPole-v1_dualclip_lag0_s1_2" / "config.yml").read_text())
    assert config["dual_clip"] == 2.0 and config["loss_agg_mode"] == "token-mean"  # the flags win
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["CartPole-v1_dualclip_lag0_s1",
                                                                     "CartPole-v1_dualclip_lag0_s1_2"]


def test_steps_are_whole_numbers_everywhere(tmp_path) -> None:
    """-n 1e2 is accepted and saved as the int 100, and a YAML float budget (1.28e+2) is saved as the int 128."""
    base = ["--algo", "ppo", "--env", "CartPole-v1", "--seed", "1", "--verbose", "0", "-f", str(tmp_path)]
    assert run_script("train.py", [*base, "-n", "1e2", *TINY_PARAMS]).returncode == 0
    assert run_script("train.py", [*base, "--run-name", "yaml_float", *TINY_PARAMS, "n_timesteps:1.28e+2"]).returncode == 0
    for name, steps in (("CartPole-v1_ppo_lag0_s1", 100), ("yaml_float", 128)):
        text = (tmp_path / name / "config.yml").read_text()
        assert f"n_timesteps: {steps}\n" in text and yaml.safe_load(text)["n_timesteps"] == steps
    # args.yml names the machine: torch's CPU capability decides whether a re-run repeats the run bit for bit
    import torch

    machine = yaml.safe_load((tmp_path / "yaml_float" / "args.yml").read_text())["machine"]
    assert machine["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability() and machine["cpu"]


def test_default_output_is_short_and_ends_with_what_to_do_next(tmp_path) -> None:
    """--verbose 1 (the default) prints SB3's table for one update in ten, --verbose 2 for every update (CSV and
    TensorBoard get every update either way); the end repeats the run folder with the evaluate and TensorBoard
    commands."""
    base = ["--algo", "ppo", "--env", "CartPole-v1", "-n", "1280", "--seed", "1", "-f", str(tmp_path), *TINY_PARAMS,
            "n_envs:1"]  # 20 updates
    quiet, loud = (run_script("train.py", [*base, "--run-name", f"v{v}", "--verbose", str(v)]) for v in (1, 2))
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert quiet.stdout.count("| rollout/") == 2 and loud.stdout.count("| rollout/") == 20
    assert len((tmp_path / "v1" / "progress.csv").read_text().splitlines()) == 1 + 20
    tail = quiet.stdout.strip().splitlines()[-3:]
    assert tail == [f"run folder: {tmp_path / 'v1'}", f"  evaluate:    python evaluate.py {tmp_path / 'v1'} --episodes 10",
                    f"  TensorBoard: tensorboard --logdir {tmp_path}"]


def _unfinished_run(tmp_path: Path) -> Path:
    """A run folder checkpointed at step 64 of 128 (trained to 64, then its budget raised)."""
    res = run_script("train.py", ["--algo", "ppo", "--env", "CartPole-v1", "-n", "64", "--seed", "1", "--verbose", "0",
                                  "-f", str(tmp_path), "--run-name", "run", *TINY_PARAMS, "n_envs:1"])
    assert res.returncode == 0, res.stderr
    config = tmp_path / "run" / "config.yml"
    config.write_text(config.read_text().replace("n_timesteps: 64", "n_timesteps: 128"))
    return tmp_path / "run"


@pytest.mark.parametrize("extra, named", [(["--policy-lag", "4"], "--policy-lag"), (["-n", "256"], "-n"),
                                          (["--seed", "2", "--verbose", "0"], "--seed"),
                                          (["--algo", "dualclip"], "--algo")])
def test_resume_refuses_a_flag_that_would_change_the_run(tmp_path, unfinished_runs, capsys, extra: list,
                                                         named: str) -> None:
    """--resume RUN --policy-lag 4 used to continue at the run's own lag and record the flag in command.txt: now any
    flag but --progress, --verbose and --save-freq is refused, in one line naming it, and nothing is written."""
    import shutil

    run = shutil.copytree(unfinished_runs[0], tmp_path / "run")
    before = _folder_state(run)
    code, err = train_in_process(["--resume", str(run), *extra], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"train.py: error: {named} with --resume")
    assert _folder_state(run) == before


def _folder_state(folder: Path) -> dict:
    """Every file and folder under ``folder`` (hidden ones too) with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def unfinished_runs(tmp_path_factory) -> dict:
    """Two unfinished runs (checkpointed at step 64 of 128) of different configurations: lag 0 and lag 1."""
    made = {}
    for lag in (0, 1):
        folder = tmp_path_factory.mktemp(f"lag{lag}")
        res = run_script("train.py", ["--algo", "ppo", "--env", "CartPole-v1", "-n", "64", "--seed", "1",
                                      "--policy-lag", str(lag), "--verbose", "0", "-f", str(folder), "--run-name",
                                      "run", *TINY_PARAMS, "n_envs:1"])
        assert res.returncode == 0, res.stderr
        config = folder / "run" / "config.yml"
        config.write_text(config.read_text().replace("n_timesteps: 64", "n_timesteps: 128"))
        made[lag] = folder / "run"
    return made


def _mark_asynchronous(run: Path, async_json: str) -> None:
    """Make ``run`` read as an asynchronous run (args.yml: --actors 2) with ``async_json`` as its lag history."""
    args = run / "args.yml"
    args.write_text(args.read_text().replace("actors: null", "actors: 2"))
    (run / "async.json").write_text(async_json)


REFUSED_RESUMES = {
    "two configurations": ([0, 1], None, "must share their configuration (policy_lag"),
    "an asynchronous run with another": ([0, 0], '{"lags": [], "actors": []}', "resume it alone"),
    "a damaged lag history": ([0], "{not json", "async.json is missing or damaged"),
}


@pytest.mark.parametrize("case", list(REFUSED_RESUMES))
def test_a_refused_resume_leaves_the_run_folders_untouched(tmp_path, unfinished_runs, capsys, case: str) -> None:
    """Refusals that need the runs read back (their configurations compared, an asynchronous run's lag history read)
    used to come after the logs were cut at the checkpoint and command.txt was appended to: now every refusal comes
    first, and the folders stay byte for byte as they were."""
    import shutil

    lags, async_json, named = REFUSED_RESUMES[case]
    runs = [tmp_path / f"run{i}" for i in range(len(lags))]
    for run, lag in zip(runs, lags):
        shutil.copytree(unfinished_runs[lag], run)
    if async_json is not None:
        _mark_asynchronous(runs[0], async_json)
    before = _folder_state(tmp_path)
    code, err = train_in_process(["--resume", *map(str, runs)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("train.py: error:") and named in err, err
    assert _folder_state(tmp_path) == before


def test_resume_honours_display_flags_and_says_where_it_continues(tmp_path) -> None:
    """--verbose and --save-freq apply to the resumed part; it prints the step it continues from, command.txt
    records the command that ran, and the files rewritten on resume keep their permissions."""
    run = _unfinished_run(tmp_path)
    umask = os.umask(0o022)
    os.umask(umask)
    res = run_script("train.py", ["--resume", str(run), "--verbose", "2", "--save-freq", "64"])
    assert res.returncode == 0, res.stderr
    assert f"resuming {run} at step 64 of 128" in res.stdout
    assert res.stdout.count("| rollout/") == 1  # --verbose 2: the table of the one update left (0 at verbose 0)
    last = (run / "command.txt").read_text().strip().splitlines()[-1]
    assert last.endswith(f"--resume {run} --verbose 2 --save-freq 64  # resumed at step 64")
    for name in ("progress.csv", "checkpoint.pkl", "progress_from64.csv"):  # progress.csv: trimmed atomically
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
