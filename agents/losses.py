"""Policy-gradient loss terms for PPO variants, in pure torch (no stable-baselines3 import).

The semantics follow verl's ``compute_policy_loss`` (dual-clip PPO, Ye et al. 2019, arXiv 1912.09729),
re-written for gym-style RL: a *token* is one environment step and a *sequence* is one episode segment.

For one step with advantage ``A`` and ratio ``r = pi_theta(a|s) / mu(a|s)`` the per-step loss (to minimise) is::

    ppo  = max(-A * r, -A * clip(r, 1 - eps_low, 1 + eps_high))     # = -min(r*A, clip(r)*A)
    dual = min(ppo, -c * A)   if A < 0   else ppo                   # objective never below c*A

Worked example (the one in Ye et al.'s motivation): ``A = -10, r = 100, eps = 0.2, c = 3``: the PPO objective is
``min(-1000, -12) = -1000``; dual-clip bounds it at ``max(-1000, -30) = -30`` and its gradient w.r.t. ``r`` is 0.

The losses return tensors (no ``.item()``), so callers can average diagnostics over many minibatches with a
single host synchronisation; only ``pack_segments`` reads sizes from its segment ids.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from agents.options import IS_WEIGHT_MODES, LOSS_AGG_MODES

#: The log-ratio is clamped to +-LOG_RATIO_CLAMP before ``exp`` (as verl does) so a stale sample cannot overflow.
LOG_RATIO_CLAMP = 10.0


class PolicyLossOutput(NamedTuple):
    """Named result of :func:`compute_policy_loss`. The first four fields keep the order and meaning of what verl's
    ``compute_policy_loss`` returns (``pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower``)."""

    loss: torch.Tensor  #: scalar to minimise (the negated clipped objective, aggregated)
    clip_fraction: torch.Tensor  #: share of valid steps where the clipped term is the active one
    approx_kl: torch.Tensor  #: masked mean of ``old_log_prob - log_prob`` (after the clamp)
    clip_fraction_lower: torch.Tensor  #: share of valid steps with A<0 where the ``c*A`` bound is active
    ratio_max: torch.Tensor  #: largest ratio over valid steps (after the clamp)
    ratio: torch.Tensor  #: per-step ratio, detached (same shape as the inputs)


class DecoupledLossOutput(NamedTuple):
    """Named result of :func:`compute_decoupled_policy_loss`; first four fields as :class:`PolicyLossOutput`."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor  #: against the proximal policy
    approx_kl: torch.Tensor  #: masked mean of ``prox_log_prob - log_prob`` (after the clamp)
    clip_fraction_lower: torch.Tensor
    ratio_max: torch.Tensor  #: largest pi_theta / pi_prox
    is_weight_mean: torch.Tensor  #: mean of the weight w as used (truncated at w_max, or 0 where filtered)
    is_weight_max: torch.Tensor  #: largest w (after truncation)
    is_weight_truncated: torch.Tensor  #: share of valid steps whose weight was truncated to w_max (mode truncate)
    is_ess: torch.Tensor  #: effective sample size of w as a share of the valid steps, (sum w)^2 / (n sum w^2) in (0, 1]
    is_weight_filtered: torch.Tensor  #: share of valid steps dropped because pi_prox / mu > w_max (mode filter)


def _check_inputs(mask: Optional[torch.Tensor], **tensors: torch.Tensor) -> None:
    """Refuse silent broadcasting: every tensor (and the mask) must have exactly the same 1-D or 2-D shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if mask is not None:
        shapes["mask"] = tuple(mask.shape)
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shape mismatch {shapes}: pass tensors of one identical shape, (batch,) or (batch, T)")
    shape = next(iter(shapes.values()))
    if len(shape) not in (1, 2):
        raise ValueError(f"inputs have shape {shape}: expected (batch,) or (batch, T)")


def masked_mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of ``values`` over valid entries (all entries when ``mask`` is None); 0 when nothing is valid."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _valid(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The valid entries of ``values`` as a 1-D tensor."""
    return values.reshape(-1) if mask is None else values[mask.bool()]


