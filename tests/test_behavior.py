"""The behaviour policies (agents/behavior.py). Exploring actors: the tempered distributions, log mu stored from the
distribution that sampled, every action space, composition with lag, and tau = 1 leaving everything bit-identical.
The empirical lag mode: its draws by hand and in frequency, K capping them, its bad arguments, save and load."""

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
from agents.behavior import BehaviorPolicies, env_temperatures, temper
from agents.lag_weights import lag_probabilities
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


# ------------------------------------------------------------------------------------ the empirical lag mode
def _empirical(weights, n_envs: int = 3, seed: int = 0) -> BehaviorPolicies:
    return BehaviorPolicies(len(weights) - 1, "empirical", np.ones(n_envs), np.random.default_rng(seed),
                            lag_weights=weights)


def test_empirical_lags_are_the_inverse_cdf_of_the_generators_uniform_draws() -> None:
    """By hand: weights 12, 30, 8 are probabilities 0.24, 0.6, 0.16, so P(lag <= l) is 0.24, 0.84, 1; a rollout
    whose uniform draw u (the run's lag generator, one number per rollout) is below 0.24 gets lag 0, below 0.84 lag 1,
    else lag 2, and all its environments get that lag."""
    behavior = _empirical([12, 30, 8], seed=7)
    uniforms = np.random.default_rng(7).random(50)  # the same generator, the same stream
    expected = [0 if u < 0.24 else 1 if u < 0.84 else 2 for u in uniforms]
    drawn = [behavior.draw_lags() for _ in uniforms]
    assert [d.tolist() for d in drawn] == [[lag] * 3 for lag in expected]
    assert {0, 1, 2} <= set(expected)  # the stream reaches every lag


def test_empirical_lag_frequencies_match_the_weights_and_k_caps() -> None:
    """20,000 rollouts of a fixed seed: the frequencies of lags 0, 1, 2 are the normalised weights within 0.01
    (about 3 standard errors), a lag of weight 0 never comes, none exceeds K, and while fewer than K snapshots are
    held the lag acted is capped at them (as in every mode)."""
    behavior = _empirical([12, 30, 8])
    draws = np.array([behavior.draw_lags()[0] for _ in range(20_000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / len(draws), [0.24, 0.6, 0.16], atol=0.01)
    assert draws.max() == 2
    gapped = _empirical([1, 0, 0, 2])
    assert set(int(gapped.draw_lags()[0]) for _ in range(2_000)) == {0, 3}
    always_k = _empirical([0, 0, 1])  # probabilities too: lag 2 every rollout
    learner = tiny_model(ALGOS["ppo"]).policy
    acted = []
    for _ in range(4):
        acted.append(always_k.start_rollout().tolist())
        always_k.end_rollout(learner)  # (end_rollout pushes the learner as the newest snapshot)
    assert acted == [[0, 0, 0], [1, 1, 1], [2, 2, 2], [2, 2, 2]]


@pytest.mark.parametrize("kwargs, match", [
    ({"policy_lag": 2, "lag_mode": "empirical"}, "lag_mode='empirical' draws each rollout's lag from lag_weights"),
    ({"policy_lag": 2, "lag_mode": "empirical", "lag_weights": [1, 2]},
     r"lag_weights=\[1.0, 2.0\] has 2 weights \(lags 0..1\) but policy_lag=2: give policy_lag \+ 1 weights"),
    ({"policy_lag": 1, "lag_mode": "empirical", "lag_weights": [1, -1]}, r"negative or not finite \(-1.0\)"),
    ({"policy_lag": 1, "lag_mode": "empirical", "lag_weights": [1, float("inf")]}, r"negative or not finite \(inf\)"),
    ({"policy_lag": 1, "lag_mode": "empirical", "lag_weights": [1, 0]}, "the weight of lag K=1 is 0"),
    ({"policy_lag": 1, "lag_mode": "empirical", "lag_weights": "1,2"}, "must be a sequence of numbers"),
    ({"policy_lag": 1, "lag_mode": "empirical", "lag_weights": [1, True]}, "must be a sequence of numbers"),
    ({"policy_lag": 1, "lag_mode": "uniform", "lag_weights": [1, 1]}, "read by lag_mode='empirical' only"),
])
def test_bad_lag_weights_raise_one_line(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        tiny_model(ALGOS["ppo"], **kwargs)
    assert "\n" not in str(info.value)


def test_empirical_lag_weights_survive_save_load(tmp_path) -> None:
    """model.zip keeps the weights: a loaded model draws its lags with them (from the seed's generator, as a model
    loaded from model.zip does in uniform mode; a checkpoint continues the stream, tests/test_reliability.py)."""
    model = tiny_model(ALGOS["dualclip"], n_envs=2, policy_lag=2, lag_mode="empirical", lag_weights=[12, 30, 8])
    model.learn(3 * 64 * 2)
    assert model.num_timesteps == 3 * 64 * 2 and model.behavior.last_lags.max() <= 2
    model.save(tmp_path / "m.zip")
    loaded = ALGOS["dualclip"].load(tmp_path / "m.zip", device="cpu")
    assert (loaded.lag_mode, loaded.policy_lag, loaded.lag_weights) == ("empirical", 2, [12.0, 30.0, 8.0])
    fresh = _empirical([12, 30, 8], n_envs=2, seed=0)
    assert [loaded.behavior.draw_lags().tolist() for _ in range(20)] == [fresh.draw_lags().tolist() for _ in range(20)]


def test_normalising_twice_changes_no_bit() -> None:
    """A run given the probabilities another recorded (config.yml) draws exactly as that run."""
    for weights in ([12, 30, 8], [1, 1, 1], [1, 7, 86, 6], [3, 7, 11, 13, 17]):
        once = lag_probabilities(weights)
        assert np.array_equal(lag_probabilities(once.tolist()), once)
