"""Exploring actors (agents/behavior.py): the tempered distributions, log mu stored from the distribution that
sampled, every action space, composition with lag, and tau = 1 leaving everything bit-identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
)
from stable_baselines3.common.envs import IdentityEnvMultiBinary, IdentityEnvMultiDiscrete
from stable_baselines3.common.vec_env import DummyVecEnv
from torch.distributions import Bernoulli, Categorical, Normal

from agents import ALGOS
from agents.behavior import env_temperatures, temper
from tests.helpers import TINY, flat_params, tiny_model


def test_env_temperatures() -> None:
    assert env_temperatures(2.0, "fixed", 3).tolist() == [2.0, 2.0, 2.0]
    assert np.allclose(env_temperatures(4.0, "per-env", 3), [1.0, 2.0, 4.0])  # geometric from 1 to tau
    assert env_temperatures(4.0, "per-env", 1).tolist() == [4.0]


def test_tempered_sample_statistics() -> None:
    th.manual_seed(0)
    n, tau = 200_000, th.full((200_000,), 1.5)
    gauss = DiagGaussianDistribution(1)
    gauss.distribution = Normal(th.full((n, 1), 0.3), th.full((n, 1), 0.5))
    samples = temper(gauss, tau).sample()
    assert samples.mean().item() == pytest.approx(0.3, abs=0.01)
    assert samples.std().item() == pytest.approx(0.75, rel=0.01)  # std x tau
    logits = th.tensor([[2.0, 0.0, -1.0]]).repeat(n, 1)
    cat = CategoricalDistribution(3)
    cat.distribution = Categorical(logits=logits)
    freq = th.bincount(temper(cat, tau).sample(), minlength=3).double() / n
    assert th.allclose(freq, th.softmax(logits[0].double() / 1.5, -1), atol=0.005)  # softmax(logits / tau)
    bern = BernoulliDistribution(1)
    bern.distribution = Bernoulli(logits=th.full((n, 1), 1.2))
    assert temper(bern, tau).sample().mean().item() == pytest.approx(th.sigmoid(th.tensor(0.8)).item(), abs=0.005)


def _space_model(space: str, algo: str = "dualclip", **kwargs):
    if space == "box":
        return tiny_model(ALGOS[algo], "Pendulum-v1", n_envs=2, **kwargs)
    if space == "discrete":
        return tiny_model(ALGOS[algo], "CartPole-v1", n_envs=2, **kwargs)
    env_cls = {"multidiscrete": lambda: IdentityEnvMultiDiscrete(dim=3),
               "multibinary": lambda: IdentityEnvMultiBinary(dim=3)}[space]
    env = DummyVecEnv([env_cls, env_cls])
    env.seed(0)
    return ALGOS[algo]("MlpPolicy", env, seed=0, **{**TINY, **kwargs})


def _hand_tempered(dist, tau: float):
    """The tempered torch distribution built by hand from the policy's own distribution (no agents.behavior)."""
    if isinstance(dist, DiagGaussianDistribution):
        d = dist.distribution
        return lambda a: Normal(d.loc, d.scale * tau).log_prob(a).sum(-1)
    if isinstance(dist, CategoricalDistribution):
        return lambda a: Categorical(logits=dist.distribution.logits / tau).log_prob(a.long().flatten())
    if isinstance(dist, MultiCategoricalDistribution):
        return lambda a: sum(Categorical(logits=c.logits / tau).log_prob(a[:, i].long())
                             for i, c in enumerate(dist.distribution))
    return lambda a: Bernoulli(logits=dist.distribution.logits / tau).log_prob(a).sum(-1)


