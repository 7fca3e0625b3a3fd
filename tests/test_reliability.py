"""Checkpoints, resume after SIGKILL, determinism, the non-finite guard, and bad input around them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch as th
import yaml
from stable_baselines3.common.logger import configure
from tbparse import SummaryReader

from agents import ALGOS, DualClipPPO
from agents.checkpoint import CheckpointCallback, NonFiniteError, divergence_message, read_checkpoint
from agents.files import atomic_write
from tests.helpers import ROOT, ctrl_c_twice, flat_params, run_script, tiny_model

TINY = ["-params", "n_steps:32", "n_epochs:4", "normalize:true", "policy_kwargs:{net_arch: [16]}"]


def scalars(run: Path):
    df = SummaryReader(str(run)).scalars
    df = df[~df.tag.str.startswith("time/")]  # wall-clock dependent
    return df.sort_values(["tag", "step"]).reset_index(drop=True)[["tag", "step", "value"]]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    """Kill mid-run, resume: requested steps reached, logs continuous, parameters equal to an unbroken run (lag up
    to 3 drawn per rollout, exploring actors, the learner evaluated periodically).

    CartPole's state pickles faithfully, so the resumed run is exact (see agents/checkpoint.py for MuJoCo/ALE).
    """
    args = ["--algo", "dualclip", "--env", "CartPole-v1", "-n", "8192", "--seed", "5", "--policy-lag", "3",
            "--lag-mode", "uniform",  # the lag drawn for the rollout after the checkpoint is drawn again on resume
            "--behavior-temperature", "1.5",  # exploring actors resume exactly too
            "--save-freq", "512", "--verbose", "0", "-f", str(tmp_path), "--eval-freq", "1000", "--eval-episodes", "2",
            *TINY]
    cmd = [sys.executable, str(ROOT / "train.py"), *args]
    victim = subprocess.Popen([*cmd, "--run-name", "killed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoint.pkl"
    deadline = time.time() + 240
    while not checkpoint.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = read_checkpoint(checkpoint)["num_timesteps"]
    assert 0 < killed_at < 8192

    resumed = run_script("train.py", ["--resume", str(tmp_path / "killed")])
    assert resumed.returncode == 0, resumed.stderr
    assert run_script("train.py", [*args, "--run-name", "full"]).returncode == 0

    full = DualClipPPO.load(tmp_path / "full" / "model.zip", device="cpu")
    again = DualClipPPO.load(tmp_path / "killed" / "model.zip", device="cpu")
    assert again.num_timesteps == full.num_timesteps == 8192
    assert th.equal(flat_params(again), flat_params(full))
    a, b = scalars(tmp_path / "full"), scalars(tmp_path / "killed")
    assert not b.duplicated(["tag", "step"]).any()  # nothing logged twice ...
    assert a[["tag", "step"]].equals(b[["tag", "step"]])  # ... nor missing
    assert np.array_equal(a["value"].to_numpy(), b["value"].to_numpy())
    # the learner's evaluations: the same steps and returns (evaluation k resets its env with seed + k)
    evals = [np.load(tmp_path / run / "eval" / "evaluations.npz") for run in ("full", "killed")]
    assert list(evals[0]["timesteps"]) == [*range(0, 8001, 1000), 8192]  # multiples of 1000 steps, then the end
    for key in ("timesteps", "results", "ep_lengths"):
        assert np.array_equal(evals[0][key], evals[1][key])
    assert "resumed at step" in (tmp_path / "killed" / "command.txt").read_text()
    # resuming a finished run changes nothing
    done = run_script("train.py", ["--resume", str(tmp_path / "killed")])
    assert done.returncode == 0 and "complete" in done.stdout


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130),
                                       pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])  # one handler
def test_signal_stops_at_a_boundary_and_resume_is_exact(tmp_path: Path, sig: int, code: int) -> None:
    """Ctrl-C / SIGTERM: the run stops at the next rollout boundary with a checkpoint, model.zip and one line naming
    the --resume command (exit 130 / 143); the resumed run ends with exactly the uninterrupted run's parameters."""
    args = ["--algo", "decoupled", "--env", "CartPole-v1", "-n", "6144", "--seed", "3", "--policy-lag", "2",
            "--save-freq", "0", "--verbose", "0", "-f", str(tmp_path), *TINY]
    victim = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, "--run-name", "stopped"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = tmp_path / "stopped" / "progress.csv"
    deadline = time.time() + 240
    while (not progress.exists() or progress.stat().st_size < 2000) and victim.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(sig)
    _, stderr = victim.communicate(timeout=240)
    assert victim.returncode == code, stderr
    line = stderr.strip().splitlines()[-1]
    assert f"continue with: python train.py --resume {tmp_path / 'stopped'}" in line
    stopped_at = read_checkpoint(tmp_path / "stopped" / "checkpoint.pkl")["num_timesteps"]
    assert 0 < stopped_at < 6144 and (tmp_path / "stopped" / "model.zip").is_file()
    assert (tmp_path / "stopped" / "interrupted.txt").is_file()  # model.zip alone does not mean finished

    assert run_script("train.py", ["--resume", str(tmp_path / "stopped")]).returncode == 0
    assert run_script("train.py", [*args, "--run-name", "full"]).returncode == 0
    full = ALGOS["decoupled"].load(tmp_path / "full" / "model.zip", device="cpu")
    again = ALGOS["decoupled"].load(tmp_path / "stopped" / "model.zip", device="cpu")
    assert again.num_timesteps == full.num_timesteps == 6144
    assert th.equal(flat_params(again), flat_params(full))
    assert not (tmp_path / "stopped" / "interrupted.txt").exists()


