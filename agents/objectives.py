"""The arms' objectives: the one part of an update in which ppo, dualclip and decoupled differ.

Every arm trains on the same data with the same trainer (:class:`agents.lagged.LaggedPPO`: snapshots act, the
buffer stores log mu, SB3's ``PPO.train`` runs the update). In each minibatch the trainer asks the arm's objective
for the *policy term* (the loss to minimise and its diagnostics); the value and entropy terms, advantage
normalisation, gradient clipping and the optimizer are SB3's and shared. An objective declares

- ``needs_prox``: whether it reads ``data.prox_log_prob``, the learner's log-probs of the stored actions at the
  start of the update (pi_prox). The trainer stores them in the rollout buffer only when someone reads them (this
  objective, or early stopping with ``target_kl``); an objective whose ``ewma_beta`` is not None gets instead, in
  every minibatch, the log-probs of PPO-EWMA's moving average of the learner (:mod:`agents.ewma`);
- ``max_metrics``: which of its metrics are logged as their maximum over the update's minibatches (all others are
  logged as their mean over every minibatch of every epoch).

Objectives hold settings only (no parameters, no state) and are rebuilt by the trainer from its saved settings
(``LaggedPPO._setup_model``), so a loaded model has the objective it was trained with.

Adding an arm:

1. an :class:`Objective` subclass, a frozen dataclass whose fields are its settings (here or in its own module);
2. a thin ``LaggedPPO`` subclass that names it as ``objective_class`` and whose ``__init__`` takes the settings as
   documented keyword arguments and keeps them with ``_keep_settings`` (see :class:`agents.dualclip.DualClipPPO`);
3. its id in ``agents.options.ALGO_IDS`` and one line in ``agents.ALGOS``.

Then ``train.py --algo <id>`` runs it: its settings are set with ``-params key:value`` (the dedicated flags
``--dual-clip``, ``--loss-agg-mode``, ``--is-weight-*`` apply to any arm that takes those arguments), a seed batch
compares the objectives of its seeds, and sweeps accept it as a grid value. Optional: a short label for a new
setting in ``studies/grid.py`` ``LABELS`` (run names) and its default in ``studies/report.py`` ``ARM_DEFAULTS``
(so records that omit it group with those that give the default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, FrozenSet, Optional, Tuple

import torch as th

from agents.ewma import PROX_EWMA_BETA, check_prox, check_prox_ewma_beta
from agents.losses import (
    check_clip_range,
    check_dual_clip,
    check_is_weight_max,
    check_is_weight_mode,
    check_loss_agg_mode,
    compute_decoupled_policy_loss,
    compute_policy_loss,
    pack_segments,
)

PolicyTerm = Tuple[th.Tensor, Dict[str, th.Tensor]]


@dataclass(frozen=True)
class Objective:
    """The policy term of one arm (see the module docstring). Its fields are its settings: objectives with equal
    settings are equal (a seed batch only batches models whose objectives are equal)."""

    #: whether :meth:`policy_term` reads ``data.prox_log_prob`` (pi_prox, the learner at the start of the update)
    needs_prox: ClassVar[bool] = False
    #: metrics logged as their maximum over an update's minibatches (all others: their mean)
    max_metrics: ClassVar[FrozenSet[str]] = frozenset()

    @property
    def ewma_beta(self) -> Optional[float]:
        """beta_prox when ``data.prox_log_prob`` is to come from PPO-EWMA's average (:mod:`agents.ewma`, read in every
        minibatch), else None (the learner at the start of the update)."""
        return None

    def policy_term(self, data: Any, log_prob: th.Tensor, advantages: th.Tensor, clip_range: float) -> PolicyTerm:
        """The loss of one minibatch and its metrics, as tensors (no host sync, no data-dependent branch: the seed
        batch runs it under ``torch.func.vmap``).

        :param data: the minibatch (:class:`agents.buffer.LaggedRolloutBufferSamples`); ``old_log_prob`` is log mu
        :param log_prob: log pi_theta of the minibatch's actions (with gradient)
        :param advantages: the advantages as the loss sees them (normalised per minibatch when SB3 does)
        :param clip_range: epsilon at this point of the schedule
        """
        raise NotImplementedError


@dataclass(frozen=True)
class ClippedSurrogate(Objective):
    """``ppo``: SB3's clipped surrogate, its lines verbatim (no clamp of the log-ratio before ``exp``), so the arm is
    stock SB3 PPO on lagged data. Its only metric is SB3's own ``clip_fraction``, which the trainer computes."""

    def policy_term(self, data: Any, log_prob: th.Tensor, advantages: th.Tensor, clip_range: float) -> PolicyTerm:
        ratio = th.exp(log_prob - data.old_log_prob)
        policy_loss_1 = advantages * ratio
        policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
        policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()
        return policy_loss, {}


