"""SB3's RolloutBuffer plus two per-step columns the lagged algorithms need.

- ``segment_ids``: which episode segment a step belongs to (for the ``seq-*`` loss aggregation modes);
- ``prox_log_probs``: the learner's log-prob of the stored action at the start of ``train()`` (the proximal
  policy of decoupled PPO, and the source of the lag diagnostics).

Sampling, GAE and flattening are SB3's own: the random permutation is drawn exactly as stock, so a run with
this buffer consumes the global RNG identically to stock PPO.
"""

from __future__ import annotations

from typing import Generator, NamedTuple, Optional

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

    def segment_ids(self) -> np.ndarray:
        """``(n_steps, n_envs)`` ids: a new segment starts at t=0 and at every episode start, per environment."""
        starts = self.episode_starts.astype(np.int64)
        starts[0] = 1
        offsets = np.arange(self.n_envs, dtype=np.int64) * (self.buffer_size + 1)
        return np.cumsum(starts, axis=0) + offsets

    def get(self, batch_size: Optional[int] = None) -> Generator[LaggedRolloutBufferSamples, None, None]:  # type: ignore[override]
        if not self.generator_ready:
            # Flatten our columns exactly as SB3 flattens its own (env-major), once per rollout.
            self._flat_extras = (
                self.swap_and_flatten(self.segment_ids()),
                self.swap_and_flatten(self.prox_log_probs),
            )
        yield from super().get(batch_size)  # type: ignore[misc]

    def _get_samples(self, batch_inds: np.ndarray, env: Optional[VecNormalize] = None) -> LaggedRolloutBufferSamples:  # type: ignore[override]
        base = super()._get_samples(batch_inds, env)
        assert self._flat_extras is not None
        segment_ids, prox = self._flat_extras
        return LaggedRolloutBufferSamples(
            *base,
            segment_ids=th.as_tensor(segment_ids[batch_inds].flatten(), device=self.device),
            prox_log_prob=self.to_torch(prox[batch_inds].flatten()),
        )
