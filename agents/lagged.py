"""LaggedPPO: stock SB3 PPO whose rollouts are acted by a stale snapshot of the policy.

In asynchronous RL systems the behaviour policy mu that produced the data is several updates older than the
policy pi_theta being trained. We simulate that on one machine: the rollout of iteration t is acted by the
policy's parameters after update t-K (the initial parameters while t < K), and the buffer stores
log mu(a|s) as ``old_log_prob``, so every PPO ratio downstream is pi_theta / mu. Nothing recomputes it.

``collect_rollouts`` differs from SB3 in the lines marked ``# LAG``; ``train`` is SB3's with the start-of-update
diagnostics added and the lines marked ``# OURS`` changed for speed and metrics. With ``policy_lag=0`` training is
bit-identical to stock PPO (tests/test_agents.py), only faster: ``train`` is SB3's ``PPO.train`` line for line
with the host syncs moved out of the minibatch loop, and the "fast path" below (Gaussian maths without
distribution objects, plain layers without ``nn.Module.__call__``, torch's Adam arithmetic without its per-call
overhead and over flat buffers, the buffer converted to torch once per rollout) runs the same tensor operations in
the same order as SB3 and torch (tests/test_speedups.py).
"""

from __future__ import annotations

import copy
from collections import defaultdict, deque
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import nn
from torch.nn import functional as F

from agents.behavior import check_temperature_args, env_temperatures, tempered_forward
from agents.buffer import LaggedColumns, LaggedDictRolloutBuffer, LaggedRolloutBuffer, chunk, flat_observations
from agents.fast_optim import adam_step, clip_grad_norm
from agents.fast_policy import fast_evaluate_actions, fast_forward, fast_log_prob, has_fast_gaussian
from agents.losses import LOG_RATIO_CLAMP
from agents.options import LAG_MODES

