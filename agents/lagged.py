"""LaggedPPO: stock SB3 PPO whose rollouts are acted by a stale snapshot of the policy.

In asynchronous RL systems the behaviour policy mu that produced the data is several updates older than the
policy pi_theta being trained. We simulate that on one machine: the rollout of iteration t is acted by the
policy's parameters after update t-K (the initial parameters while t < K), and the buffer stores
log mu(a|s) as ``old_log_prob``, so every PPO ratio downstream is pi_theta / mu. Nothing recomputes it.

Only ``collect_rollouts`` differs from SB3 (lines marked ``# LAG``), plus the start-of-update diagnostics.
With ``policy_lag=0`` the code path is SB3's, so training is bit-identical to stock PPO.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch.func import functional_call

from agents.buffer import LaggedRolloutBuffer
from agents.losses import LOG_RATIO_CLAMP

LAG_MODES = ("fixed", "uniform", "per-env")
Snapshot = Dict[str, th.Tensor]


def check_lag_args(policy_lag: Any, lag_mode: Any) -> None:
    """Raise ValueError naming the bad value for a lag that is not a non-negative int or an unknown mode."""
    if isinstance(policy_lag, bool) or not isinstance(policy_lag, (int, np.integer)) or policy_lag < 0:
        raise ValueError(f"policy_lag={policy_lag!r} must be a non-negative integer (0 = no lag)")
    if lag_mode not in LAG_MODES:
        raise ValueError(f"lag_mode={lag_mode!r} is unknown: choose one of {', '.join(LAG_MODES)}")


def check_clip_range(name: str, value: Any) -> None:
    """A constant clip range must lie in (0, 1); schedules (callables) are left to SB3."""
    if value is None or callable(value):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name}={value!r} must be a number in (0, 1), e.g. 0.2")


class LaggedPPO(PPO):
    """SB3 PPO acting with a behaviour policy K updates old. All PPO keyword arguments are accepted.

    :param policy_lag: K >= 0, how many updates old the behaviour policy is (0 = stock PPO)
    :param lag_mode: ``fixed`` (every step K updates old), ``uniform`` (each rollout draws its lag from 0..K)
        or ``per-env`` (environment i has lag round(i*K/(n_envs-1)), like actors of different speed; K if n_envs=1)
    :param would_bound_c: c used only by the ``train/dual_clip_would_bound`` diagnostic (share of samples with
        A<0 and r>c), so vanilla runs show how often dual-clip would have acted; it does not change the loss.
    """

    def __init__(
        self,
        policy: Any,
        env: Any,
        *,
        policy_lag: int = 0,
        lag_mode: str = "fixed",
        would_bound_c: float = 3.0,
        **kwargs: Any,
    ) -> None:
        check_lag_args(policy_lag, lag_mode)
        check_clip_range("clip_range", kwargs.get("clip_range", 0.2))
        if policy_lag > 0 and kwargs.get("use_sde", False):
            raise ValueError("use_sde=True with policy_lag > 0 is not supported: set use_sde=False or policy_lag=0")
        kwargs.setdefault("rollout_buffer_class", LaggedRolloutBuffer)
        if not issubclass(kwargs["rollout_buffer_class"], LaggedRolloutBuffer):
            raise ValueError("rollout_buffer_class must derive from agents.buffer.LaggedRolloutBuffer")
        self.policy_lag = int(policy_lag)
        self.lag_mode = lag_mode
        self.would_bound_c = float(would_bound_c)
        super().__init__(policy, env, **kwargs)

    # ----------------------------------------------------------------------------------------------- set-up
    def _setup_model(self) -> None:
        super()._setup_model()
        # Parameters after the last K updates (oldest first); the live learner is lag 0. K copies + the learner.
        self._snapshots: Deque[Snapshot] = deque(maxlen=self.policy_lag)
        if getattr(self, "_lag_rng", None) is None:
            self._lag_rng = np.random.default_rng(self.seed)
        self._last_rollout_lags = np.zeros(self.n_envs, dtype=np.int64)

    def _excluded_save_params(self) -> List[str]:
        # Lag snapshots are training state, not part of the model: keep them out of model.zip.
        return super()._excluded_save_params() + ["_snapshots"]

    def _draw_lags(self) -> np.ndarray:
        """Requested lag per environment for the coming rollout."""
        k, n = self.policy_lag, self.n_envs
        if self.lag_mode == "uniform":
            return np.full(n, self._lag_rng.integers(0, k + 1), dtype=np.int64)
        if self.lag_mode == "per-env" and n > 1:
            return np.rint(np.linspace(0, k, n)).astype(np.int64)
        return np.full(n, k, dtype=np.int64)

    def _snapshot(self) -> Snapshot:
        """A copy of the policy's parameters and buffers; shared modules (the CNN trunk) are copied once."""
        tensors = {**dict(self.policy.named_parameters()), **dict(self.policy.named_buffers())}
        return {name: t.detach().clone() for name, t in tensors.items()}

    def _behavior_groups(self, lags: np.ndarray) -> List[Tuple[Optional[Snapshot], np.ndarray]]:
        """Group environments by the parameters that act for them (None = the learner itself)."""
        groups = []
        for lag in np.unique(lags):
            params = None if lag == 0 else self._snapshots[-int(lag)]
            groups.append((params, np.flatnonzero(lags == lag)))
        return groups

    def _act(
        self, obs: th.Tensor, groups: List[Tuple[Optional[Snapshot], np.ndarray]]
    ) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Sample actions and their log mu(a|s). Values returned here are replaced after the rollout."""
        if len(groups) == 1:
            params = groups[0][0]
            return self.policy(obs) if params is None else functional_call(self.policy, params, (obs,))
        parts = [
            (idx, self.policy(obs[idx]) if params is None else functional_call(self.policy, params, (obs[idx],)))
            for params, idx in groups
        ]
        first = parts[0][1]
        out = [t.new_empty((self.n_envs, *t.shape[1:])) for t in first]
        for idx, tensors in parts:
            for dst, src in zip(out, tensors):
                dst[th.as_tensor(idx)] = src
        return out[0], out[1], out[2]

    @th.no_grad()
    def _learner_values(self, rollout_buffer: RolloutBuffer) -> None:
        """Overwrite the buffer's values with the learner's critic, batched (see ``collect_rollouts``)."""
        n_steps, n_envs = rollout_buffer.buffer_size, rollout_buffer.n_envs
        obs = rollout_buffer.observations.reshape(n_steps * n_envs, *rollout_buffer.obs_shape)
        chunk = 1024
        values = [
            self.policy.predict_values(obs_as_tensor(obs[i : i + chunk], self.device)).flatten()
            for i in range(0, len(obs), chunk)
        ]
        rollout_buffer.values[:] = th.cat(values).cpu().numpy().reshape(n_steps, n_envs)

    # ------------------------------------------------------------------------------------------- rollouts
    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """SB3's ``collect_rollouts`` with the actions drawn from the behaviour snapshot mu.

        The buffer stores log mu(a|s) as ``old_log_prob``. Values for GAE (and the timeout bootstrap) come from
        the learner's current critic: the advantages must estimate how good the data's actions are for the
        value function being trained now (as an asynchronous learner does when it receives stale trajectories);
        a stale critic would only add a second, unrelated source of error. Observations are normalised by the
        same VecNormalize for every policy, learner or snapshot.
        """
        assert self._last_obs is not None, "No previous observation was provided"
        self.policy.set_training_mode(False)

        n_steps = 0
        rollout_buffer.reset()
        if self.use_sde:
            self.policy.reset_noise(env.num_envs)

        # LAG: pick the behaviour parameters for this rollout (capped at the oldest snapshot held)
        lags = np.minimum(self._draw_lags(), len(self._snapshots))
        groups = self._behavior_groups(lags)
        lagged = bool(lags.any())
        self._last_rollout_lags = lags

        callback.on_rollout_start()

        while n_steps < n_rollout_steps:
            if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
                self.policy.reset_noise(env.num_envs)

            with th.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                actions, values, log_probs = self._act(obs_tensor, groups)  # LAG: mu acts, log mu stored
            actions = actions.cpu().numpy()

            clipped_actions = actions
            if isinstance(self.action_space, spaces.Box):
                if self.policy.squash_output:
                    clipped_actions = self.policy.unscale_action(clipped_actions)
                else:
                    clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)

            new_obs, rewards, dones, infos = env.step(clipped_actions)

            self.num_timesteps += env.num_envs

            callback.update_locals(locals())
            if not callback.on_step():
                return False

            self._update_info_buffer(infos, dones)
            n_steps += 1

            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)

            # Timeout bootstrap with the learner's critic, as stock SB3 (GitHub issue #633)
            for idx, done in enumerate(dones):
                if (
                    done
                    and infos[idx].get("terminal_observation") is not None
                    and infos[idx].get("TimeLimit.truncated", False)
                ):
                    terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                    with th.no_grad():
                        terminal_value = self.policy.predict_values(terminal_obs)[0]  # type: ignore[arg-type]
                    rewards[idx] += self.gamma * terminal_value

            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones

        if lagged:  # LAG: values from the learner's critic, one batched pass instead of one per step
            self._learner_values(rollout_buffer)
        if self.policy_lag > 0:  # LAG: this rollout's learner becomes the newest snapshot
            self._snapshots.append(self._snapshot())
        self.logger.record("rollout/policy_lag", float(lags.mean()))

        with th.no_grad():
            values = self.policy.predict_values(obs_as_tensor(new_obs, self.device))  # type: ignore[arg-type]

        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

        callback.update_locals(locals())

        callback.on_rollout_end()

        return True

    # ------------------------------------------------------------------------------ start-of-update diagnostics
    def _discrete_actions(self, actions: th.Tensor) -> th.Tensor:
        return actions.long().flatten() if isinstance(self.action_space, spaces.Discrete) else actions

    @th.no_grad()
    def _learner_log_probs(self) -> th.Tensor:
        """log pi_theta(a|s) of the learner for every stored step, batched; also kept as ``prox_log_probs``."""
        buf = self.rollout_buffer
        n = buf.buffer_size * buf.n_envs
        obs = buf.observations.reshape(n, *buf.obs_shape)
        actions = buf.actions.reshape(n, *buf.actions.shape[2:])
        chunk = 1024
        out = []
        for i in range(0, n, chunk):
            dist = self.policy.get_distribution(obs_as_tensor(obs[i : i + chunk], self.device))
            out.append(dist.log_prob(self._discrete_actions(th.as_tensor(actions[i : i + chunk], device=self.device))))
        log_prob = th.cat(out)
        prox = log_prob.cpu().numpy().reshape(buf.buffer_size, buf.n_envs)
        # Where the data were acted with lag 0 the learner *was* the behaviour policy: reuse log mu verbatim
        # (a batched recomputation can differ from it in the last float bit).
        fresh = self._last_rollout_lags == 0
        prox[:, fresh] = buf.log_probs[:, fresh]
        buf.prox_log_probs[:] = prox  # type: ignore[attr-defined]
        return log_prob

    @th.no_grad()
    def _log_lag_diagnostics(self) -> None:
        """How far the data's behaviour policy is from the learner, measured before the update starts."""
        buf = self.rollout_buffer
        log_prob = self._learner_log_probs()
        old_log_prob = th.as_tensor(buf.log_probs.reshape(-1), device=log_prob.device)
        log_ratio = th.clamp(log_prob - old_log_prob, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        ratio = th.exp(log_ratio)
        advantages = th.as_tensor(buf.advantages.reshape(-1), device=log_prob.device)
        if self.normalize_advantage:
            advantages = advantages - advantages.mean()  # the sign the loss sees (up to per-minibatch statistics)
        quantiles = th.quantile(ratio.double(), th.tensor([0.5, 0.99], dtype=th.float64, device=ratio.device))
        self.logger.record("train/behavior_kl", ((ratio - 1) - log_ratio).mean().item())  # k3 estimate of KL(mu||pi)
        self.logger.record("train/ratio_p50", quantiles[0].item())
        self.logger.record("train/ratio_p99", quantiles[1].item())
        self.logger.record("train/ratio_max", ratio.max().item())
        self.logger.record(
            "train/dual_clip_would_bound", ((advantages < 0) & (ratio > self.would_bound_c)).float().mean().item()
        )
        self.logger.record("train/log_ratio", log_ratio.cpu(), exclude=("stdout", "log", "json", "csv"))

    def train(self) -> None:
        """Stock SB3 ``PPO.train`` preceded by the lag diagnostics."""
        self._log_lag_diagnostics()
        super().train()
