"""DualClipPPO: SB3's PPO update with the policy term from :func:`agents.losses.compute_policy_loss`.

``train()`` is :meth:`agents.lagged.LaggedPPO.train`, which follows stable-baselines3 2.x ``PPO.train`` line for
line (lines that differ are marked ``# OURS``); here only the policy term differs: ``_policy_term`` returns the
pure-torch loss of :func:`agents.losses.compute_policy_loss` and its metrics (averaged over all minibatches and
epochs with one host synchronisation at the end).
With ``dual_clip=None``, ``policy_lag=0`` and ``loss_agg_mode="token-mean"`` it trains bit-identically to
stock PPO (tests/test_agents.py::test_lag0_bit_identical_to_stock_sb3).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch as th

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

    MAX_METRICS = frozenset({"ratio_max_minibatch"})

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

    def _per_sequence(self, data: LaggedRolloutBufferSamples, *tensors: th.Tensor) -> Tuple[Tuple[th.Tensor, ...], Optional[th.Tensor]]:
        """``tensors`` as the loss takes them: flat for token-mean, one row per episode segment for the seq modes."""
        if self.loss_agg_mode == "token-mean":
            return tensors, None
        return pack_segments(data.segment_ids, tensors, self.n_steps)

    def _loss_options(self, clip_range: float) -> Dict[str, Any]:
        return dict(
            clip_range=clip_range,
            clip_range_low=self.clip_range_low,
            clip_range_high=self.clip_range_high,
            dual_clip=self.dual_clip,
            loss_agg_mode=self.loss_agg_mode,
        )

    def _policy_term(
        self, data: LaggedRolloutBufferSamples, log_prob: th.Tensor, advantages: th.Tensor, clip_range: float
    ) -> Tuple[th.Tensor, Dict[str, th.Tensor]]:
        """The policy loss of one minibatch and its diagnostics (tensors, no host sync)."""
        (old, new, adv), mask = self._per_sequence(data, data.old_log_prob, log_prob, advantages)
        out = compute_policy_loss(old, new, adv, mask, **self._loss_options(clip_range))
        return out.loss, self._pg_metrics(out)

    @staticmethod
    def _pg_metrics(out: Any) -> Dict[str, th.Tensor]:
        """The ``train/*`` metrics every loss of :mod:`agents.losses` reports (logged as their mean over minibatches
        and epochs; ``ratio_max_minibatch`` as the maximum)."""
        return {
            "pg_clipfrac": out.clip_fraction,
            "pg_clipfrac_lower": out.clip_fraction_lower,
            "ppo_kl": out.approx_kl,
            "ratio_max_minibatch": out.ratio_max,
        }