def test_second_signal_stops_at_once_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    """The first Ctrl-C waits for the rollout boundary; a second one, mid-rollout, exits at once (130)."""
    args = ["--algo", "ppo", "--env", "CartPole-v1", "-n", "100000", "--seed", "1", "--save-freq", "256",
            "--verbose", "0", "-f", str(tmp_path), "--run-name", "twice", *TINY, "n_steps:2048"]  # long rollouts
    victim = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "twice" / "checkpoint.pkl"
    ctrl_c_twice(victim, checkpoint.exists, gap=0.2)
    assert read_checkpoint(checkpoint)["num_timesteps"] > 0  # the last checkpoint is whole


@pytest.mark.parametrize("algo", ["ppo", "dualclip"])
def test_same_seed_same_scalars(tmp_path: Path, algo: str) -> None:
    args = ["--algo", algo, "--env", "CartPole-v1", "-n", "1024", "--seed", "7", "--policy-lag", "2", "--verbose", "0",
            "-f", str(tmp_path), *TINY]
    for name in ("a", "b"):
        assert run_script("train.py", [*args, "--run-name", name]).returncode == 0
    a, b = scalars(tmp_path / "a"), scalars(tmp_path / "b")
    assert len(a) > 50 and a.equals(b)


def test_atomic_write_keeps_old_file_on_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pkl"
    atomic_write(path, b"good")

    def crash(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        atomic_write(path, b"half-written")
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pkl"]


def test_non_finite_parameters_stop_training_and_keep_checkpoint(tmp_path: Path) -> None:
    from stable_baselines3.common.callbacks import BaseCallback

    class Poison(BaseCallback):
        """Make a weight NaN after the third rollout (as a diverging update would)."""

        def _on_rollout_end(self) -> None:
            if self.model.num_timesteps >= 3 * 64:
                with th.no_grad():
                    next(self.model.policy.parameters())[0].fill_(float("nan"))

        def _on_step(self) -> bool:
            return True

    model = tiny_model(DualClipPPO)
    model.set_logger(configure(None, []))
    path = tmp_path / "checkpoint.pkl"
    with pytest.raises((NonFiniteError, ValueError)) as excinfo:
        model.learn(10 * 64, callback=[CheckpointCallback(path, save_freq=64), Poison()])
    message = divergence_message(model, excinfo.value)
    assert message is not None and "update 3" in message  # the update that met the NaN
    state = read_checkpoint(path)
    assert state["num_timesteps"] == 2 * 64  # the last good one: the poisoned rollout's boundary never came
    good = DualClipPPO.load(__import__("io").BytesIO(state["model_zip"]), device="cpu")
    assert th.isfinite(flat_params(good)).all()


def test_train_py_reports_non_finite_in_one_line(tmp_path: Path) -> None:
    res = run_script("train.py", ["--algo", "ppo", "--env", "Pendulum-v1", "-n", "2048", "--seed", "0", "--verbose",
                                  "0", "-f", str(tmp_path), "--save-freq", "256", "-params", "n_steps:256",
                                  "learning_rate:1e+30", "n_epochs:1", "policy_kwargs:{net_arch: [8]}"])
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "training stopped" in lines[0] and "update" in lines[0], res.stderr
    run = next(tmp_path.iterdir())
    assert not (run / "model.zip").exists()  # nothing broken is saved as a result


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda d: d, "not a run folder"),  # an empty folder
        (lambda d: d / "missing", "not a run folder"),
    ],
)
def test_resume_refuses_non_run_folders(tmp_path: Path, make, named: str) -> None:
    res = run_script("train.py", ["--resume", str(make(tmp_path))])
    assert res.returncode == 2 and named in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args_text, named", [("algo: [\n", "args.yml or config.yml is damaged"),
                                              ("algo: ppo\n", "missing env")])
