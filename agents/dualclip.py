"""DualClipPPO: SB3's PPO update with the policy term from :func:`agents.losses.compute_policy_loss`.

``train()`` follows stable-baselines3 2.x ``PPO.train`` line for line; the lines that differ are marked
``# OURS``: the policy term comes from ``_policy_term`` (the pure-torch loss), and metrics are accumulated as
tensors and averaged over all minibatches and epochs with one host synchronisation at the end.
With ``dual_clip=None``, ``policy_lag=0`` and ``loss_agg_mode="token-mean"`` it trains bit-identically to
stock PPO (tests/test_equivalence.py).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch as th
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from agents.buffer import LaggedRolloutBufferSamples
from agents.lagged import LaggedPPO, check_clip_range
from agents.losses import LOSS_AGG_MODES, _check_dual_clip, compute_policy_loss, pack_segments


class DualClipPPO(LaggedPPO):
    """PPO with the dual-clip bound (Ye et al. 2019) on the same lag machinery as :class:`LaggedPPO`.

    :param dual_clip: c > 1: for A<0 the objective never drops below c*A (paper: 3.0). None = vanilla PPO.
    :param clip_range_low: lower epsilon (ratio floor 1 - clip_range_low); defaults to ``clip_range``
    :param clip_range_high: upper epsilon (ratio ceiling 1 + clip_range_high); defaults to ``clip_range``
    :param loss_agg_mode: ``token-mean`` (default, SB3's mean over the minibatch) or one of the ``seq-*`` modes of
        :func:`agents.losses.agg_loss`, where each episode segment inside a minibatch is one sequence (a segment
        is the part of one episode that one environment played within this rollout); ``T`` is ``n_steps``.
    :param kwargs: everything :class:`LaggedPPO` and SB3's ``PPO`` accept
    """

    def __init__(
        self,
        policy: Any,
        env: Any,
        *,
        dual_clip: Optional[float] = 3.0,
        clip_range_low: Optional[float] = None,
        clip_range_high: Optional[float] = None,
        loss_agg_mode: str = "token-mean",
        **kwargs: Any,
    ) -> None:
        _check_dual_clip(dual_clip)
        if loss_agg_mode not in LOSS_AGG_MODES:
            raise ValueError(f"loss_agg_mode={loss_agg_mode!r} is unknown: choose one of {', '.join(LOSS_AGG_MODES)}")
        check_clip_range("clip_range_low", clip_range_low)
        check_clip_range("clip_range_high", clip_range_high)
        self.dual_clip = dual_clip
        self.clip_range_low = clip_range_low
        self.clip_range_high = clip_range_high
        self.loss_agg_mode = loss_agg_mode
        kwargs.setdefault("would_bound_c", 3.0 if dual_clip is None else dual_clip)
        super().__init__(policy, env, **kwargs)

    def _policy_term(
        self, data: LaggedRolloutBufferSamples, log_prob: th.Tensor, advantages: th.Tensor, clip_range: float
    ) -> Tuple[th.Tensor, Dict[str, th.Tensor]]:
        """The policy loss of one minibatch and its diagnostics (tensors, no host sync)."""
        old, new, adv, mask = data.old_log_prob, log_prob, advantages, None
        if self.loss_agg_mode != "token-mean":
            (old, new, adv), mask = pack_segments(data.segment_ids, (old, new, adv), self.n_steps)
        out = compute_policy_loss(
            old,
            new,
            adv,
            mask,
            clip_range=clip_range,
            clip_range_low=self.clip_range_low,
            clip_range_high=self.clip_range_high,
            dual_clip=self.dual_clip,
            loss_agg_mode=self.loss_agg_mode,
        )
        return out.loss, {
            "pg_clipfrac": out.clip_fraction,
            "pg_clipfrac_lower": out.clip_fraction_lower,
            "ppo_kl": out.approx_kl,
            "ratio_max_minibatch": out.ratio_max,
        }

    def train(self) -> None:
        """SB3's ``PPO.train`` with the policy term from ``_policy_term`` (see module docstring)."""
        self._log_lag_diagnostics()  # OURS: lag diagnostics at the start of the update
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]

        metrics: Dict[str, List[th.Tensor]] = defaultdict(list)  # OURS: every metric, every minibatch
        approx_kl_divs: List[th.Tensor] = []
        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []  # SB3 reports approx_kl of the last epoch only; kept for overlaying curves
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = self._discrete_actions(rollout_data.actions)

                values, log_prob, entropy = self.policy.evaluate_actions(rollout_data.observations, actions)
                values = values.flatten()
                advantages = rollout_data.advantages
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                # OURS: the policy term; SB3's clip_fraction keeps SB3's definition
                policy_loss, pg_metrics = self._policy_term(rollout_data, log_prob, advantages, clip_range)
                with th.no_grad():
                    ratio = th.exp(log_prob - rollout_data.old_log_prob)
                    metrics["clip_fraction"].append(th.mean((th.abs(ratio - 1) > clip_range).float()))
                for key, value in pg_metrics.items():
                    metrics[key].append(value)
                metrics["policy_gradient_loss"].append(policy_loss.detach())

                if self.clip_range_vf is None:
                    values_pred = values
                else:
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                value_loss = F.mse_loss(rollout_data.returns, values_pred)
                metrics["value_loss"].append(value_loss.detach())

                if entropy is None:
                    entropy_loss = -th.mean(-log_prob)
                else:
                    entropy_loss = -th.mean(entropy)
                metrics["entropy_loss"].append(entropy_loss.detach())

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio)
                    approx_kl_divs.append(approx_kl_div)

                # OURS: host sync only when early stopping needs the value
                if self.target_kl is not None and approx_kl_div.item() > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div.item():.2f}")
                    break

                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()

            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

        # OURS: one host sync for all metrics, each averaged over all minibatches and epochs
        for key, values_list in metrics.items():
            self.logger.record(f"train/{key}", th.stack(values_list).mean().item())
        if approx_kl_divs:
            self.logger.record("train/approx_kl", th.stack(approx_kl_divs).mean().item())
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
