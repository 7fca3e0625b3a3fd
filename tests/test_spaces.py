"""Every observation and action space stock PPO trains on, for every arm, at lag 0 and 2, in every lag mode; and at
lag 0 with dual clip off, bit-identical to stock SB3 on each of them."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import BitFlippingEnv, FakeImageEnv, IdentityEnvMultiBinary, IdentityEnvMultiDiscrete
from stable_baselines3.common.logger import configure

from agents import ALGOS
from agents.checkpoint import read_checkpoint, restore_env, restore_model, save_checkpoint
from tests.helpers import flat_params


class Float64Actions(gym.ActionWrapper):
    """Pendulum with a float64 Box action space."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.action_space
        self.action_space = gym.spaces.Box(space.low.astype(np.float64), space.high.astype(np.float64), dtype=np.float64)

    def action(self, action: np.ndarray) -> np.ndarray:
        return action.astype(np.float32)


class SeededImageEnv(FakeImageEnv):
    """SB3's FakeImageEnv draws its images from the observation space's own RNG: seed it on reset too."""

    def reset(self, *, seed=None, options=None):  # type: ignore[override]
        if seed is not None:
            self.observation_space.seed(seed)
        return super().reset(seed=seed, options=options)


TINY = dict(n_steps=32, batch_size=32, n_epochs=2, policy_kwargs=dict(net_arch=[16]), device="cpu")
#: name -> (policy, env factory): Box (float32, float64), Discrete, MultiDiscrete and MultiBinary actions; vector,
#: image and Dict observations
SPACES: Dict[str, tuple] = {
    "box": ("MlpPolicy", "Pendulum-v1"),
    "box-float64": ("MlpPolicy", lambda: Float64Actions(gym.make("Pendulum-v1"))),
    "image": ("CnnPolicy", lambda: SeededImageEnv(action_dim=3, screen_height=36, screen_width=36)),
    "discrete": ("MlpPolicy", "CartPole-v1"),
    "multidiscrete": ("MlpPolicy", lambda: IdentityEnvMultiDiscrete(dim=3)),
    "multibinary": ("MlpPolicy", lambda: IdentityEnvMultiBinary(dim=3)),
    "dict-box": ("MultiInputPolicy", lambda: BitFlippingEnv(n_bits=4, continuous=True, max_steps=8)),
    "dict-discrete": ("MultiInputPolicy", lambda: BitFlippingEnv(n_bits=4, max_steps=8)),
}


#: the lagged and resume cases of spaces whose code path another space already covers (float64 Box: Box; Discrete
#: inside a Dict: Dict and Discrete) and of the slow CNN run with -m slow; every lag-0 equivalence always runs
COVERED = ("image", "box-float64", "dict-discrete")
QUICK_SPACES = [pytest.param(s, marks=pytest.mark.slow) if s in COVERED else s for s in SPACES]


def model(space: str, cls: type, **kwargs):
    policy, env_id = SPACES[space]
    env = make_vec_env(env_id, n_envs=2, seed=0)  # type: ignore[arg-type]
    return cls(policy, env, seed=0, **{**TINY, **kwargs})


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_lag0_bit_identical_to_stock_on_every_space(space: str, algo: str) -> None:
    stock = model(space, PPO)
    stock.learn(3 * 64)
    ours = model(space, ALGOS[algo], **({} if algo == "ppo" else {"dual_clip": None}))
    ours.learn(3 * 64)
    assert th.equal(flat_params(stock), flat_params(ours))


@pytest.mark.parametrize("space", QUICK_SPACES)
@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("lag_mode", ["fixed", pytest.param("uniform", marks=pytest.mark.slow),
                                      pytest.param("per-env", marks=pytest.mark.slow)])
def test_every_space_arm_and_lag_mode_trains(space: str, algo: str, lag_mode: str) -> None:
    """Lag 2 (tempered actors too): the learner's batched pass, the snapshots and the loss on every space (the
    uniform and per-env modes, which share all of this with fixed, run with -m slow)."""
    m = model(space, ALGOS[algo], policy_lag=2, lag_mode=lag_mode, behavior_temperature=1.5)
    passes = []  # the learner's log-probs of each rollout (stale, tempered data) and log mu, at the update's start
    learner_log_probs = m._learner_log_probs

    def spy():
        out = learner_log_probs()
        passes.append((out.clone(), th.as_tensor(m.rollout_buffer.log_probs).flatten().clone()))
        return out

    m._learner_log_probs = spy
    before = flat_params(m).clone()
    m.learn(4 * 64)
    assert th.isfinite(flat_params(m)).all() and not th.equal(before, flat_params(m))
    assert len(m.behavior.snapshots) == 2
    learner, log_mu = passes[-1]
    assert learner.shape == log_mu.shape and th.isfinite(learner).all() and not th.equal(learner, log_mu)
    if m.objective.needs_prox:  # stored as pi_prox for the objective that reads it (get() flattened it env-major)
        prox = th.as_tensor(m.rollout_buffer.prox_log_probs).flatten()
        assert th.equal(prox.sort().values, learner.sort().values)


@pytest.mark.parametrize("space", QUICK_SPACES)
def test_checkpoint_resume_on_every_space(tmp_path: Path, space: str) -> None:
    """A lag-2 run checkpointed mid-way comes back with its snapshots and parameters and trains on."""
    m = model(space, ALGOS["decoupled"], policy_lag=2)
    m.set_logger(configure(None, []))
    m.learn(3 * 64)
    save_checkpoint(m, tmp_path / "c.pkl")
    state = read_checkpoint(tmp_path / "c.pkl")
    policy, env_id = SPACES[space]
    again = restore_model(ALGOS["decoupled"], state, restore_env(state, make_vec_env(env_id, n_envs=2, seed=0)), "cpu")
    assert th.equal(flat_params(m), flat_params(again)) and len(again.behavior.snapshots) == 2
    for x, y in zip(m.behavior.snapshot_tensors(), again.behavior.snapshot_tensors()):
        assert all(th.equal(x[k], y[k]) for k in x)
    again.set_logger(configure(None, []))
    again.learn(2 * 64, reset_num_timesteps=False)
    assert again.num_timesteps == 5 * 64 and th.isfinite(flat_params(again)).all()