def _max_or_nan(values: torch.Tensor) -> torch.Tensor:
    """``values.max()``, NaN for an empty tensor (no valid step)."""
    return values.max() if values.numel() else values.new_tensor(float("nan"))


def agg_loss(loss_mat: torch.Tensor, mask: Optional[torch.Tensor] = None, loss_agg_mode: str = "token-mean") -> torch.Tensor:
    """Aggregate a per-step loss into a scalar.

    :param loss_mat: per-step loss, ``(batch, T)``, or ``(batch,)`` for one step per sample (read as ``(batch, 1)``)
    :param mask: valid steps (bool or 0/1), same shape; None means all valid
    :param loss_agg_mode:
        ``token-mean``: mean over all valid steps;
        ``seq-mean-token-sum``: per sequence the sum over its valid steps, then the mean over sequences;
        ``seq-mean-token-mean``: per sequence the mean over its valid steps, then the mean over sequences;
        ``seq-mean-token-sum-norm``: the sum over all valid steps divided by ``T`` (a constant, as in Dr. GRPO).
        A sequence with no valid step is left out of the "mean over sequences" (never NaN).
    """
    check_loss_agg_mode(loss_agg_mode)
    if mask is not None and mask.shape != loss_mat.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != loss shape {tuple(loss_mat.shape)}")
    if loss_agg_mode == "token-mean":
        return masked_mean(loss_mat, mask)
    if loss_mat.dim() == 1:
        loss_mat = loss_mat.unsqueeze(-1)
        mask = None if mask is None else mask.unsqueeze(-1)
    valid = torch.ones_like(loss_mat) if mask is None else mask.to(loss_mat.dtype)
    token_sum = (loss_mat * valid).sum(dim=-1)
    if loss_agg_mode == "seq-mean-token-sum-norm":
        return token_sum.sum() / loss_mat.shape[-1]
    n_valid = valid.sum(dim=-1)
    has_valid = (n_valid > 0).to(loss_mat.dtype)
    if loss_agg_mode == "seq-mean-token-mean":
        per_seq = token_sum / n_valid.clamp(min=1.0)
    else:  # seq-mean-token-sum
        per_seq = token_sum
    return (per_seq * has_valid).sum() / has_valid.sum().clamp(min=1.0)


def _clip_bounds(clip_range: float, clip_range_low: Optional[float], clip_range_high: Optional[float]) -> Tuple[float, float]:
    low = clip_range if clip_range_low is None else clip_range_low
    high = clip_range if clip_range_high is None else clip_range_high
    return low, high


def check_clip_range(name: str, value: object) -> None:
    """A constant clip range must lie in (0, 1); schedules (callables) and None (the default) pass."""
    if value is None or callable(value):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name}={value!r} must be a number in (0, 1), e.g. 0.2")


def check_loss_agg_mode(loss_agg_mode: str) -> None:
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode={loss_agg_mode!r} is unknown: choose one of {', '.join(LOSS_AGG_MODES)}")


def check_dual_clip(dual_clip: Optional[float]) -> None:
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip={dual_clip} must be > 1 (the paper uses 3.0); pass None for vanilla PPO")


def check_is_weight_mode(is_weight_mode: str) -> None:
    if is_weight_mode not in IS_WEIGHT_MODES:
        raise ValueError(f"is_weight_mode={is_weight_mode!r} is unknown: choose one of {', '.join(IS_WEIGHT_MODES)}")


def check_is_weight_max(is_weight_max: float) -> None:
    """w_max must be a number > 0."""
    if isinstance(is_weight_max, bool) or not isinstance(is_weight_max, (int, float)) or not is_weight_max > 0:
        raise ValueError(f"is_weight_max={is_weight_max!r} must be a number > 0 (the reference code uses 100)")


