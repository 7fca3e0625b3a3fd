"""agents/learner_pass.py: the learner's batched values and log-probs over a rollout, computed once per update."""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import pytest
import torch as th

from agents import ALGOS
from agents.learner_pass import LearnerPass
from tests.helpers import flat_params, tiny_model


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_log_probs_from_the_values_pass_equal_a_separate_pass(env_id: str) -> None:
    """Lagged rollouts: the log-probs the values pass kept equal a separate pass bit for bit, so training is the
    same with or without the reuse."""
    seen: Dict[str, List[th.Tensor]] = {}

    def spy(model, tag: str, reuse: bool) -> None:
        orig = model.learner_pass.log_probs

        def log_probs(policy, buffer, fast=False):
            if not reuse:
                model.learner_pass.forget()  # always the separate pass
            out = orig(policy, buffer, fast)
            seen.setdefault(tag, []).append(out.clone())
            return out

        model.learner_pass.log_probs = log_probs

    kwargs = dict(n_envs=2, policy_lag=2, learning_rate=3e-3)
    reused = tiny_model(ALGOS["decoupled"], env_id, **kwargs)
    spy(reused, "reused", True)
    reused.learn(4 * 64 * 2)
    separate = tiny_model(ALGOS["decoupled"], env_id, **kwargs)
    spy(separate, "separate", False)
    separate.learn(4 * 64 * 2)
    # rollout 0 is acted by the learner itself (no snapshot yet): no pass at all
    assert len(seen["reused"]) == 3 and all(th.equal(a, b) for a, b in zip(seen["reused"], seen["separate"]))
    assert th.equal(flat_params(reused), flat_params(separate))


def test_kept_log_probs_are_not_used_once_the_learner_changed() -> None:
    model = tiny_model(ALGOS["ppo"], "Pendulum-v1", n_envs=2, policy_lag=1)
    model.learn(2 * 64 * 2)
    buf, service = model.rollout_buffer, LearnerPass(model.action_space, model.device)
    service.values(model.policy, buf)
    with th.no_grad():
        next(model.policy.parameters()).add_(1.0)
    changed = service.log_probs(model.policy, buf)
    assert th.equal(changed, LearnerPass(model.action_space, model.device).log_probs(model.policy, buf))
    service.values(model.policy, buf)
    assert th.equal(service.log_probs(model.policy, buf), changed)  # unchanged learner: the kept ones, equal


def test_values_are_the_learners_critic() -> None:
    model = tiny_model(ALGOS["dualclip"], "CartPole-v1", n_envs=2, policy_lag=1)
    model.learn(2 * 64 * 2)
    buf = model.rollout_buffer
    values = LearnerPass(model.action_space, model.device).values(model.policy, buf)
    with th.no_grad():
        expected = model.policy.predict_values(th.as_tensor(buf.observations.reshape(-1, 4))).numpy()
    assert values.shape == (64, 2)
    np.testing.assert_allclose(values.reshape(-1), expected.reshape(-1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("algo, target_kl, stored", [("ppo", None, False), ("dualclip", None, False),
                                                     ("decoupled", None, True), ("ppo", 0.5, True)])
def test_pi_prox_is_stored_for_whoever_reads_it(algo: str, target_kl, stored: bool) -> None:
    """The buffer's pi_prox column is filled when the objective declares needs_prox or early stopping reads it."""
    model = tiny_model(ALGOS[algo], "Pendulum-v1", n_envs=2, policy_lag=2, target_kl=target_kl)
    model.learn(3 * 64 * 2)
    assert model.objective.needs_prox == (algo == "decoupled")
    assert bool(np.any(model.rollout_buffer.prox_log_probs != 0)) == stored
