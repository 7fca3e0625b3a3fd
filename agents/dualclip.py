"""DualClipPPO: the lagged SB3 PPO of :mod:`agents.lagged` with the dual-clip policy term.

The trainer is :class:`agents.lagged.LaggedPPO` unchanged; the policy term of each minibatch is the
:class:`agents.objectives.DualClip` objective, i.e. :func:`agents.losses.compute_policy_loss` (verl's semantics).
With ``dual_clip=None``, ``policy_lag=0`` and ``loss_agg_mode="token-mean"`` it trains bit-identically to
stock PPO (tests/test_agents.py::test_lag0_bit_identical_to_stock_sb3).
"""

from __future__ import annotations

from typing import Any, Optional

from agents.lagged import LaggedPPO
from agents.objectives import DualClip


class DualClipPPO(LaggedPPO):
    """PPO with the dual-clip bound (Ye et al. 2019) on the same lag machinery as :class:`LaggedPPO`.

    The whole arm: its objective class and its settings as documented keyword arguments.

    :param dual_clip: c > 1: for A<0 the objective never drops below c*A (paper: 3.0). None = vanilla PPO (our loss
        module: the log-ratio is clamped to +-10 before ``exp``, as verl does; ``LaggedPPO`` runs SB3's own lines)
    :param clip_range_low: lower epsilon (ratio floor 1 - clip_range_low); defaults to ``clip_range``
    :param clip_range_high: upper epsilon (ratio ceiling 1 + clip_range_high); defaults to ``clip_range``
    :param loss_agg_mode: ``token-mean`` (default, SB3's mean over the minibatch) or one of the ``seq-*`` modes of
        :func:`agents.losses.agg_loss`, where each episode segment inside a minibatch is one sequence (a segment
        is the part of one episode that one environment played within this rollout); ``T`` is ``n_steps``.
    :param kwargs: everything :class:`LaggedPPO` and SB3's ``PPO`` accept
    """

    objective_class = DualClip

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
        self._keep_settings(dual_clip=dual_clip, clip_range_low=clip_range_low, clip_range_high=clip_range_high,
                            loss_agg_mode=loss_agg_mode)
        kwargs.setdefault("would_bound_c", 3.0 if dual_clip is None else dual_clip)
        super().__init__(policy, env, **kwargs)
