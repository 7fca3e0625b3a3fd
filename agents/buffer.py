"""SB3's RolloutBuffer (and DictRolloutBuffer, for Dict observations) plus two per-step columns the lagged
algorithms need.

- ``segment_ids``: which episode segment a step belongs to (for the ``seq-*`` loss aggregation modes);
- ``prox_log_probs``: the learner's log-prob of the stored action at the start of ``train()`` (pi_prox, the
  proximal policy of decoupled PPO), filled only for whoever reads it: an objective that ``needs_prox``, or early
  stopping with ``target_kl`` (``LaggedPPO._prox_log_probs``); zeros otherwise.

GAE and flattening are SB3's own; sampling gives SB3's minibatches value for value: the random permutation is
drawn exactly as stock, so a run with this buffer consumes the global RNG identically to stock PPO, but the
columns are converted to torch once per rollout instead of once per minibatch (tests/test_speedups.py).
"""

from __future__ import annotations

from typing import Any, Dict, Generator, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch as th
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.vec_env import VecNormalize

Observations = Union[th.Tensor, Dict[str, th.Tensor]]


class LaggedRolloutBufferSamples(NamedTuple):
    observations: Observations  #: a tensor, or a dict of tensors for Dict observation spaces
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor  #: log mu(a|s), stored when the behaviour policy acted
    advantages: th.Tensor
    returns: th.Tensor
    segment_ids: th.Tensor  #: int64, one id per episode segment of the rollout
    prox_log_prob: th.Tensor  #: log pi(a|s) of the learner at the start of the update (zeros when nobody reads it)


class LaggedColumns:
    """The two columns and the faster sampling, for SB3's RolloutBuffer (:class:`LaggedRolloutBuffer`) and
    DictRolloutBuffer (:class:`LaggedDictRolloutBuffer`); they differ only in how observations are flattened,
    converted and indexed (the ``_*observations*`` hooks)."""

    # attributes of SB3's buffers this mixin uses
    buffer_size: int
    n_envs: int
    device: th.device
    full: bool
    generator_ready: bool
    observations: Any
    episode_starts: np.ndarray
    swap_and_flatten: Any

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        self.prox_log_probs = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self._flat_extras: Optional[tuple] = None
        self._torch_columns: Tuple[th.Tensor, ...] = ()

    def segment_ids(self) -> np.ndarray:
        """``(n_steps, n_envs)`` ids: a new segment starts at t=0 and at every episode start, per environment."""
        starts = self.episode_starts.astype(np.int64)
        starts[0] = 1
        offsets = np.arange(self.n_envs, dtype=np.int64) * (self.buffer_size + 1)
        return np.cumsum(starts, axis=0) + offsets

    def get(self, batch_size: Optional[int] = None) -> Generator[LaggedRolloutBufferSamples, None, None]:  # type: ignore[override]
        """SB3's ``RolloutBuffer.get``: the same permutation (``np.random.permutation``, drawn at the same point, so
        the global RNG is consumed identically) and the same minibatches, value for value.

        Faster than stock: the flattened columns are converted to torch once per rollout (sharing memory with the
        numpy arrays on CPU), and each minibatch is a tensor index instead of a numpy fancy index plus a copy.
        """
        assert self.full, ""
        indices = np.random.permutation(self.buffer_size * self.n_envs)
        self.prepare()
        if batch_size is None:
            batch_size = self.buffer_size * self.n_envs
        # th.from_numpy of the permutation keeps its values; one conversion instead of one per minibatch
        torch_indices = th.from_numpy(indices).to(self.device)
        start_idx = 0
        while start_idx < self.buffer_size * self.n_envs:
            yield self._samples_at(torch_indices[start_idx : start_idx + batch_size])
            start_idx += batch_size

    def prepare(self) -> None:
        """Flatten the columns env-major (as SB3's ``get`` does) and convert them to torch, once per rollout:
        ``torch_columns`` then holds observations, actions, values, log mu, advantages, returns, segment ids and
        pi_prox, one row per stored step."""
        if self.generator_ready:
            return
        self._flatten_observations()
        for name in ("actions", "values", "log_probs", "advantages", "returns"):
            self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
        self.generator_ready = True
        # Our columns, flattened exactly as SB3 flattens its own (env-major), once per rollout.
        self._flat_extras = (
            self.swap_and_flatten(self.segment_ids()),
            self.swap_and_flatten(self.prox_log_probs),
        )
        self._torch_columns = self._to_torch_columns()

    @property
    def torch_columns(self) -> Tuple[Any, ...]:
        return self._torch_columns

    def _to_torch_columns(self) -> Tuple[th.Tensor, ...]:
        """The flattened columns as tensors, in the dtypes and shapes SB3's ``_get_samples`` gives a minibatch."""
        assert self._flat_extras is not None
        segment_ids, prox = self._flat_extras
        columns = (
            # Cast to float32 (as SB3's _get_samples does; copy=False keeps the float32 buffer itself)
            self.actions.astype(np.float32, copy=False),
            self.values.reshape(-1),  # (N, 1) -> (N,): what .flatten() of a minibatch gives
            self.log_probs.reshape(-1),
            self.advantages.reshape(-1),
            self.returns.reshape(-1),
            prox.reshape(-1),
        )
        tensors = tuple(th.as_tensor(np.ascontiguousarray(c), device=self.device) for c in columns)
        segments = th.as_tensor(segment_ids.reshape(-1), device=self.device)
        return (self._observations_to_torch(), *tensors[:5], segments, tensors[5])

    def _samples_at(self, idx: th.Tensor) -> LaggedRolloutBufferSamples:
        obs, actions, values, log_probs, advantages, returns, segment_ids, prox = self._torch_columns
        return LaggedRolloutBufferSamples(
            observations=self._observations_at(obs, idx),
            actions=actions[idx],
            old_values=values[idx],
            old_log_prob=log_probs[idx],
            advantages=advantages[idx],
            returns=returns[idx],
            segment_ids=segment_ids[idx],
            prox_log_prob=prox[idx],
        )

    def _get_samples(self, batch_inds: np.ndarray, env: Optional[VecNormalize] = None) -> LaggedRolloutBufferSamples:  # type: ignore[override]
        """SB3's per-minibatch conversion (kept for callers that sample explicit indices)."""
        base = super()._get_samples(batch_inds, env)  # type: ignore[misc]
        assert self._flat_extras is not None
        segment_ids, prox = self._flat_extras
        return LaggedRolloutBufferSamples(
            *base,
            segment_ids=th.as_tensor(segment_ids[batch_inds].flatten(), device=self.device),
            prox_log_prob=self.to_torch(prox[batch_inds].flatten()),
        )


