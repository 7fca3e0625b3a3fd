"""LaggedPPO: stock SB3 PPO whose rollouts are acted by behaviour policies, the trainer every arm shares.

In asynchronous RL systems the behaviour policy mu that produced the data is several updates older than the
policy pi_theta being trained. We simulate that on one machine: the rollout of iteration t is acted by the
policy's parameters after update t-K (the initial parameters while t < K), and the buffer stores
log mu(a|s) as ``old_log_prob``, so every PPO ratio downstream is pi_theta / mu. Nothing recomputes it.

The trainer is three parts around SB3's two methods (``collect_rollouts``, ``train``):

- ``self.behavior`` (:class:`agents.behavior.BehaviorPolicies`): who acts each rollout (snapshots, lag draws,
  temperatures); ``collect_rollouts`` asks it for actions and log mu;
- ``self.learner_pass`` (:class:`agents.learner_pass.LearnerPass`): the learner's batched values (for GAE after a
  lagged rollout) and log-probs (pi_prox and the diagnostics at the start of ``train``), once per update;
- ``self.objective`` (:mod:`agents.objectives`): the arm's policy term, the only difference between arms;
- ``self.prox_ewma`` (:mod:`agents.ewma`): PPO-EWMA's moving average of the learner, when the objective reads
  pi_prox from it (the decoupled arm's ``prox="ewma"``): taken in after every optimiser step, read in every minibatch.

``collect_rollouts`` differs from SB3 in the lines marked ``# LAG``; ``train`` is SB3's with the start-of-update
diagnostics added and the lines marked ``# OURS`` changed for speed and metrics. With ``policy_lag=0`` training is
bit-identical to stock PPO (tests/test_agents.py), only faster: ``train`` is SB3's ``PPO.train`` line for line
with the host syncs moved out of the minibatch loop, and the "fast path" below (Gaussian maths without
distribution objects, plain layers without ``nn.Module.__call__``, torch's Adam arithmetic without its per-call
overhead and over flat buffers, the buffer converted to torch once per rollout) runs the same tensor operations in
the same order as SB3 and torch (tests/test_speedups.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import fields
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch.nn import functional as F

from agents.behavior import BehaviorPolicies, check_lag_args, check_temperature_args, env_temperatures
from agents.buffer import LaggedColumns, LaggedDictRolloutBuffer, LaggedRolloutBuffer
from agents.ewma import ProximalEWMA
from agents.fast_optim import adam_step, clip_grad_norm
from agents.fast_policy import fast_evaluate_actions, has_fast_gaussian
from agents.learner_pass import LearnerPass
from agents.losses import LOG_RATIO_CLAMP, check_clip_range
from agents.objectives import ClippedSurrogate, Objective


class LaggedPPO(PPO):
    """SB3 PPO acting with a behaviour policy K updates old. All PPO keyword arguments are accepted.

    As the ``ppo`` arm its objective is SB3's clipped surrogate verbatim (:class:`agents.objectives.ClippedSurrogate`);
    an arm's subclass names another ``objective_class`` and keeps its settings as attributes (:meth:`_keep_settings`).

    :param policy_lag: K >= 0, how many updates old the behaviour policy is (0 = stock PPO)
    :param lag_mode: ``fixed`` (every step K updates old), ``uniform`` (each rollout draws its lag from 0..K),
        ``per-env`` (environment i has lag round(i*K/(n_envs-1)), like actors of different speed; K if n_envs=1) or
        ``empirical`` (each rollout draws its lag from 0..K with probabilities proportional to ``lag_weights``, e.g.
        an asynchronous run's measured lags; :mod:`agents.behavior`)
    :param lag_weights: ``empirical`` mode only (and required there): the weights of lags 0..K, K + 1 numbers >= 0
        whose last is > 0 (counts or probabilities, normalised), e.g. ``[12, 30, 8]`` with ``policy_lag=2``
    :param would_bound_c: c used only by the ``train/dual_clip_would_bound`` diagnostic (share of samples with
        A<0 and r>c), so vanilla runs show how often dual-clip would have acted; it does not change the loss.
    :param behavior_temperature: tau > 0: whoever acts samples from its distribution tempered by tau (Gaussian std
        x tau, logits / tau; see :mod:`agents.behavior`); 1 = the policy itself (default, stock sampling)
    :param temperature_mode: ``fixed`` (every environment tau) or ``per-env`` (environment i of n gets
        tau**(i/(n-1)), from 1 to tau, like actors that explore by different amounts)
    """

    #: the arm's objective (:mod:`agents.objectives`), built from the model's attributes named like its fields
    objective_class: Type[Objective] = ClippedSurrogate

    def __init__(
        self,
        policy: Any,
        env: Any,
        *,
        policy_lag: int = 0,
        lag_mode: str = "fixed",
        lag_weights: Optional[Sequence[float]] = None,
        would_bound_c: float = 3.0,
        behavior_temperature: float = 1.0,
        temperature_mode: str = "fixed",
        **kwargs: Any,
    ) -> None:
        check_lag_args(policy_lag, lag_mode, lag_weights)
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
        self.lag_weights = None if lag_weights is None else [float(w) for w in lag_weights]
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
        # Built from the saved settings (PPO.load restores attributes, then calls _setup_model), never saved.
        # A model.zip written before the behaviour policies were one component holds their lag generator as
        # _lag_rng (and two derived arrays): a checkpoint of such a run resumes with it.
        old_rng = self.__dict__.pop("_lag_rng", None)
        for derived in ("_temperatures", "_last_rollout_lags"):
            self.__dict__.pop(derived, None)
        temperatures = env_temperatures(self.behavior_temperature, self.temperature_mode, self.n_envs)
        rng = old_rng if old_rng is not None else np.random.default_rng(self.seed)
        self.behavior = BehaviorPolicies(self.policy_lag, self.lag_mode, temperatures, rng, self.device,
                                         lag_weights=self.lag_weights)
        self.learner_pass = LearnerPass(self.action_space, self.device)
        self.objective = self._make_objective()
        # PPO-EWMA's average of the learner (agents/ewma.py) when the objective reads pi_prox from it; its state goes
        # into checkpoints
        beta = self.objective.ewma_beta
        self.prox_ewma: Optional[ProximalEWMA] = None if beta is None else ProximalEWMA(beta)
        self._refresh_fast_path()

    def _keep_settings(self, **settings: Any) -> None:
        """Keep the objective's settings as attributes (saved in model.zip, read by :meth:`_make_objective`), after
        building the objective once: a bad value raises ValueError naming it before SB3 builds anything."""
        self.objective_class(**settings)
        for name, value in settings.items():
            setattr(self, name, value)

    def _make_objective(self) -> Objective:
        """The arm's policy term: ``objective_class`` with the model's attributes of its fields' names (the
        settings kept by :meth:`_keep_settings`, and ``n_steps``)."""
        return self.objective_class(**{f.name: getattr(self, f.name) for f in fields(self.objective_class)})

    def _refresh_fast_path(self) -> None:
        """Pick the fast Gaussian path when the policy is SB3's own (see :func:`has_fast_gaussian`)."""
        self._fast: Optional[ActorCriticPolicy] = self.policy if has_fast_gaussian(self.policy) else None

    def _excluded_save_params(self) -> List[str]:
        # The behaviour policies, the learner's pass and the objective are rebuilt by _setup_model; the lag
        # snapshots and generator are training state and go into checkpoints (agents/checkpoint.py), as do the seed
        # batch's random-stream states (agents/seed_batch.py). An asynchronous run's rollouts come from actors
        # (agents/asynchronous.py), which put their collect_rollouts on the instance: never saved either.
        return super()._excluded_save_params() + ["behavior", "learner_pass", "objective", "prox_ewma", "_fast",
                                                  "_seed_batch_rng", "collect_rollouts"]

    def _evaluate_actions(self, obs: th.Tensor, actions: th.Tensor) -> Tuple[th.Tensor, th.Tensor, Optional[th.Tensor]]:
        if self._fast_ok():
            return fast_evaluate_actions(self.policy, obs, actions)
        return self.policy.evaluate_actions(obs, actions)

    def _fast_ok(self) -> bool:
        return getattr(self, "_fast", None) is not None and self._fast is self.policy

    # ------------------------------------------------------------------------------------------- rollouts
    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """SB3's ``collect_rollouts`` with the actions drawn from the behaviour policies (``self.behavior``).

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

        # LAG: who acts for each environment this rollout (capped at the oldest snapshot held). After
        # on_rollout_start, where checkpoints are written: a resumed run draws this rollout's lag again.
        lags = self.behavior.start_rollout()
        self.learner_pass.forget()  # LAG

        while n_steps < n_rollout_steps:
            if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
                self.policy.reset_noise(env.num_envs)

            with th.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                actions, values, log_probs = self.behavior.act(self.policy, obs_tensor, self._fast_ok())  # LAG: log mu
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

        if lags.any():  # LAG: values from the learner's critic, one batched pass instead of one per step
            rollout_buffer.values[:] = self.learner_pass.values(self.policy, rollout_buffer)
        self.behavior.end_rollout(self.policy)  # LAG: this rollout's learner becomes the newest snapshot
        self.logger.record("rollout/policy_lag", float(lags.mean()))  # LAG: the lag the data actually had
        self.logger.record("rollout/behavior_temperature", float(self.behavior.temperatures.mean()))  # LAG: their tau

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

    # ------------------------------------------------------------------------------ start-of-update quantities
    def _discrete_actions(self, actions: th.Tensor) -> th.Tensor:
        return actions.long().flatten() if isinstance(self.action_space, spaces.Discrete) else actions

    @th.no_grad()
    def _learner_log_probs(self) -> th.Tensor:
        """log pi_theta(a|s) of the learner for every stored step (flat, step-major) from the learner's pass; not
        computed when the learner itself acted the whole rollout untempered (then it is log mu, see
        :meth:`_prox_log_probs`)."""
        buf = self.rollout_buffer
        if self.behavior.fresh().all():
            return th.as_tensor(buf.log_probs.reshape(-1).copy(), device=self.device)
        return self.learner_pass.log_probs(self.policy, buf, self._fast_ok())

    def _prox_log_probs(self, log_prob: th.Tensor) -> th.Tensor:
        """The learner's log-probs as pi_prox, returned flat (step-major) and written into the buffer's
        ``prox_log_probs`` when someone reads them there (an objective that ``needs_prox``, or early stopping with
        ``target_kl``). Where the data were acted with lag 0 and temperature 1 the learner *was* the behaviour
        policy: log mu is used verbatim there (a batched recomputation can differ from it in the last float bit)."""
        buf = self.rollout_buffer
        fresh = self.behavior.fresh()
        prox = log_prob.detach().cpu().numpy().reshape(buf.buffer_size, buf.n_envs).copy()
        prox[:, fresh] = buf.log_probs[:, fresh]
        if self.objective.needs_prox or self.target_kl is not None:
            buf.prox_log_probs[:] = prox  # type: ignore[attr-defined]
        return th.as_tensor(prox.reshape(-1), device=log_prob.device)

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

    # ------------------------------------------------------------------------------------------------ update
    def _proximal(self, data: Any, actions: th.Tensor) -> Any:
        """The minibatch as the objective reads it: unchanged, or with PPO-EWMA (``self.prox_ewma``) its
        ``prox_log_prob`` replaced by the average's log-probs as they are now (openai/ppo-ewma evaluates its EWMA
        network in every minibatch, ``ppo_ewma/ppo.py`` ``compute_losses``)."""
        if self.prox_ewma is None:
            return data
        return data._replace(prox_log_prob=self.prox_ewma.log_prob(self.policy, data.observations, actions,
                                                                   self._fast_ok()))

    def _policy_term(
        self, data: Any, log_prob: th.Tensor, advantages: th.Tensor, clip_range: float
    ) -> Tuple[th.Tensor, Dict[str, th.Tensor]]:
        """The arm's policy term of one minibatch and its metrics (``self.objective``)."""
        return self.objective.policy_term(data, log_prob, advantages, clip_range)

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

        The policy term comes from ``_policy_term`` (the arm's objective, :mod:`agents.objectives`); metrics are
        kept as tensors and averaged (in float64, as SB3's ``np.mean`` of floats) with one host synchronisation at
        the end of the update instead of five per minibatch; the Gaussian maths runs on the fast path
        (:func:`fast_evaluate_actions`). Same operations in the same order: bit-identical to stock SB3.
        """
        # OURS: the learner's log-probs of every stored step, once per update: pi_prox (for the objective or early
        # stopping, which read it from the minibatches) and measured against log mu for the lag diagnostics
        self._log_lag_diagnostics(self._prox_log_probs(self._learner_log_probs()))
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
                    self._proximal(rollout_data, actions), values.flatten(), log_prob, entropy, clip_range,
                    clip_range_vf,  # OURS: PPO-EWMA's pi_prox of this minibatch (early stopping keeps the start's)
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
                if self.prox_ewma is not None:  # OURS: PPO-EWMA's average takes in the new parameters
                    self.prox_ewma.update(self.policy)

            self._n_updates += 1
            if not continue_training:
                break

        self._record_update(metrics, approx_kl_divs, loss, clip_range, clip_range_vf)  # OURS: SB3's logging lines

    def _record_update(self, metrics: Dict[str, List[th.Tensor]], approx_kl_divs: List[th.Tensor], loss: th.Tensor,
                       clip_range: float, clip_range_vf: Optional[float]) -> None:
        """The end of SB3's ``PPO.train``: the update's ``train/*`` values (the seed batch calls it per seed)."""
        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

        # OURS: one host sync for all metrics, each over all minibatches and epochs: the maximum for the
        # objective's max_metrics, the mean for the others
        for key, values_list in metrics.items():
            reduce = _max if key in self.objective.max_metrics else _mean
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
