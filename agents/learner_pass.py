"""The learner's batched pass over a rollout: what the policy being trained says about the stored steps.

The behaviour policies produced the data; three parts of the update need the *learner's* view of them:

- GAE under lag needs the learner's value of every stored observation (``LaggedPPO.collect_rollouts`` asks after
  a lagged rollout: :meth:`LearnerPass.values`);
- the decoupled objective and early stopping (``target_kl``) need log pi_prox of every stored action, pi_prox being
  the learner at the start of the update (:meth:`LearnerPass.log_probs`);
- the start-of-update diagnostics (``train/behavior_kl``, the ratio quantiles, ``train/dual_clip_would_bound``)
  need the same log-probs.

The learner's parameters do not change between the end of a rollout and the start of the next update, so this is
one pass, without gradient, in chunks of :data:`CHUNK` observations: when actor and critic share their features
extractor (SB3's default) the values pass also computes the log-probs, and :meth:`log_probs` hands them out
while the learner still has exactly the parameters they were computed with (else it computes them). Same modules,
same inputs, same chunks: the same numbers bit for bit either way (tests/test_speedups.py).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel
from stable_baselines3.common.utils import obs_as_tensor

from agents.behavior import Snapshot, module_tensors
from agents.buffer import chunk, flat_observations
from agents.fast_policy import fast_log_prob

#: observations per batched no-grad pass over a rollout (learner values, learner log-probs); 256 was about twice
#: as fast per observation as 1024 for the Atari CNN on CPU (the 1024-frame float batch alone is 115 MB)
CHUNK = 256


def stored_actions(actions: np.ndarray, action_space: spaces.Space, device: th.device) -> th.Tensor:
    """Buffer actions as SB3's minibatches hand them to the policy: float32 (the buffer keeps the action space's
    dtype, e.g. int8 for MultiBinary), then long and flat for Discrete."""
    out = th.as_tensor(actions.astype(np.float32, copy=False), device=device)
    return out.long().flatten() if isinstance(action_space, spaces.Discrete) else out


def _shares_features(policy: Any) -> bool:
    """SB3's own ActorCriticPolicy methods with one features extractor for actor and critic: the values pass can
    compute the log-probs from the same features."""
    return (
        isinstance(policy, ActorCriticPolicy)
        and policy.share_features_extractor
        and all(getattr(type(policy), m) is getattr(ActorCriticPolicy, m)
                for m in ("predict_values", "get_distribution", "_get_action_dist_from_latent"))
    )


class LearnerPass:
    """The learner's values and log-probs of the rollout buffer's steps, each computed at most once per rollout.

    :param action_space: the algorithm's action space (how stored actions are cast)
    :param device: where the learner's parameters live
    """

    def __init__(self, action_space: spaces.Space, device: th.device) -> None:
        self.action_space = action_space
        self.device = device
        # log-probs from the values pass, with a copy of the parameters they were computed with
        self._log_probs: Optional[Tuple[Snapshot, th.Tensor]] = None

    def forget(self) -> None:
        """A new rollout begins: nothing computed so far describes it."""
        self._log_probs = None

    @th.no_grad()
    def values(self, policy: Any, buffer: RolloutBuffer) -> np.ndarray:
        """The learner's value of every stored observation, ``(n_steps, n_envs)``; with shared features the
        log-probs of the stored actions come from the same pass and are kept for :meth:`log_probs`."""
        obs, actions = self._columns(buffer)
        shared = _shares_features(policy)
        values, log_probs = [], []
        for i in range(0, len(actions), CHUNK):
            obs_i = obs_as_tensor(chunk(obs, i, i + CHUNK), self.device)
            if not shared:
                values.append(policy.predict_values(obs_i).flatten())
                continue
            # predict_values and get_distribution, with the (shared) features computed once
            features = BaseModel.extract_features(policy, obs_i, policy.features_extractor)
            values.append(policy.value_net(policy.mlp_extractor.forward_critic(features)).flatten())
            dist = policy._get_action_dist_from_latent(policy.mlp_extractor.forward_actor(features))
            log_probs.append(dist.log_prob(self._actions(actions, i)))
        if shared:
            self._log_probs = ({k: t.detach().clone() for k, t in module_tensors(policy).items()}, th.cat(log_probs))
        return th.cat(values).cpu().numpy().reshape(buffer.buffer_size, buffer.n_envs)

    @th.no_grad()
    def log_probs(self, policy: Any, buffer: RolloutBuffer, fast: bool = False) -> th.Tensor:
        """log pi_theta(a|s) of the learner for every stored step, flat and step-major. ``fast``: the learner is
        SB3's own Gaussian policy (:func:`agents.fast_policy.fast_log_prob`, the same operations)."""
        kept, self._log_probs = self._log_probs, None
        if kept is not None and _same_tensors(module_tensors(policy), kept[0]):
            return kept[1]
        obs, actions = self._columns(buffer)
        out: List[th.Tensor] = []
        for i in range(0, len(actions), CHUNK):
            obs_i = obs_as_tensor(chunk(obs, i, i + CHUNK), self.device)
            act_i = self._actions(actions, i)
            out.append(fast_log_prob(policy, obs_i, act_i) if fast else policy.get_distribution(obs_i).log_prob(act_i))
        return th.cat(out)

    @staticmethod
    def _columns(buffer: RolloutBuffer) -> Tuple[Any, np.ndarray]:
        n = buffer.buffer_size * buffer.n_envs
        return flat_observations(buffer), buffer.actions.reshape(n, *buffer.actions.shape[2:])

    def _actions(self, actions: np.ndarray, start: int) -> th.Tensor:
        return stored_actions(actions[start : start + CHUNK], self.action_space, self.device)


def _same_tensors(mine: Dict[str, th.Tensor], theirs: Dict[str, th.Tensor]) -> bool:
    """Whether two sets of named tensors are exactly equal (same names, same values)."""
    return mine.keys() == theirs.keys() and all(th.equal(t, theirs[k]) for k, t in mine.items())