def test_resume_refuses_damaged_run_files(tmp_path: Path, args_text: str, named: str) -> None:
    (tmp_path / "args.yml").write_text(args_text)
    (tmp_path / "config.yml").write_text("n_timesteps: 128\n")
    (tmp_path / "checkpoint.pkl").write_bytes(b"kept")
    res = run_script("train.py", ["--resume", str(tmp_path)])
    assert res.returncode == 2 and named in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert (tmp_path / "checkpoint.pkl").read_bytes() == b"kept"


def test_resume_refuses_a_corrupt_checkpoint(tmp_path: Path) -> None:
    args = {"algo": "ppo", "env": "CartPole-v1", "seed": 1, "device": "cpu", "verbose": 0, "tensorboard_log": None,
            "progress": False, "save_freq": 0, "eval_freq": -1, "eval_episodes": 5}
    (tmp_path / "args.yml").write_text(yaml.safe_dump(args))
    (tmp_path / "config.yml").write_text("n_timesteps: 128\n")
    (tmp_path / "checkpoint.pkl").write_bytes(b"\x80\x04truncated")
    res = run_script("train.py", ["--resume", str(tmp_path)])
    assert res.returncode == 2 and "checkpoint" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert (tmp_path / "checkpoint.pkl").read_bytes() == b"\x80\x04truncated"  # left as it was


def test_missing_atari_extra_is_one_line(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['ale_py'] = None; sys.argv = ['train.py', '--algo', 'ppo', '--env', "
            f"'ALE/Breakout-v5', '-f', {str(tmp_path / 'logs')!r}]; import runpy; "
            f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "atari" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("lags", [dict(lag_mode="uniform"), dict(lag_mode="empirical", lag_weights=[1, 2, 0, 4])],
                         ids=["uniform", "empirical"])
@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_checkpoint_roundtrip_keeps_lag_snapshots(tmp_path: Path, algo: str, lags: dict) -> None:
    from agents.checkpoint import restore_env, restore_model, save_checkpoint

    model = tiny_model(ALGOS[algo], policy_lag=3, **lags)
    model.set_logger(configure(None, []))
    model.learn(4 * 64)
    save_checkpoint(model, tmp_path / "c.pkl")
    state = read_checkpoint(tmp_path / "c.pkl")
    again = restore_model(ALGOS[algo], state, restore_env(state, None), "cpu")
    assert len(again.behavior.snapshots) == 3
    # the lag draws (uniform, or from the weights) continue where they stopped
    assert [again.behavior.draw_lags()[0] for _ in range(20)] == [model.behavior.draw_lags()[0] for _ in range(20)]
    for x, y in zip(model.behavior.snapshot_tensors(), again.behavior.snapshot_tensors()):
        assert x.keys() == y.keys() and all(th.equal(x[k], y[k]) for k in x)
    assert th.equal(flat_params(model), flat_params(again)) and again.num_timesteps == model.num_timesteps