@pytest.mark.parametrize("space", ["box", "discrete", "multidiscrete", "multibinary"])
def test_stored_log_mu_is_the_tempered_log_prob(space: str) -> None:
    """At lag 0 the learner acts tempered: the buffer's log mu is the hand-built tempered log-prob of the action."""
    model = _space_model(space, behavior_temperature=2.0)
    model.learn(64 * 2)  # one rollout, then one update; the buffer keeps that rollout
    buf = model.rollout_buffer
    # the learner acted that rollout with the parameters it had before the update: rebuild them from scratch
    fresh = _space_model(space, behavior_temperature=2.0)
    obs = th.as_tensor(buf.observations.reshape(-1, *buf.obs_shape))  # the update flattened the buffer
    actions = th.as_tensor(buf.actions.reshape(len(obs), -1).astype(np.float32))
    with th.no_grad():
        expected = _hand_tempered(fresh.policy.get_distribution(obs), 2.0)(actions)
    th.testing.assert_close(th.as_tensor(buf.log_probs.reshape(-1)), expected.float(), rtol=1e-5, atol=1e-5)
    # and the learner is not mu: the ratio pi/mu before the update differs from 1
    with th.no_grad():
        untempered = fresh.policy.get_distribution(obs).log_prob(
            actions.long().flatten() if space == "discrete" else actions)
    assert not th.allclose(untempered.float(), expected.float())


def test_lag_snapshot_acts_tempered() -> None:
    """A lag-K snapshot samples from its own distribution tempered by tau; log mu is that distribution's."""
    model = tiny_model(ALGOS["dualclip"], "Pendulum-v1", n_envs=2, policy_lag=2, behavior_temperature=1.5)
    model.learn(4 * 64 * 2)
    snapshot = model.behavior.snapshots[0]  # the oldest: it acts the next rollout at lag 2
    assert not th.equal(flat_params(model), th.cat([p.detach().flatten() for p in snapshot.parameters()]))
    obs = th.as_tensor(np.random.default_rng(0).normal(size=(2, 3)), dtype=th.float32)
    th.manual_seed(1)
    model.behavior.draw_lags = lambda: np.array([2, 2])
    assert model.behavior.start_rollout().tolist() == [2, 2]
    actions, _, log_mu = model.behavior.act(model.policy, obs)
    with th.no_grad():
        expected = _hand_tempered(snapshot.get_distribution(obs), 1.5)(actions)
    th.testing.assert_close(log_mu, expected)


def test_temperature_one_is_stock_sb3() -> None:
    """tau = 1 (given explicitly, fixed or per-env) never enters the tempered path: bit-identical to stock SB3."""
    stock = tiny_model(PPO, "Pendulum-v1", n_envs=2)
    stock.learn(3 * 64 * 2)
    for mode in ("fixed", "per-env"):
        ours = tiny_model(ALGOS["ppo"], "Pendulum-v1", n_envs=2, behavior_temperature=1.0, temperature_mode=mode)
        ours.learn(3 * 64 * 2)
        assert th.equal(flat_params(stock), flat_params(ours))


def test_per_env_temperatures_and_the_learner_pass() -> None:
    model = tiny_model(ALGOS["decoupled"], "CartPole-v1", n_envs=3, behavior_temperature=4.0,
                       temperature_mode="per-env")
    model.learn(2 * 64 * 3)
    assert model.behavior.temperatures.tolist() == pytest.approx([1.0, 2.0, 4.0])
    # pi_prox (the learner) is mu verbatim only for the untempered environment 0 (the update flattened log mu
    # env by env)
    buf = model.rollout_buffer
    log_mu = buf.log_probs.reshape(3, 64).T
    assert buf.prox_log_probs[:, 0].tolist() == log_mu[:, 0].tolist()
    assert not np.array_equal(buf.prox_log_probs[:, 2], log_mu[:, 2])


@pytest.mark.parametrize("kwargs, match", [
    ({"behavior_temperature": 0.0}, "behavior_temperature=0.0 must be a number > 0"),
    ({"behavior_temperature": "hot"}, "behavior_temperature='hot'"),
    ({"temperature_mode": "random"}, "temperature_mode='random' is unknown"),
    ({"behavior_temperature": 2.0, "use_sde": True}, "use_sde=True with behavior_temperature"),
])
def test_bad_temperature_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_model(ALGOS["ppo"], "Pendulum-v1", **kwargs)
