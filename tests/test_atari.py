"""Atari: standard DeepMind preprocessing, whole-game scores, and a tiny lagged training run of each algorithm."""

from __future__ import annotations

import json

import numpy as np
import pytest

import envs
from tests.helpers import run

needs_ale = pytest.mark.skipif(not envs.HAS_ALE, reason="ale-py not installed: pip install -e '.[atari]'")

# Three rollouts of 2 envs x 32 steps: the third is acted by the parameters of two updates ago.
TINY = ["-n", "192", "--policy-lag", "2", "--seed", "0", "--verbose", "0",
        "-params", "n_envs:2", "n_steps:32", "batch_size:32", "n_epochs:1"]


@pytest.mark.parametrize("env_id", ["ALE/Breakout-v5", "BreakoutNoFrameskip-v4", "PongNoFrameskip-v4"])
@needs_ale
def test_preprocessing_chain(env_id):
    venv = envs.make_env(env_id, n_envs=1, seed=0)
    try:
        assert venv.observation_space.shape == (4, 84, 84) and venv.observation_space.dtype == np.uint8
        obs = venv.reset()
        assert obs.shape == (1, 4, 84, 84) and obs.dtype == np.uint8
        chain = [type(w).__name__ for w in _walk(venv.unwrapped.envs[0])]  # outermost wrapper first
        expected = ["AtariWrapper", "ClipRewardEnv", "WarpFrame", "FireResetEnv", "EpisodicLifeEnv",
                    "MaxAndSkipEnv", "NoopResetEnv", "Monitor"]
        assert chain[: len(expected)] == expected, chain
        assert chain[-1] == "AtariEnv"
        assert venv.unwrapped.envs[0].unwrapped._frameskip == 1  # AtariWrapper alone skips frames
        skip = next(w for w in _walk(venv.unwrapped.envs[0]) if type(w).__name__ == "MaxAndSkipEnv")
        assert skip._skip == 4
    finally:
        venv.close()


def _walk(env):
    """The gym wrappers of ``env`` from the outermost down to the base env."""
    while True:
        yield env
        if not hasattr(env, "env"):
            return
        env = env.env


@needs_ale
def test_double_frameskip_refused():
    with pytest.raises(envs.EnvError, match="frameskip"):
        envs.make_env("ALE/Breakout-v5", env_kwargs={"frameskip": 4})


@needs_ale
def test_monitor_counts_whole_games():
    """Each lost life ends a training episode, but the Monitor's episode (what evaluation reports) is the game."""
    venv = envs.make_env("ALE/Breakout-v5", n_envs=1, seed=0)
    venv.action_space.seed(0)
    venv.reset()
    life_ends = 0
    for _ in range(5000):
        _, _, dones, infos = venv.step(np.array([venv.action_space.sample()]))
        life_ends += int(dones[0])
        if "episode" in infos[0]:
            break
    venv.close()
    assert "episode" in infos[0], "no game ended within 5000 random steps"
    assert life_ends == 5 and infos[0]["lives"] == 0  # Breakout: 5 lives per game
    assert infos[0]["episode"]["l"] > 4 * 5  # counted in emulator frames, below the frame skip


@pytest.mark.parametrize("env_id", ["ALE/Breakout-v5", "PongNoFrameskip-v4"])
def test_missing_ale_names_the_extra(monkeypatch, env_id):
    monkeypatch.setattr(envs, "HAS_ALE", False)
    with pytest.raises(envs.EnvError, match=r"\[atari\]"):
        envs.check_env_id(env_id)


def test_unknown_id_without_ale_mentions_the_extra(monkeypatch):
    monkeypatch.setattr(envs, "HAS_ALE", False)
    with pytest.raises(envs.EnvError, match=r"\[atari\]"):
        envs.check_env_id("Breakout-v9")


@needs_ale
@pytest.mark.parametrize(
    "algo,env_id,lag_mode",
    [("dualclip", "ALE/Breakout-v5", "fixed"),
     # the second id and lag mode through the same code path: slow, to keep the default suite near 5 minutes
     pytest.param("ppo", "BreakoutNoFrameskip-v4", "per-env", marks=pytest.mark.slow)],
)
def test_train_and_evaluate_smoke(tmp_path, algo, env_id, lag_mode):
    proc = run("train.py", "--algo", algo, "--env", env_id, "--lag-mode", lag_mode, "-f", tmp_path, *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = tmp_path.iterdir()
    config = (folder / "config.yml").read_text()
    assert "policy: CnnPolicy" in config and "frame_stack: 4" in config

    from agents import ALGOS

    model = ALGOS[algo].load(folder / "model.zip", device="cpu")
    assert model.observation_space.shape == (4, 84, 84) and model.observation_space.dtype == np.uint8
    assert model.num_timesteps == 192 and model.policy_lag == 2

    proc = run("evaluate.py", folder, "--episodes", "1", "--seed", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = folder.glob("eval_*.json")
    record = json.loads(path.read_text())
    assert record["env_id"] == env_id and record["deterministic"] is False  # Atari: stochastic, as rl-zoo3
    assert record["length_unit"] == "emulator frames" and record["lengths"][0] > 100
    assert record["returns"][0] == int(record["returns"][0]) >= 0  # Breakout game score

    if env_id == "ALE/Breakout-v5":  # same observations, 6 actions instead of 4: one line, exit 2, no JSON
        proc = run("evaluate.py", folder, "--env", "ALE/Pong-v5", "--episodes", "1")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert "ALE/Pong-v5" in line and "action space Discrete(6)" in line and "Discrete(4)" in line, line
        assert len(list(folder.glob("eval_*.json"))) == 1