def _clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, low: float, high: float, dual_clip: Optional[float]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-step (dual-)clipped loss plus the two indicators: clipped term active, lower bound active."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - low, 1.0 + high)
    per_step = torch.maximum(unclipped, clipped)
    clip_active = clipped > unclipped
    if dual_clip is None:
        return per_step, clip_active, torch.zeros_like(clip_active)
    bound = -advantages * dual_clip
    negative = advantages < 0
    lower_active = negative & (per_step > bound)
    return torch.where(negative, torch.minimum(per_step, bound), per_step), clip_active, lower_active


def compute_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    *,
    clip_range: float = 0.2,
    clip_range_low: Optional[float] = None,
    clip_range_high: Optional[float] = None,
    dual_clip: Optional[float] = 3.0,
    loss_agg_mode: str = "token-mean",
) -> PolicyLossOutput:
    """Clipped PPO policy loss with the optional dual-clip lower bound.

    :param old_log_prob: log mu(a|s) stored at collection time, ``(batch,)`` or ``(batch, T)``
    :param log_prob: log pi_theta(a|s), same shape, carries the gradient
    :param advantages: same shape (already normalised if the caller normalises)
    :param mask: valid steps, same shape; None means all valid
    :param clip_range: epsilon of PPO's clip; ``clip_range_low`` / ``clip_range_high`` default to it
    :param dual_clip: c > 1 bounds the objective at ``c * A`` where A < 0; None gives vanilla PPO
    :param loss_agg_mode: see :func:`agg_loss`
    :raises ValueError: ``dual_clip <= 1``, unknown ``loss_agg_mode`` or mismatched shapes
    """
    check_dual_clip(dual_clip)
    _check_inputs(mask, old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages)
    low, high = _clip_bounds(clip_range, clip_range_low, clip_range_high)
    log_ratio = torch.clamp(log_prob - old_log_prob, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    per_step, clip_active, lower_active = _clipped_surrogate(ratio, advantages, low, high, dual_clip)
    loss = agg_loss(per_step, mask, loss_agg_mode)
    with torch.no_grad():
        ratio_d = ratio.detach()
        return PolicyLossOutput(
            loss=loss,
            clip_fraction=masked_mean(clip_active.to(ratio_d.dtype), mask),
            approx_kl=masked_mean(-log_ratio.detach(), mask),
            clip_fraction_lower=masked_mean(lower_active.to(ratio_d.dtype), mask),
            ratio_max=_max_or_nan(_valid(ratio_d, mask)),
            ratio=ratio_d,
        )


def compute_decoupled_policy_loss(
    old_log_prob: torch.Tensor,
    prox_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    *,
    clip_range: float = 0.2,
    clip_range_low: Optional[float] = None,
    clip_range_high: Optional[float] = None,
    dual_clip: Optional[float] = None,
    is_weight_max: float = 100.0,
    is_weight_mode: str = "truncate",
    loss_agg_mode: str = "token-mean",
) -> DecoupledLossOutput:
    """Decoupled PPO (Hilton, Cobbe & Schulman 2021): clip against a proximal policy, weight against mu.

    With ``r' = pi_theta / pi_prox`` and the gradient-free weight ``w = min(pi_prox / mu, w_max)`` (``truncate``,
    openai/ppo-ewma's choice) or ``w = pi_prox / mu if pi_prox / mu <= w_max else 0`` (``filter``, AReaL's
    ``behav_imp_weight_cap``: a step with too large a weight drops out of the loss; the aggregation's denominators
    still count it, as AReaL divides by all valid tokens)::

        inner = max(-A * r', -A * clip(r', 1 - eps_low, 1 + eps_high))      # PPO term against pi_prox
        inner = min(inner, -c * A)   where A < 0, if dual_clip is set        # dual-clip bound, before weighting
        loss  = agg(w * inner)

    So the dual-clip bound caps the *unweighted* proximal term at ``c*A``; the weighted term is bounded by
    ``w * c * A``, i.e. by ``w_max * c * A`` at most. With ``pi_prox == mu`` (w = 1) this is exactly
    :func:`compute_policy_loss`. Both log-ratios are clamped to +-10 before ``exp``.

    :param prox_log_prob: log pi_prox(a|s), no gradient (detached here)
    :param is_weight_max: w_max, the cap on the importance weight (> 0)
    :param is_weight_mode: ``truncate`` or ``filter`` (see above)
    """
    check_dual_clip(dual_clip)
    check_is_weight_max(is_weight_max)
    check_is_weight_mode(is_weight_mode)
    _check_inputs(
        mask, old_log_prob=old_log_prob, prox_log_prob=prox_log_prob, log_prob=log_prob, advantages=advantages
    )
    prox_log_prob = prox_log_prob.detach()
    low, high = _clip_bounds(clip_range, clip_range_low, clip_range_high)
    log_ratio = torch.clamp(log_prob - prox_log_prob, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    per_step, clip_active, lower_active = _clipped_surrogate(ratio, advantages, low, high, dual_clip)
    raw_weight = torch.exp(torch.clamp(prox_log_prob - old_log_prob.detach(), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    over_cap = raw_weight > is_weight_max
    if is_weight_mode == "truncate":
        weight = torch.clamp(raw_weight, max=is_weight_max)
    else:
        weight = torch.where(over_cap, torch.zeros_like(raw_weight), raw_weight)
    loss = agg_loss(weight * per_step, mask, loss_agg_mode)
    with torch.no_grad():
        w_valid = _valid(weight, mask)
        nan = weight.new_tensor(float("nan"))
        n = w_valid.numel()
        return DecoupledLossOutput(
            loss=loss,
            clip_fraction=masked_mean(clip_active.to(weight.dtype), mask),
            approx_kl=masked_mean(-log_ratio.detach(), mask),
            clip_fraction_lower=masked_mean(lower_active.to(weight.dtype), mask),
            ratio_max=_max_or_nan(_valid(ratio.detach(), mask)),
            is_weight_mean=w_valid.mean() if n else nan,
            is_weight_max=_max_or_nan(w_valid),
            is_weight_truncated=masked_mean((over_cap & (is_weight_mode == "truncate")).to(weight.dtype), mask),
            is_ess=effective_sample_size(w_valid) if n else nan,
            is_weight_filtered=masked_mean((over_cap & (is_weight_mode == "filter")).to(weight.dtype), mask),
        )


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """Kish's effective sample size of importance weights as a share of their count: (sum w)^2 / (n * sum w^2)."""
    return weights.sum() ** 2 / (weights.numel() * (weights**2).sum()).clamp(min=torch.finfo(weights.dtype).tiny)


def pack_segments(
    segment_ids: torch.Tensor, tensors: Tuple[torch.Tensor, ...], width: int
) -> Tuple[Tuple[torch.Tensor, ...], torch.Tensor]:
    """Lay flat per-step tensors out as ``(n_segments, width)`` rows, one row per episode segment.

    Used by the ``seq-*`` aggregation modes: steps sharing a ``segment_id`` form one sequence. Padding is 0
    and masked out. ``width`` must be at least the longest segment (the rollout length is a safe constant,
    which keeps the ``seq-mean-token-sum-norm`` divisor fixed through training).

    :return: the packed tensors (differentiable w.r.t. the inputs) and the bool mask of valid cells
    """
    if segment_ids.dim() != 1 or any(t.shape != segment_ids.shape for t in tensors):
        raise ValueError("pack_segments needs 1-D segment_ids and tensors of the same shape")
    _, row = torch.unique(segment_ids, return_inverse=True)
    n_rows = int(row.max().item()) + 1 if row.numel() else 0
    counts = torch.bincount(row, minlength=n_rows)
    if counts.numel() and int(counts.max().item()) > width:
        raise ValueError(f"a segment has {int(counts.max().item())} steps, more than width={width}")
    order = torch.argsort(row, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    col = torch.empty_like(row)
    col[order] = torch.arange(row.numel(), device=row.device) - starts[row[order]]
    packed = tuple(t.new_zeros(n_rows, width).index_put((row, col), t) for t in tensors)
    mask = torch.zeros(n_rows, width, dtype=torch.bool, device=row.device)
    mask[row, col] = True
    return packed, mask
