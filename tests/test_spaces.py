"""Every observation and action space stock PPO trains on, for every arm, at lag 0 and 2, in every lag mode; and at
lag 0 with dual clip off, bit-identical to stock SB3 on each of them."""

from __future__ import annotations

from typing import Dict

import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import BitFlippingEnv, IdentityEnvMultiBinary, IdentityEnvMultiDiscrete

from agents import ALGOS
from tests.helpers import flat_params

TINY = dict(n_steps=32, batch_size=32, n_epochs=2, policy_kwargs=dict(net_arch=[16]), device="cpu")
#: name -> (policy, env factory): Box, Discrete, MultiDiscrete and MultiBinary actions; Box and Dict observations
SPACES: Dict[str, tuple] = {
    "box": ("MlpPolicy", "Pendulum-v1"),
    "discrete": ("MlpPolicy", "CartPole-v1"),
    "multidiscrete": ("MlpPolicy", lambda: IdentityEnvMultiDiscrete(dim=3)),
    "multibinary": ("MlpPolicy", lambda: IdentityEnvMultiBinary(dim=3)),
    "dict-box": ("MultiInputPolicy", lambda: BitFlippingEnv(n_bits=4, continuous=True, max_steps=8)),
    "dict-discrete": ("MultiInputPolicy", lambda: BitFlippingEnv(n_bits=4, max_steps=8)),
}


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


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("lag_mode", ["fixed", pytest.param("uniform", marks=pytest.mark.slow),
                                      pytest.param("per-env", marks=pytest.mark.slow)])
def test_every_space_arm_and_lag_mode_trains(space: str, algo: str, lag_mode: str) -> None:
    """Lag 2 (tempered actors too): the learner's batched pass, the snapshots and the loss on every space (the
    uniform and per-env modes, which share all of this with fixed, run with -m slow)."""
    m = model(space, ALGOS[algo], policy_lag=2, lag_mode=lag_mode, behavior_temperature=1.5)
    before = flat_params(m).clone()
    m.learn(4 * 64)
    assert th.isfinite(flat_params(m)).all() and not th.equal(before, flat_params(m))
    assert len(m._snapshots) == 2
    prox = th.as_tensor(m.rollout_buffer.prox_log_probs)
    assert th.isfinite(prox).all() and not th.equal(prox.flatten(), th.as_tensor(m.rollout_buffer.log_probs).flatten())
