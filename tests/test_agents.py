"""The SB3 subclasses: equivalence with stock PPO, lag bookkeeping, modes, logging, save/load."""

from __future__ import annotations

import json
import zipfile
from typing import Dict, List

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure

from agents import ALGOS, LAG_MODES, DualClipPPO, LaggedPPO
from tests.helpers import flat_params, tiny_model

ENVS = ["CartPole-v1", "Pendulum-v1"]


# --------------------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("env_id", ENVS)
@pytest.mark.parametrize(
    "cls, kwargs",
    [(ALGOS["ppo"], {}), (DualClipPPO, {"dual_clip": None}), (ALGOS["decoupled"], {"dual_clip": None}),
     (ALGOS["decoupled"], {"dual_clip": None, "is_weight_mode": "filter", "is_weight_max": 5.0})],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_lag0_bit_identical_to_stock_sb3(env_id: str, cls: type, kwargs: dict) -> None:
    """Dual clip off and lag 0: the same parameters as stock SB3 PPO after 3 rollouts, bit for bit."""
    # Build and train one after the other: constructing a model re-seeds the global RNGs.
    stock = tiny_model(PPO, env_id, n_envs=2)
    stock.learn(3 * 64 * 2)
    ours = tiny_model(cls, env_id, n_envs=2, policy_lag=0, **kwargs)
    ours.learn(3 * 64 * 2)
    assert th.equal(flat_params(stock), flat_params(ours))
    assert th.equal(stock.policy.optimizer.state_dict()["state"][0]["exp_avg"],
                    ours.policy.optimizer.state_dict()["state"][0]["exp_avg"])


def test_dual_clip_changes_training_when_lagged() -> None:
    """Sanity check of the test above: with lag and dual clip on, parameters do differ from vanilla."""
    vanilla = tiny_model(DualClipPPO, "Pendulum-v1", dual_clip=None, policy_lag=4, learning_rate=3e-3)
    vanilla.learn(6 * 64)
    dual = tiny_model(DualClipPPO, "Pendulum-v1", dual_clip=1.05, policy_lag=4, learning_rate=3e-3)
    dual.learn(6 * 64)
    assert not th.equal(flat_params(vanilla), flat_params(dual))


# ------------------------------------------------------------------------------------------ lag bookkeeping
class RecordingMixin:
    """Records the learner's parameters after each update and the buffer's log mu before each update."""

    def train(self) -> None:  # type: ignore[override]
        buf = self.rollout_buffer
        n = buf.buffer_size * buf.n_envs
        obs = th.as_tensor(buf.observations.reshape(n, *buf.obs_shape))
        actions = th.as_tensor(buf.actions.reshape(n, -1))
        self.rollouts.append((obs, actions, th.as_tensor(buf.log_probs.reshape(n)).clone()))
        super().train()  # type: ignore[misc]
        self.params_after.append({k: v.clone() for k, v in self.policy.state_dict().items()})


@pytest.mark.parametrize("algo", ["ppo", "dualclip"])
def test_behaviour_params_are_k_updates_old(algo: str) -> None:
    """K=2: the log-probs stored in rollout t are those of the learner after update t-2 (initial before)."""
    cls = type("Recording", (RecordingMixin, ALGOS[algo]), {})
    model = tiny_model(cls, "Pendulum-v1", policy_lag=2, learning_rate=3e-3)
    model.rollouts, model.params_after = [], []
    initial = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(6 * 64)
    probe = tiny_model(PPO, "Pendulum-v1")
    for t, (obs, actions, stored) in enumerate(model.rollouts):
        # rollout t follows t updates; it is acted by the parameters after update t-2 (update 0 = initial)
        expected_params = initial if t - 2 <= 0 else model.params_after[t - 2 - 1]
        probe.policy.load_state_dict(expected_params)
        with th.no_grad():
            _, log_prob, _ = probe.policy.evaluate_actions(obs, actions)
        assert th.allclose(log_prob, stored, atol=1e-5), f"rollout {t}"
        if t >= 3:  # and it is *not* the current learner
            probe.policy.load_state_dict(model.params_after[t - 1])
            with th.no_grad():
                _, current, _ = probe.policy.evaluate_actions(obs, actions)
            assert not th.allclose(current, stored, atol=1e-5)


def test_at_most_k_snapshots_held_and_not_saved(tmp_path) -> None:
    model = tiny_model(DualClipPPO, policy_lag=3)
    model.learn(6 * 64)
    assert len(model.behavior.snapshots) == 3
    model.save(tmp_path / "lagged.zip")
    with zipfile.ZipFile(tmp_path / "lagged.zip") as z:
        names, data = z.namelist(), json.loads(z.read("data"))
    assert sorted(names) == ["_stable_baselines3_version", "data", "policy.optimizer.pth", "policy.pth",
                             "pytorch_variables.pth", "system_info.txt"]  # no extra tensor files
    assert data["policy_lag"] == 3 and not {"behavior", "learner_pass", "objective", "_fast"} & set(data)
    assert len(ALGOS["dualclip"].load(tmp_path / "lagged.zip", device="cpu").behavior.snapshots) == 0


@pytest.mark.parametrize("policy_lag, expect_one", [(0, True), (3, False)])
def test_first_minibatch_ratio(policy_lag: int, expect_one: bool) -> None:
    """At the first minibatch of every update the ratio is 1 at K=0 and clearly not 1 at K>0 (once lag bites).

    "1" means up to float32 rounding (|log r| <= 1e-6): log mu was computed on a batch of n_envs observations and
    log pi on a minibatch of 32, and CPU matmul kernels may round differently for different batch sizes (stock
    SB3 behaves the same; on some CPUs even the first rollout, which the learner itself acts, is 1 only up to that
    rounding).
    """
    first: List[float] = []

    class FirstRatio(DualClipPPO):
        def _policy_term(self, data, log_prob, advantages, clip_range):
            if self._first:
                first.append((log_prob.detach() - data.old_log_prob).abs().max().item())
                self._first = False
            return super()._policy_term(data, log_prob, advantages, clip_range)

        def train(self) -> None:
            self._first = True
            super().train()

    model = tiny_model(FirstRatio, "Pendulum-v1", n_envs=2, policy_lag=policy_lag, learning_rate=3e-3)
    model.learn(6 * 64 * 2)
    assert first[0] <= 1e-6  # rollout 0 is acted by the initial policy, which is the learner
    if expect_one:
        assert all(x <= 1e-6 for x in first)
    else:
        assert all(x > 1e-3 for x in first[1:])


@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("lag_mode", LAG_MODES)
def test_every_lag_mode_runs(algo: str, lag_mode: str) -> None:
    weights = [1, 2, 3] if lag_mode == "empirical" else None  # (the empirical mode draws from given weights)
    model = tiny_model(ALGOS[algo], "CartPole-v1", n_envs=3, policy_lag=2, lag_mode=lag_mode, lag_weights=weights)
    model.learn(4 * 64 * 3)
    lags = model.behavior.last_lags
    assert lags.shape == (3,) and lags.min() >= 0 and lags.max() <= 2
    if lag_mode == "per-env":
        assert list(lags) == [0, 1, 2]
    if lag_mode == "fixed":
        assert list(lags) == [2, 2, 2]
    assert model.num_timesteps == 4 * 64 * 3


def test_uniform_lag_draws_cover_range() -> None:
    model = tiny_model(LaggedPPO, policy_lag=3, lag_mode="uniform")
    draws = {int(model.behavior.draw_lags()[0]) for _ in range(200)}
    assert draws == {0, 1, 2, 3}


# ------------------------------------------------------------------------------------------------ metrics
def _logged(model, steps: int) -> Dict[str, list]:
    seen: Dict[str, list] = {}
    logger = configure(None, [])
    orig = logger.record

    def record(key, value, exclude=None):
        seen.setdefault(key, []).append(value)
        orig(key, value, exclude)

    logger.record = record  # type: ignore[method-assign]
    model.set_logger(logger)
    model.learn(steps)
    return seen


LAG_KEYS = {
    "rollout/policy_lag",
    "train/behavior_kl",
    "train/ratio_p50",
    "train/ratio_p99",
    "train/ratio_max",
    "train/dual_clip_would_bound",
    "train/log_ratio",
}
SB3_KEYS = {"train/entropy_loss", "train/policy_gradient_loss", "train/value_loss", "train/approx_kl",
            "train/clip_fraction", "train/loss", "train/explained_variance", "train/clip_range"}


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_metric_keys(algo: str) -> None:
    seen = _logged(tiny_model(ALGOS[algo], policy_lag=2), 4 * 64)
    assert LAG_KEYS | SB3_KEYS <= set(seen)
    if algo != "ppo":
        assert {"train/pg_clipfrac", "train/pg_clipfrac_lower", "train/ppo_kl", "train/ratio_max_minibatch"} <= set(seen)
    assert seen["rollout/policy_lag"] == [0.0, 1.0, 2.0, 2.0]
    assert all(0.0 <= v <= 1.0 for v in seen["train/dual_clip_would_bound"])
    assert all(v >= -1e-6 for v in seen["train/behavior_kl"])


def test_metrics_average_all_minibatches() -> None:
    """train/pg_clipfrac is the mean over every minibatch of every epoch, not the last one; *_max keys the max."""
    values: List[float] = []
    maxima: List[float] = []

    class Spy(DualClipPPO):
        def _policy_term(self, *args):
            loss, metrics = super()._policy_term(*args)
            values.append(metrics["pg_clipfrac"].item())
            maxima.append(metrics["ratio_max_minibatch"].item())
            return loss, metrics

    model = Spy("MlpPolicy", "Pendulum-v1", seed=0, n_steps=128, batch_size=32, n_epochs=4, learning_rate=1e-2,
                policy_kwargs=dict(net_arch=[16]), device="cpu")
    seen = _logged(model, 128)
    assert len(values) == 16
    assert seen["train/pg_clipfrac"][-1] == pytest.approx(np.mean(values), rel=1e-6)
    assert seen["train/ratio_max_minibatch"][-1] == max(maxima) and len(set(maxima)) > 1


# ------------------------------------------------------------------------------------------------ save/load
def test_new_arguments_survive_save_load(tmp_path) -> None:
    model = tiny_model(DualClipPPO, dual_clip=2.5, clip_range_low=0.1, clip_range_high=0.3,
                       loss_agg_mode="seq-mean-token-mean", policy_lag=2, lag_mode="uniform")
    model.learn(2 * 64)
    model.save(tmp_path / "m.zip")
    loaded = DualClipPPO.load(tmp_path / "m.zip", device="cpu")
    assert (loaded.dual_clip, loaded.clip_range_low, loaded.clip_range_high) == (2.5, 0.1, 0.3)
    assert (loaded.loss_agg_mode, loaded.policy_lag, loaded.lag_mode) == ("seq-mean-token-mean", 2, "uniform")
    assert th.equal(flat_params(loaded), flat_params(model))


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dual_clip": 1.0}, "dual_clip=1.0"),
        ({"dual_clip": 0.8}, "dual_clip=0.8"),
        ({"policy_lag": -1}, "policy_lag=-1"),
        ({"policy_lag": 1.5}, "policy_lag=1.5"),
        ({"lag_mode": "random"}, "lag_mode='random'"),
        ({"clip_range": 1.5}, "clip_range=1.5"),
        ({"clip_range_low": 0.0}, "clip_range_low=0.0"),
        ({"loss_agg_mode": "mean"}, "loss_agg_mode='mean'"),
        ({"use_sde": True, "policy_lag": 1}, "use_sde"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(".", r"\.")):
        tiny_model(DualClipPPO, "Pendulum-v1", **kwargs)


@pytest.mark.parametrize("algo", ["ppo", "decoupled"])
def test_target_kl_under_lag_never_skips_a_whole_update(algo: str) -> None:
    """target_kl bounds how far one update moves the policy: measured against the policy at the start of the update,
    the first minibatch always steps. (Measured against mu, data with behavior_kl > 1.5 * target_kl stopped updates
    before their first step and left the parameters unchanged.)"""
    model = tiny_model(ALGOS[algo], "Pendulum-v1", n_envs=4, policy_lag=3, target_kl=0.003, learning_rate=3e-3)
    changed = []
    train = model.train

    def train_and_compare() -> None:
        before = flat_params(model).clone()
        train()
        changed.append(not th.equal(before, flat_params(model)))

    model.train = train_and_compare  # type: ignore[method-assign]
    model.learn(11 * 64 * 4)
    assert len(changed) == 11 and all(changed), changed