class LaggedRolloutBuffer(LaggedColumns, RolloutBuffer):
    """RolloutBuffer whose minibatches also carry ``segment_ids`` and ``prox_log_prob``."""

    def _flatten_observations(self) -> None:
        self.observations = self.swap_and_flatten(self.observations)

    def _observations_to_torch(self) -> th.Tensor:
        return th.as_tensor(np.ascontiguousarray(self.observations), device=self.device)

    @staticmethod
    def _observations_at(obs: th.Tensor, idx: th.Tensor) -> th.Tensor:
        return obs[idx]


class LaggedDictRolloutBuffer(LaggedColumns, DictRolloutBuffer):
    """DictRolloutBuffer (Dict observation spaces, ``MultiInputPolicy``) with the same extra columns."""

    def _flatten_observations(self) -> None:
        for key, obs in self.observations.items():
            self.observations[key] = self.swap_and_flatten(obs)

    def _observations_to_torch(self) -> Dict[str, th.Tensor]:
        return {k: th.as_tensor(np.ascontiguousarray(v), device=self.device) for k, v in self.observations.items()}

    @staticmethod
    def _observations_at(obs: Dict[str, th.Tensor], idx: th.Tensor) -> Dict[str, th.Tensor]:
        return {k: v[idx] for k, v in obs.items()}


def flat_observations(buffer: RolloutBuffer) -> Any:
    """The buffer's observations with steps and environments in one axis (step-major), as an array or a dict of
    arrays; not yet flattened env-major by ``get()``."""
    n = buffer.buffer_size * buffer.n_envs
    if isinstance(buffer.observations, dict):
        return {k: v.reshape(n, *buffer.obs_shape[k]) for k, v in buffer.observations.items()}  # type: ignore[index]
    return buffer.observations.reshape(n, *buffer.obs_shape)


def chunk(observations: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of :func:`flat_observations`."""
    if isinstance(observations, dict):
        return {k: v[start:stop] for k, v in observations.items()}
    return observations[start:stop]
