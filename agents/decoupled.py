"""DecoupledPPO: clip against a proximal policy, importance-weight against the behaviour policy.

Hilton, Cobbe & Schulman 2021, "Batch size-invariance for policy optimization" (arXiv 2110.00641, code
openai/ppo-ewma). Under policy lag, vanilla PPO anchors both its ratio and its trust region at the stale
behaviour policy mu. Decoupled PPO gives the two jobs to two policies::

    loss = w * max(-A * r', -A * clip(r', 1 - eps, 1 + eps)),   r' = pi_theta / pi_prox,   w = min(pi_prox / mu, w_max)

The proximal policy pi_prox is the learner at the start of ``train()``: its log-probs are computed once per
update, batched, without gradient (``LaggedPPO._store_prox_log_probs``). For steps acted with lag 0 the proximal
policy *is* the behaviour policy, so log mu is used for it verbatim and the update is bit-identical to stock
PPO. ``--dual-clip`` composes: the unweighted proximal term is bounded at c*A for A<0 before weighting.

Differences from openai/ppo-ewma: there the truncation ``imp_samp_max=100`` applies to pi_theta/mu (through an
adjusted log mu); here it applies to the gradient-free weight pi_prox/mu (the formula above), with the
same default of 100. The EWMA proximal policy of the paper is not implemented (the proximal policy is the learner).

``is_weight_mode="filter"`` is how AReaL (arXiv 2505.24298) runs the objective: a step whose weight pi_prox/mu
exceeds the cap (AReaL's ``behav_imp_weight_cap``, e.g. 5) gets weight 0 instead of w_max, so it drops out of the
policy loss (the share dropped is logged as ``train/is_weight_filtered``); AReaL's ``c_clip`` is our ``dual_clip``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch as th

from agents.buffer import LaggedRolloutBufferSamples
from agents.dualclip import DualClipPPO
from agents.losses import check_is_weight_max, check_is_weight_mode, compute_decoupled_policy_loss


class DecoupledPPO(DualClipPPO):
    """Decoupled PPO on the lag machinery of :class:`~agents.lagged.LaggedPPO`.

    :param is_weight_max: w_max, the cap on the importance weight pi_prox/mu (default 100, as openai/ppo-ewma)
    :param is_weight_mode: ``truncate`` (default: weights above w_max become w_max, as openai/ppo-ewma) or ``filter``
        (AReaL's ``behav_imp_weight_cap``: steps whose weight exceeds w_max drop out of the policy loss)
    :param dual_clip: optional dual-clip bound c > 1 on the proximal term (default None: off)
    :param kwargs: everything :class:`~agents.dualclip.DualClipPPO` accepts
    """

    MAX_METRICS = DualClipPPO.MAX_METRICS | {"is_weight_max"}

    def __init__(
        self,
        policy: Any,
        env: Any,
        *,
        is_weight_max: float = 100.0,
        is_weight_mode: str = "truncate",
        dual_clip: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        check_is_weight_max(is_weight_max)
        check_is_weight_mode(is_weight_mode)
        self.is_weight_max = float(is_weight_max)
        self.is_weight_mode = is_weight_mode
        super().__init__(policy, env, dual_clip=dual_clip, **kwargs)

    def _policy_term(
        self, data: LaggedRolloutBufferSamples, log_prob: th.Tensor, advantages: th.Tensor, clip_range: float
    ) -> Tuple[th.Tensor, Dict[str, th.Tensor]]:
        (old, prox, new, adv), mask = self._per_sequence(data, data.old_log_prob, data.prox_log_prob, log_prob, advantages)
        out = compute_decoupled_policy_loss(
            old, prox, new, adv, mask, is_weight_max=self.is_weight_max, is_weight_mode=self.is_weight_mode,
            **self._loss_options(clip_range),
        )
        return out.loss, {
            **self._pg_metrics(out),
            "is_weight_mean": out.is_weight_mean,
            "is_weight_max": out.is_weight_max,
            "is_weight_truncated": out.is_weight_truncated,
            "is_weight_filtered": out.is_weight_filtered,
            "is_ess": out.is_ess,
        }