@dataclass(frozen=True)
class DualClip(Objective):
    """``dualclip``: :func:`agents.losses.compute_policy_loss` (verl's semantics: the log-ratio clamped to +-10, then
    the clipped surrogate, bounded at c*A for A<0 when ``dual_clip`` is set; ``None`` leaves the vanilla clip).

    :param dual_clip: c > 1, or None for no bound
    :param clip_range_low: lower epsilon (ratio floor 1 - clip_range_low); None: the clip range
    :param clip_range_high: upper epsilon (ratio ceiling 1 + clip_range_high); None: the clip range
    :param loss_agg_mode: ``token-mean`` (SB3's mean over the minibatch) or a ``seq-*`` mode, in which each episode
        segment inside a minibatch is one sequence (the part of one episode that one environment played within
        this rollout; segments are at most ``n_steps`` long)
    :param n_steps: the rollout length, the longest possible segment
    """

    dual_clip: Optional[float] = 3.0
    clip_range_low: Optional[float] = None
    clip_range_high: Optional[float] = None
    loss_agg_mode: str = "token-mean"
    n_steps: int = 2048

    max_metrics: ClassVar[FrozenSet[str]] = frozenset({"ratio_max_minibatch"})

    def __post_init__(self) -> None:
        check_dual_clip(self.dual_clip)
        check_clip_range("clip_range_low", self.clip_range_low)
        check_clip_range("clip_range_high", self.clip_range_high)
        check_loss_agg_mode(self.loss_agg_mode)

    def _per_sequence(self, data: Any, *tensors: th.Tensor) -> Tuple[Tuple[th.Tensor, ...], Optional[th.Tensor]]:
        """``tensors`` as the loss takes them: flat for token-mean, one row per episode segment for the seq modes."""
        if self.loss_agg_mode == "token-mean":
            return tensors, None
        return pack_segments(data.segment_ids, tensors, self.n_steps)

    def _clip_options(self, clip_range: float) -> Dict[str, Any]:
        return dict(clip_range=clip_range, clip_range_low=self.clip_range_low, clip_range_high=self.clip_range_high,
                    dual_clip=self.dual_clip, loss_agg_mode=self.loss_agg_mode)

    @staticmethod
    def _clip_metrics(out: Any) -> Dict[str, th.Tensor]:
        """The metrics every loss of :mod:`agents.losses` reports (verl's names, ``train/*`` in TensorBoard)."""
        return {
            "pg_clipfrac": out.clip_fraction,
            "pg_clipfrac_lower": out.clip_fraction_lower,
            "ppo_kl": out.approx_kl,
            "ratio_max_minibatch": out.ratio_max,
        }

    def policy_term(self, data: Any, log_prob: th.Tensor, advantages: th.Tensor, clip_range: float) -> PolicyTerm:
        (old, new, adv), mask = self._per_sequence(data, data.old_log_prob, log_prob, advantages)
        out = compute_policy_loss(old, new, adv, mask, **self._clip_options(clip_range))
        return out.loss, self._clip_metrics(out)


@dataclass(frozen=True)
class Decoupled(DualClip):
    """``decoupled``: :func:`agents.losses.compute_decoupled_policy_loss`, the clip against pi_prox and the weight
    pi_prox / mu (Hilton et al. 2021; AReaL). It is :class:`DualClip`'s term anchored at pi_prox instead of mu and
    weighted, so it takes the same clip settings (the bound c, off by default here, acts on the proximal term).

    :param is_weight_max: w_max, the cap on pi_prox / mu
    :param is_weight_mode: ``truncate`` (weights above w_max become w_max) or ``filter`` (those steps get weight 0)
    :param prox: which policy is pi_prox: ``start`` (the learner at the start of the update) or ``ewma`` (PPO-EWMA,
        the paper's own: a moving average of the learner's parameters, read in every minibatch; :mod:`agents.ewma`)
    :param prox_ewma_beta: beta_prox, the average's decay per optimiser step (read only with ``prox="ewma"``)
    """

    dual_clip: Optional[float] = None
    is_weight_max: float = 100.0
    is_weight_mode: str = "truncate"
    prox: str = "start"
    prox_ewma_beta: float = PROX_EWMA_BETA

    needs_prox: ClassVar[bool] = True
    max_metrics: ClassVar[FrozenSet[str]] = DualClip.max_metrics | {"is_weight_max"}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_is_weight_max(self.is_weight_max)
        check_is_weight_mode(self.is_weight_mode)
        check_prox(self.prox)
        check_prox_ewma_beta(self.prox_ewma_beta)

    @property
    def ewma_beta(self) -> Optional[float]:
        return self.prox_ewma_beta if self.prox == "ewma" else None

    def policy_term(self, data: Any, log_prob: th.Tensor, advantages: th.Tensor, clip_range: float) -> PolicyTerm:
        (old, prox, new, adv), mask = self._per_sequence(data, data.old_log_prob, data.prox_log_prob, log_prob,
                                                         advantages)
        out = compute_decoupled_policy_loss(old, prox, new, adv, mask, is_weight_max=self.is_weight_max,
                                            is_weight_mode=self.is_weight_mode, **self._clip_options(clip_range))
        return out.loss, {
            **self._clip_metrics(out),
            "is_weight_mean": out.is_weight_mean,
            "is_weight_max": out.is_weight_max,
            "is_weight_truncated": out.is_weight_truncated,
            "is_weight_filtered": out.is_weight_filtered,
            "is_ess": out.is_ess,
        }
