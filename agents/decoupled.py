"""DecoupledPPO: clip against a proximal policy, importance-weight against the behaviour policy.

Hilton, Cobbe & Schulman 2021, "Batch size-invariance for policy optimization" (arXiv 2110.00641, code
openai/ppo-ewma). Under policy lag, vanilla PPO anchors both its ratio and its trust region at the stale
behaviour policy mu. Decoupled PPO gives the two jobs to two policies::

    loss = w * max(-A * r', -A * clip(r', 1 - eps, 1 + eps)),   r' = pi_theta / pi_prox,   w = min(pi_prox / mu, w_max)

The proximal policy pi_prox is the learner at the start of ``train()``: its log-probs come from the learner's
batched pass over the rollout (:class:`agents.learner_pass.LearnerPass`), once per update, without gradient, and
the trainer stores them in the buffer because this objective declares ``needs_prox``. For steps acted with lag 0
and temperature 1 the proximal policy *is* the behaviour policy, so log mu is used for it verbatim and the update
is bit-identical to stock PPO. ``dual_clip`` composes: the unweighted proximal term is bounded at c*A for A<0
before weighting.

Differences from openai/ppo-ewma: there the truncation ``imp_samp_max=100`` applies to pi_theta/mu (through an
adjusted log mu); here it applies to the gradient-free weight pi_prox/mu (the formula above), with the
same default of 100.

``prox`` chooses pi_prox. ``start`` (default): the learner at the start of the update, as above. ``ewma``: the paper's
own method, PPO-EWMA: an exponentially weighted moving average of the learner's (actor) parameters, taking in the
parameters after every optimiser step with decay ``prox_ewma_beta`` (beta_prox, default 0.889) and debiased as in
openai/ppo-ewma, and read in every minibatch (:mod:`agents.ewma`; docs/ppo_ewma.md for the parametrisation, the
default's source and the cost). Early stopping (``target_kl``) and the lag diagnostics still measure against the
learner at the start of the update.

``is_weight_mode="filter"`` is how AReaL (arXiv 2505.24298) runs the objective: a step whose weight pi_prox/mu
exceeds the cap (AReaL's ``behav_imp_weight_cap``, e.g. 5) gets weight 0 instead of w_max, so it drops out of the
policy loss (the share dropped is logged as ``train/is_weight_filtered``); AReaL's ``c_clip`` is our ``dual_clip``.
Which to choose: in the decoupled-stability part of ``results/mujoco_study/`` (HalfCheetah-v4, lags 4, 8 and 16,
five seeds each) no mode, cap or dual clip was shown better than the default truncation at 100; filtering at 2 was
the only configuration that ended every run within 274 of its best evaluation (weak evidence: see there).
"""

from __future__ import annotations

from typing import Any, Optional

from agents.ewma import PROX_EWMA_BETA
from agents.lagged import LaggedPPO
from agents.objectives import Decoupled


class DecoupledPPO(LaggedPPO):
    """Decoupled PPO on the lag machinery of :class:`~agents.lagged.LaggedPPO`.

    :param is_weight_max: w_max, the cap on the importance weight pi_prox/mu (default 100, as openai/ppo-ewma)
    :param is_weight_mode: ``truncate`` (default: weights above w_max become w_max, as openai/ppo-ewma) or ``filter``
        (AReaL's ``behav_imp_weight_cap``: steps whose weight exceeds w_max drop out of the policy loss)
    :param dual_clip: optional dual-clip bound c > 1 on the proximal term (default None: off)
    :param clip_range_low: lower epsilon of the clip against pi_prox; defaults to ``clip_range``
    :param clip_range_high: upper epsilon of the clip against pi_prox; defaults to ``clip_range``
    :param prox: pi_prox: ``start`` (default: the learner at the start of each update) or ``ewma`` (PPO-EWMA: the
        moving average of the learner's actor parameters, read in every minibatch; :mod:`agents.ewma`)
    :param prox_ewma_beta: beta_prox in [0, 1), the average's decay per optimiser step (default 0.889, the paper's;
        its mean age is beta / (1 - beta) optimiser steps); read only with ``prox="ewma"``
    :param loss_agg_mode: as :class:`~agents.dualclip.DualClipPPO`'s
    :param kwargs: everything :class:`LaggedPPO` and SB3's ``PPO`` accept
    """

    objective_class = Decoupled

    def __init__(
        self,
        policy: Any,
        env: Any,
        *,
        is_weight_max: float = 100.0,
        is_weight_mode: str = "truncate",
        prox: str = "start",
        prox_ewma_beta: float = PROX_EWMA_BETA,
        dual_clip: Optional[float] = None,
        clip_range_low: Optional[float] = None,
        clip_range_high: Optional[float] = None,
        loss_agg_mode: str = "token-mean",
        **kwargs: Any,
    ) -> None:
        self._keep_settings(dual_clip=dual_clip, clip_range_low=clip_range_low, clip_range_high=clip_range_high,
                            loss_agg_mode=loss_agg_mode, is_weight_max=is_weight_max, is_weight_mode=is_weight_mode,
                            prox=prox, prox_ewma_beta=prox_ewma_beta)
        kwargs.setdefault("would_bound_c", 3.0 if dual_clip is None else dual_clip)
        super().__init__(policy, env, **kwargs)