#: observations per batched no-grad pass over a rollout (learner values, learner log-probs); 256 was about twice
#: as fast per observation as 1024 for the Atari CNN on CPU (the 1024-frame float batch alone is 115 MB)
CHUNK = 256
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
    :param behavior_temperature: tau > 0: whoever acts samples from its distribution tempered by tau (Gaussian std
        x tau, logits / tau; see :mod:`agents.behavior`); 1 = the policy itself (default, stock sampling)
    :param temperature_mode: ``fixed`` (every environment tau) or ``per-env`` (environment i of n gets
        tau**(i/(n-1)), from 1 to tau, like actors that explore by different amounts)
    """

    #: metrics of ``_policy_term`` logged as their maximum over an update's minibatches (all others: the mean)
    MAX_METRICS: frozenset = frozenset()

    def __init__(
        self,
        policy: Any,
        env: Any,
        *,
        policy_lag: int = 0,
        lag_mode: str = "fixed",
        would_bound_c: float = 3.0,
        behavior_temperature: float = 1.0,
        temperature_mode: str = "fixed",
        **kwargs: Any,
    ) -> None:
        check_lag_args(policy_lag, lag_mode)
        check_temperature_args(behavior_temperature, temperature_mode)
        if behavior_temperature != 1 and kwargs.get("use_sde", False):
            raise ValueError("use_sde=True with behavior_temperature != 1 is not supported (gSDE's noise is not a "
                             "distribution a temperature can scale per step): set use_sde=False or temperature 1")
        check_clip_range("clip_range", kwargs.get("clip_range", 0.2))
        if policy_lag > 0 and kwargs.get("use_sde", False):
            raise ValueError("use_sde=True with policy_lag > 0 is not supported: set use_sde=False or policy_lag=0")
        buffer_class = kwargs.get("rollout_buffer_class")  # default: chosen by the observation space in _setup_model
        if buffer_class is not None and not issubclass(buffer_class, LaggedColumns):
            raise ValueError("rollout_buffer_class must derive from agents.buffer.LaggedRolloutBuffer or "
                             "LaggedDictRolloutBuffer")
        self.policy_lag = int(policy_lag)
        self.lag_mode = lag_mode
        self.would_bound_c = float(would_bound_c)
        self.behavior_temperature = float(behavior_temperature)
        self.temperature_mode = temperature_mode
        super().__init__(policy, env, **kwargs)

    # ----------------------------------------------------------------------------------------------- set-up
    def _setup_model(self) -> None:
        if self.rollout_buffer_class is None:  # as SB3 picks RolloutBuffer or DictRolloutBuffer
            dict_obs = isinstance(self.observation_space, spaces.Dict)
            self.rollout_buffer_class = LaggedDictRolloutBuffer if dict_obs else LaggedRolloutBuffer
        super()._setup_model()
        # The policy after each of the last K updates (oldest first), as copies of the learner's module that act
        # directly; the live learner is lag 0. K copies + the learner: nothing else holds parameters.
        self._snapshots: Deque[nn.Module] = deque(maxlen=self.policy_lag)
        if getattr(self, "_lag_rng", None) is None:
            self._lag_rng = np.random.default_rng(self.seed)
        self._last_rollout_lags = np.zeros(self.n_envs, dtype=np.int64)
        # temperature per environment (all 1: untempered, stock sampling)
        self._temperatures = env_temperatures(self.behavior_temperature, self.temperature_mode, self.n_envs)
        self._refresh_fast_path()

    def _refresh_fast_path(self) -> None:
        """Pick the fast Gaussian path when the policy is SB3's own (see :func:`has_fast_gaussian`)."""
        self._fast: Optional[ActorCriticPolicy] = self.policy if has_fast_gaussian(self.policy) else None

    def _excluded_save_params(self) -> List[str]:
        # Lag snapshots are training state, not part of the model: keep them out of model.zip.
        # The seed batch's random-stream states (agents/seed_batch.py) go into checkpoints, not model.zip.
        return super()._excluded_save_params() + ["_snapshots", "_fast", "_learner_log_prob_cache", "_seed_batch_rng"]

    def _evaluate_actions(self, obs: th.Tensor, actions: th.Tensor) -> Tuple[th.Tensor, th.Tensor, Optional[th.Tensor]]:
        if self._fast_ok():
            return fast_evaluate_actions(self.policy, obs, actions)
        return self.policy.evaluate_actions(obs, actions)

    def _fast_ok(self) -> bool:
        return getattr(self, "_fast", None) is not None and self._fast is self.policy

    def _draw_lags(self) -> np.ndarray:
        """Requested lag per environment for the coming rollout."""
        k, n = self.policy_lag, self.n_envs
        if self.lag_mode == "uniform":
            return np.full(n, self._lag_rng.integers(0, k + 1), dtype=np.int64)
        if self.lag_mode == "per-env" and n > 1:
            return np.rint(np.linspace(0, k, n)).astype(np.int64)
        return np.full(n, k, dtype=np.int64)

    @staticmethod
    def _tensors(module: nn.Module) -> Snapshot:
        """Parameters and buffers by name; modules shared by actor and critic (the CNN trunk) appear once."""
        return {**dict(module.named_parameters()), **dict(module.named_buffers())}

    def _copy_policy(self) -> nn.Module:
        """A copy of the learner's module for acting: without the optimizer (it never trains) and without the last
        distribution SB3's action_dist keeps (its tensors may belong to an autograd graph)."""
        memo: Dict[int, Any] = {}
        if getattr(self.policy, "optimizer", None) is not None:
            memo[id(self.policy.optimizer)] = None
        for value in vars(getattr(self.policy, "action_dist", object())).values():
            if isinstance(value, (th.Tensor, th.distributions.Distribution)):
                memo[id(value)] = None
        module = copy.deepcopy(self.policy, memo)
        module.set_training_mode(False)
        return module

    @th.no_grad()
    def _push_snapshot(self, tensors: Optional[Snapshot] = None, module: Optional[nn.Module] = None) -> None:
        """Append the learner's current parameters (or ``tensors``) as the newest snapshot, in ``module`` or else
        recycling the oldest (a new copy of the learner while fewer than K are held)."""
        if module is None:
            full = len(self._snapshots) == self._snapshots.maxlen
            module = self._snapshots.popleft() if full else self._copy_policy()
        source = self._tensors(self.policy) if tensors is None else tensors
        for name, tensor in self._tensors(module).items():
            tensor.copy_(source[name])
        self._snapshots.append(module)

    def lag_snapshots(self) -> List[Snapshot]:
        """The snapshots' tensors, oldest first (for checkpoints); :meth:`load_lag_snapshots` puts them back."""
        return [{k: t.detach().clone() for k, t in self._tensors(m).items()} for m in self._snapshots]

    def load_lag_snapshots(self, snapshots: List[Snapshot]) -> None:
        spare = list(self._snapshots)  # modules to reuse (the seed batch reloads them after every update)
        self._snapshots.clear()
        for tensors in snapshots:
            self._push_snapshot(tensors, spare.pop() if spare else None)

    def _behavior_groups(self, lags: np.ndarray) -> List[Tuple[Optional[nn.Module], np.ndarray]]:
        """Group environments by the policy that acts for them (None = the learner itself)."""
        return [(None if lag == 0 else self._snapshots[-int(lag)], np.flatnonzero(lags == lag)) for lag in np.unique(lags)]

    def _act(
        self, obs: th.Tensor, groups: List[Tuple[Optional[th.nn.Module], np.ndarray]]
    ) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Sample actions and their log mu(a|s) (tempered where the temperature is not 1). Values returned here are
        replaced after the rollout."""
        if len(groups) == 1:
            return self._forward_with(groups[0][0], obs, self._temperature_of(groups[0][1]))
        parts = [(idx, self._forward_with(policy, _rows(obs, idx), self._temperature_of(idx))) for policy, idx in groups]
        first = parts[0][1]
        out = [t.new_empty((self.n_envs, *t.shape[1:])) for t in first]
        for idx, tensors in parts:
            for dst, src in zip(out, tensors):
                dst[th.as_tensor(idx)] = src
        return out[0], out[1], out[2]

    def _temperature_of(self, idx: np.ndarray) -> Optional[th.Tensor]:
        """The temperatures of environments ``idx`` as a tensor, or None when all are 1 (untempered)."""
        temps = self._temperatures[idx]
        return None if (temps == 1.0).all() else th.as_tensor(temps, dtype=th.float32, device=self.device)

    def _forward_with(
        self, policy: Optional[th.nn.Module], obs: th.Tensor, tau: Optional[th.Tensor] = None
    ) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
        """``policy(obs)`` for the learner (None) or a behaviour policy, on the fast path when possible; tempered by
        ``tau`` (one value per row) when it is given."""
        policy = self.policy if policy is None else policy
        if tau is not None:
            return tempered_forward(policy, obs, tau)  # type: ignore[arg-type]
        return fast_forward(policy, obs) if self._fast_ok() else policy(obs)  # type: ignore[arg-type]

    @th.no_grad()
    def _learner_values(self, rollout_buffer: RolloutBuffer) -> None:
        """Overwrite the buffer's values with the learner's critic, batched (see ``collect_rollouts``).

        When actor and critic share their features extractor (SB3's default, ``share_features_extractor=True``), the
        same pass also computes the
        learner's log-probs of the stored actions, which ``train`` needs next (``_store_prox_log_probs``): the features
        are computed once instead of twice. Same modules, same inputs, same chunks: the same values bit for bit.
        """
        n_steps, n_envs = rollout_buffer.buffer_size, rollout_buffer.n_envs
        n = n_steps * n_envs
        obs = flat_observations(rollout_buffer)
        actions = rollout_buffer.actions.reshape(n, *rollout_buffer.actions.shape[2:])
        policy = self.policy
        shared = (
            isinstance(policy, ActorCriticPolicy)
            and policy.share_features_extractor
            and all(getattr(type(policy), m) is getattr(ActorCriticPolicy, m)
                    for m in ("predict_values", "get_distribution", "_get_action_dist_from_latent"))
        )
        values, log_probs = [], []
        for i in range(0, n, CHUNK):
            obs_i = obs_as_tensor(chunk(obs, i, i + CHUNK), self.device)
            if not shared:
                values.append(policy.predict_values(obs_i).flatten())
                continue
            # predict_values and get_distribution, with the (shared) features computed once
            features = BaseModel.extract_features(policy, obs_i, policy.features_extractor)
            values.append(policy.value_net(policy.mlp_extractor.forward_critic(features)).flatten())
            dist = policy._get_action_dist_from_latent(policy.mlp_extractor.forward_actor(features))
            act_i = self._stored_actions(actions[i : i + CHUNK])
            log_probs.append(dist.log_prob(act_i))
        rollout_buffer.values[:] = th.cat(values).cpu().numpy().reshape(n_steps, n_envs)
        self._learner_log_prob_cache = log_probs or None

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

        callback.on_rollout_start()

        # LAG: pick the behaviour parameters for this rollout (capped at the oldest snapshot held). After
        # on_rollout_start, where checkpoints are written: a resumed run draws this rollout's lag again.
        lags = np.minimum(self._draw_lags(), len(self._snapshots))
        groups = self._behavior_groups(lags)
        lagged = bool(lags.any())
        self._last_rollout_lags = lags
        self._learner_log_prob_cache: Any = None

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

            self._bootstrap_timeouts(rewards, dones, infos)  # OURS: SB3's timeout bootstrap, a shared method

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
            self._push_snapshot()
            if self._learner_log_prob_cache is not None:  # valid while the learner still has these parameters
                self._learner_log_prob_cache = (self._snapshots[-1], self._learner_log_prob_cache)
        self.logger.record("rollout/policy_lag", float(lags.mean()))  # LAG: the lag the data actually had
        self.logger.record("rollout/behavior_temperature", float(self._temperatures.mean()))  # LAG: and their tau

        with th.no_grad():
            values = self.policy.predict_values(obs_as_tensor(new_obs, self.device))  # type: ignore[arg-type]

        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)

        callback.update_locals(locals())

        callback.on_rollout_end()

        return True

    def _bootstrap_timeouts(self, rewards: np.ndarray, dones: np.ndarray, infos: List[Dict[str, Any]]) -> None:
        """Timeout bootstrap with the learner's critic, SB3's lines (GitHub issue #633): an episode cut by a time
        limit gets gamma * V(terminal observation) added to its last reward."""
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

    # ------------------------------------------------------------------------------ start-of-update diagnostics
    def _discrete_actions(self, actions: th.Tensor) -> th.Tensor:
        return actions.long().flatten() if isinstance(self.action_space, spaces.Discrete) else actions

    def _stored_actions(self, actions: np.ndarray) -> th.Tensor:
        """Buffer actions as SB3's minibatches hand them to the policy: float32 (the buffer keeps the action space's
        dtype, e.g. int8 for MultiBinary), then long for Discrete."""
        return self._discrete_actions(th.as_tensor(actions.astype(np.float32, copy=False), device=self.device))

    @th.no_grad()
    def _store_prox_log_probs(self) -> th.Tensor:
        """log pi_theta(a|s) of the learner for every stored step, batched, written into the buffer's
        ``prox_log_probs`` (the policy at the start of the update, pi_prox) and returned flat (step-major)."""
        buf = self.rollout_buffer
        n = buf.buffer_size * buf.n_envs
        obs = flat_observations(buf)
        actions = buf.actions.reshape(n, *buf.actions.shape[2:])
        fresh = self._fresh_envs()
        if fresh.all():
            # The learner acted the whole rollout: pi_theta = mu, and log mu is used verbatim below anyway
            buf.prox_log_probs[:] = buf.log_probs  # type: ignore[attr-defined]
            return th.as_tensor(buf.log_probs.reshape(n).copy(), device=self.device)
        cache, self._learner_log_prob_cache = getattr(self, "_learner_log_prob_cache", None), None
        if cache is not None and self._still_learner(cache[0]):
            out = cache[1]  # computed with the critic's values at the end of the rollout, same parameters
        else:
            out = self._learner_log_prob_chunks(obs, actions)
        return self._write_prox_log_probs(th.cat(out), fresh)

    def _fresh_envs(self) -> np.ndarray:
        """Per environment: whether the last rollout was acted by the learner itself, untempered (lag 0, tau 1)."""
        return (self._last_rollout_lags == 0) & (self._temperatures == 1.0)

    def _write_prox_log_probs(self, log_prob: th.Tensor, fresh: np.ndarray) -> th.Tensor:
        """Store the learner's log-probs (flat, step-major) as the buffer's ``prox_log_probs`` and return them as
        stored. Where the data were acted with lag 0 and temperature 1 the learner *was* the behaviour policy: log mu
        is reused verbatim there (a batched recomputation can differ from it in the last float bit)."""
        buf = self.rollout_buffer
        prox = log_prob.detach().cpu().numpy().reshape(buf.buffer_size, buf.n_envs).copy()
        prox[:, fresh] = buf.log_probs[:, fresh]
        buf.prox_log_probs[:] = prox  # type: ignore[attr-defined]
        return th.as_tensor(prox.reshape(-1), device=log_prob.device)

    def _learner_log_prob_chunks(self, obs: np.ndarray, actions: np.ndarray) -> List[th.Tensor]:
        out = []
        for i in range(0, len(actions), CHUNK):
            obs_i = obs_as_tensor(chunk(obs, i, i + CHUNK), self.device)
            act_i = self._stored_actions(actions[i : i + CHUNK])
            if self._fast_ok():
                out.append(fast_log_prob(self.policy, obs_i, act_i))
            else:
                out.append(self.policy.get_distribution(obs_i).log_prob(act_i))
        return out

    def _still_learner(self, snapshot: nn.Module) -> bool:
        """Whether the learner's parameters and buffers are still exactly those of ``snapshot``."""
        mine, theirs = self._tensors(self.policy), self._tensors(snapshot)
        return mine.keys() == theirs.keys() and all(th.equal(t, theirs[k]) for k, t in mine.items())

    @th.no_grad()
    def _log_lag_diagnostics(self, log_prob: th.Tensor) -> None:
        """How far the data's behaviour policy is from the learner (``log_prob``: its log pi_theta of every stored
        step), measured before the update starts."""
        buf = self.rollout_buffer
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

    def _policy_term(
        self, data: Any, log_prob: th.Tensor, advantages: th.Tensor, clip_range: float
    ) -> Tuple[th.Tensor, Dict[str, th.Tensor]]:
        """SB3's clipped surrogate, its lines verbatim; subclasses return their loss and extra metrics."""
        ratio = th.exp(log_prob - data.old_log_prob)
        policy_loss_1 = advantages * ratio
        policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
        policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()
        return policy_loss, {}

    def _minibatch_loss(
        self, rollout_data: Any, values: th.Tensor, log_prob: th.Tensor, entropy: Optional[th.Tensor],
        clip_range: float, clip_range_vf: Optional[float],
    ) -> Tuple[th.Tensor, Dict[str, th.Tensor], th.Tensor]:
        """The loss of one minibatch, its metrics and ``approx_kl``: SB3's ``PPO.train`` lines between
        ``evaluate_actions`` and early stopping, with the policy term from ``_policy_term``. Tensors only (no host
        sync and no data-dependent branch), so the seed-batched trainer runs it per seed under ``torch.func.vmap``.
        """
        advantages = rollout_data.advantages
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        # OURS: the policy term; SB3's clip_fraction keeps SB3's definition
        policy_loss, pg_metrics = self._policy_term(rollout_data, log_prob, advantages, clip_range)
        with th.no_grad():
            ratio = th.exp(log_prob - rollout_data.old_log_prob)
            metrics = {"clip_fraction": th.mean((th.abs(ratio - 1) > clip_range).float()), **pg_metrics}  # OURS
        metrics["policy_gradient_loss"] = policy_loss.detach()  # OURS: metrics as tensors, no host sync

        if clip_range_vf is None:  # OURS: the value passed in (SB3 tests self.clip_range_vf)
            values_pred = values
        else:
            values_pred = rollout_data.old_values + th.clamp(
                values - rollout_data.old_values, -clip_range_vf, clip_range_vf
            )
        value_loss = F.mse_loss(rollout_data.returns, values_pred)
        metrics["value_loss"] = value_loss.detach()  # OURS

        if entropy is None:
            entropy_loss = -th.mean(-log_prob)
        else:
            entropy_loss = -th.mean(entropy)
        metrics["entropy_loss"] = entropy_loss.detach()  # OURS

        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

        with th.no_grad():
            log_ratio = log_prob - rollout_data.old_log_prob
            approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio)  # OURS: a tensor (SB3: .cpu().numpy())
        return loss, metrics, approx_kl_div  # OURS

    def train(self) -> None:
        """SB3's ``PPO.train`` line for line, preceded by the lag diagnostics; lines that differ are marked ``# OURS``.

        The policy term comes from ``_policy_term`` (SB3's here, the pure-torch losses in subclasses); metrics are
        kept as tensors and averaged (in float64, as SB3's ``np.mean`` of floats) with one host synchronisation at
        the end of the update instead of five per minibatch; the Gaussian maths runs on the fast path
        (:func:`fast_evaluate_actions`). Same operations in the same order: bit-identical to stock SB3.
        """
        # OURS: the learner's log-probs of every stored step, once per update: stored as pi_prox (the decoupled loss
        # and early stopping read it from the minibatches) and measured against log mu for the lag diagnostics
        learner_log_prob = self._store_prox_log_probs()
        self._log_lag_diagnostics(learner_log_prob)
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = None  # OURS: passed to _minibatch_loss
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]

        metrics: Dict[str, List[th.Tensor]] = defaultdict(list)  # OURS: every metric, every minibatch
        approx_kl_divs: List[th.Tensor] = []  # OURS: tensors, averaged at the end
        parameters = list(self.policy.parameters())  # OURS: listed once per update, not once per minibatch
        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []  # SB3 reports approx_kl of the last epoch only
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = self._discrete_actions(rollout_data.actions)  # OURS: SB3's Discrete cast, in a method

                values, log_prob, entropy = self._evaluate_actions(rollout_data.observations, actions)  # OURS
                # OURS: SB3's lines from here to the approx_kl below live in _minibatch_loss (one seed's minibatch,
                # shared with the seed-batched trainer, agents/seed_batch.py)
                loss, minibatch_metrics, approx_kl_div = self._minibatch_loss(
                    rollout_data, values.flatten(), log_prob, entropy, clip_range, clip_range_vf
                )
                for key, value in minibatch_metrics.items():  # OURS: every metric kept as a tensor
                    metrics[key].append(value)
                approx_kl_divs.append(approx_kl_div)

                # OURS: early stopping asks how far *this update* moved the policy: the KL to the policy at the start
                # of the update (pi_prox), not to mu, which under lag can be far already before the first step (the
                # update would then stop at once and change nothing). At lag 0 and temperature 1 pi_prox is mu's
                # stored log-probs verbatim, so stock SB3's decision. Host sync only when target_kl is set.
                if self.target_kl is not None:
                    with th.no_grad():
                        moved = log_prob - rollout_data.prox_log_prob  # OURS: against pi_prox
                        update_kl = th.mean((th.exp(moved) - 1) - moved)  # OURS
                    if update_kl.item() > 1.5 * self.target_kl:  # OURS
                        continue_training = False
                        if self.verbose >= 1:
                            print(f"Early stopping at step {epoch} due to reaching max kl: {update_kl.item():.2f}")
                        break

                self.policy.optimizer.zero_grad()
                loss.backward()
                clip_grad_norm(parameters, self.max_grad_norm)  # OURS: skips a multiply by 1.0
                adam_step(self.policy.optimizer)  # OURS: torch's Adam arithmetic without its per-call overhead

            self._n_updates += 1
            if not continue_training:
                break

        self._record_update(metrics, approx_kl_divs, loss, clip_range, clip_range_vf)  # OURS: SB3's logging lines

    def _record_update(self, metrics: Dict[str, List[th.Tensor]], approx_kl_divs: List[th.Tensor], loss: th.Tensor,
                       clip_range: float, clip_range_vf: Optional[float]) -> None:
        """The end of SB3's ``PPO.train``: the update's ``train/*`` values (the seed batch calls it per seed)."""
        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

        # OURS: one host sync for all metrics, each over all minibatches and epochs: the maximum for the arm's
        # MAX_METRICS, the mean for the others
        for key, values_list in metrics.items():
            reduce = _max if key in self.MAX_METRICS else _mean
            self.logger.record(f"train/{key}", reduce(values_list))
        if approx_kl_divs:
            self.logger.record("train/approx_kl", _mean(approx_kl_divs))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)


def _mean(values: List[th.Tensor]) -> float:
    """Mean of per-minibatch scalars in float64, as SB3's ``np.mean`` over their ``.item()`` values."""
    return float(np.mean(th.stack(values).double().cpu().numpy()))


def _max(values: List[th.Tensor]) -> float:
    """Maximum of per-minibatch scalars."""
    return float(th.stack(values).max().item())


def _rows(obs: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of a batch of observations (a tensor, or a dict of tensors for Dict spaces)."""
    return {k: v[idx] for k, v in obs.items()} if isinstance(obs, dict) else obs[idx]
