"""SB3's RolloutBuffer plus two per-step columns the lagged algorithms need.

- ``segment_ids``: which episode segment a step belongs to (for the ``seq-*`` loss aggregation modes);
- ``prox_log_probs``: the learner's log-prob of the stored action at the start of ``train()`` (the proximal
  policy of decoupled PPO).

GAE and flattening are SB3's own; sampling gives SB3's minibatches value for value: the random permutation is
drawn exactly as stock, so a run with this buffer consumes the global RNG identically to stock PPO, but the
columns are converted to torch once per rollout instead of once per minibatch (tests/test_speedups.py).
"""

from __future__ import annotations

from typing import Generator, NamedTuple, Optional, Tuple

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.vec_env import VecNormalize


class LaggedRolloutBufferSamples(NamedTuple):
    observations: th.Tensor
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor  #: log mu(a|s), stored when the behaviour policy acted
    advantages: th.Tensor
    returns: th.Tensor
    segment_ids: th.Tensor  #: int64, one id per episode segment of the rollout
    prox_log_prob: th.Tensor  #: log pi(a|s) of the learner at the start of the update


class LaggedRolloutBuffer(RolloutBuffer):
    """RolloutBuffer whose minibatches also carry ``segment_ids`` and ``prox_log_prob``."""

    def reset(self) -> None:
        super().reset()
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
        if not self.generator_ready:
            for name in ("observations", "actions", "values", "log_probs", "advantages", "returns"):
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
            self.generator_ready = True
            # Our columns, flattened exactly as SB3 flattens its own (env-major), once per rollout.
            self._flat_extras = (
                self.swap_and_flatten(self.segment_ids()),
                self.swap_and_flatten(self.prox_log_probs),
            )
            self._torch_columns = self._to_torch_columns()
        if batch_size is None:
            batch_size = self.buffer_size * self.n_envs
        # th.from_numpy of the permutation keeps its values; one conversion instead of one per minibatch
        torch_indices = th.from_numpy(indices).to(self.device)
        start_idx = 0
        while start_idx < self.buffer_size * self.n_envs:
            yield self._samples_at(torch_indices[start_idx : start_idx + batch_size])
            start_idx += batch_size

    def _to_torch_columns(self) -> Tuple[th.Tensor, ...]:
        """The flattened columns as tensors, in the dtypes and shapes SB3's ``_get_samples`` gives a minibatch."""
        assert self._flat_extras is not None
        segment_ids, prox = self._flat_extras
        columns = (
            self.observations,
            # Cast to float32 (as SB3's _get_samples does; copy=False keeps the float32 buffer itself)
            self.actions.astype(np.float32, copy=False),
            self.values.reshape(-1),  # (N, 1) -> (N,): what .flatten() of a minibatch gives
            self.log_probs.reshape(-1),
            self.advantages.reshape(-1),
            self.returns.reshape(-1),
            prox.reshape(-1),
        )
        tensors = tuple(th.as_tensor(np.ascontiguousarray(c), device=self.device) for c in columns)
        return (*tensors[:6], th.as_tensor(segment_ids.reshape(-1), device=self.device), tensors[6])

    def _samples_at(self, idx: th.Tensor) -> LaggedRolloutBufferSamples:
        obs, actions, values, log_probs, advantages, returns, segment_ids, prox = self._torch_columns
        return LaggedRolloutBufferSamples(
            observations=obs[idx],
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
        base = super()._get_samples(batch_inds, env)
        assert self._flat_extras is not None
        segment_ids, prox = self._flat_extras
        return LaggedRolloutBufferSamples(
            *base,
            segment_ids=th.as_tensor(segment_ids[batch_inds].flatten(), device=self.device),
            prox_log_prob=self.to_torch(prox[batch_inds].flatten()),
        )
