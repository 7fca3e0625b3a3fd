"""Unit tests for the pure-torch policy losses in :mod:`agents.losses`.

Hand-checked numbers are written out in the tests (as in SB3's GAE test); hypothesis covers the properties
(dual-clip lower bound, A>0 never bounded, equality with vanilla for r <= c, bit-equality with stock SB3).
"""

import math
import re

import numpy as np
import pytest
import torch as th
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.losses import (
    LOG_RATIO_CLAMP,
    IS_WEIGHT_MODES,
    LOSS_AGG_MODES,
    agg_loss,
    compute_decoupled_policy_loss,
    compute_policy_loss,
    effective_sample_size,
    masked_mean,
    pack_segments,
)

FAST = settings(max_examples=60, deadline=None)


def _t(values, dtype=th.float64, requires_grad=False):
    return th.tensor(values, dtype=dtype, requires_grad=requires_grad)


def _policy_loss(advantage, ratio, **kwargs):
    """compute_policy_loss on explicit ratios: old_log_prob = 0, log_prob = ln(ratio) (float64)."""
    adv = _t(advantage)
    log_prob = _t(np.log(np.asarray(ratio, dtype=np.float64)), requires_grad=True)
    old_log_prob = th.zeros_like(log_prob)
    return compute_policy_loss(old_log_prob, log_prob, adv, **kwargs), log_prob


def _reference_per_step(ratio, adv, low, high, dual_clip):
    """Per-step loss written independently from the formula (float ops in the same order as a reader would)."""
    ppo = th.maximum(-adv * ratio, -adv * th.clamp(ratio, 1.0 - low, 1.0 + high))
    if dual_clip is None:
        return ppo
    return th.where(adv < 0, th.minimum(ppo, -adv * dual_clip), ppo)


# Strategies: log-ratios up to +-12 (so the +-10 clamp is reached), advantages in [-50, 50] away from tiny
# magnitudes (subnormal products would tie c*A with the PPO term and halve the gradient).
log_ratios = st.floats(min_value=-12.0, max_value=12.0, allow_nan=False)
advantage_values = st.one_of(st.floats(min_value=1e-3, max_value=50.0), st.floats(min_value=-50.0, max_value=-1e-3))
dual_clips = st.floats(min_value=1.0, max_value=20.0, exclude_min=True)
clip_ranges = st.floats(min_value=0.01, max_value=0.9)


@st.composite
def steps(draw, min_size=1, max_size=16):
    n = draw(st.integers(min_size, max_size))
    log_ratio = draw(st.lists(log_ratios, min_size=n, max_size=n))
    adv = draw(st.lists(advantage_values, min_size=n, max_size=n))
    return _t(log_ratio), _t(adv)


# --------------------------------------------------------------------------------------------------------------
# 1. The seed's worked example
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dual_clip, expected_loss, expected_lower",
    [
        (None, 1000.0, 0.0),  # vanilla: objective min(-10 * 100, -10 * 1.2) = -1000
        (3.0, 30.0, 1.0),  # dual-clip: objective max(-1000, 3 * -10) = -30
    ],
)
def test_seed_worked_example(dual_clip, expected_loss, expected_lower):
    out, _ = _policy_loss([-10.0], [100.0], clip_range=0.2, dual_clip=dual_clip)
    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-12)
    assert out.clip_fraction_lower.item() == expected_lower
    # the unclipped term (1000) is the larger loss, so the clipped term (12) is not the active one
    assert out.clip_fraction.item() == 0.0
    assert out.approx_kl.item() == pytest.approx(-math.log(100.0), rel=1e-12)
    assert out.ratio_max.item() == pytest.approx(100.0, rel=1e-12)
    assert not out.ratio.requires_grad


def test_seed_worked_example_float32():
    """The same example in float32, the dtype SB3 trains in."""
    old_log_prob = th.zeros(1)
    log_prob = th.full((1,), math.log(100.0))
    adv = th.full((1,), -10.0)
    vanilla = compute_policy_loss(old_log_prob, log_prob, adv, dual_clip=None)
    dual = compute_policy_loss(old_log_prob, log_prob, adv, dual_clip=3.0)
    assert vanilla.loss.item() == pytest.approx(1000.0, rel=1e-5)
    assert dual.loss.item() == 30.0  # -A * c is exact, independent of the ratio's rounding
    assert (vanilla.clip_fraction_lower.item(), dual.clip_fraction_lower.item()) == (0.0, 1.0)


# --------------------------------------------------------------------------------------------------------------
# 2. Hand-computed single steps
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dual_clip", [None, 3.0])
@pytest.mark.parametrize(
    "advantage, ratio, kwargs, expected_loss, expected_clip, expected_lower",
    [
        # A > 0, r above 1 + eps: min(2 * 1.5, 2 * 1.2) = 2.4, clipped term active
        (2.0, 1.5, {}, -2.4, 1.0, 0.0),
        # A > 0, r below 1 - eps: min(2 * 0.5, 2 * 0.8) = 1.0, unclipped term active
        (2.0, 0.5, {}, -1.0, 0.0, 0.0),
        # A > 0, r inside the clip range: both terms equal 2 * 1.1, no clipping
        (2.0, 1.1, {}, -2.2, 0.0, 0.0),
        # A < 0, r in [1 + eps, c]: min(-1 * 2, -1 * 1.2) = -2 (>= c*A = -3): dual-clip = vanilla
        (-1.0, 2.0, {}, 2.0, 0.0, 0.0),
        # A < 0, r = 2.9 just below c = 3: min(-4 * 2.9, -4 * 1.2) = -11.6 >= -12
        (-4.0, 2.9, {}, 11.6, 0.0, 0.0),
        # A < 0, r below 1 - eps: min(-1 * 0.5, -1 * 0.8) = -0.8, clipped term active
        (-1.0, 0.5, {}, 0.8, 1.0, 0.0),
        # asymmetric [1 - 0.1, 1 + 0.3] = [0.9, 1.3]: A > 0, r = 1.5 -> 1.3
        (1.0, 1.5, {"clip_range_low": 0.1, "clip_range_high": 0.3}, -1.3, 1.0, 0.0),
        # asymmetric: r = 1.25 is inside [0.9, 1.3] (it would be clipped to 1.2 with eps = 0.2)
        (1.0, 1.25, {"clip_range_low": 0.1, "clip_range_high": 0.3}, -1.25, 0.0, 0.0),
        # asymmetric: A < 0, r = 0.85 below 0.9 -> min(-0.85, -0.9) = -0.9
        (-1.0, 0.85, {"clip_range_low": 0.1, "clip_range_high": 0.3}, 0.9, 1.0, 0.0),
        # clip-higher only (low defaults to clip_range = 0.2): A < 0, r = 0.7 -> min(-0.7, -0.8) = -0.8
        (-1.0, 0.7, {"clip_range_high": 0.28}, 0.8, 1.0, 0.0),
        # clip-higher only: A > 0, r = 1.25 inside [0.8, 1.28]
        (1.0, 1.25, {"clip_range_high": 0.28}, -1.25, 0.0, 0.0),
        # clip_range_low only overrides the floor: A > 0, r = 1.5 -> ceiling 1.2 still applies
        (1.0, 1.5, {"clip_range_low": 0.05}, -1.2, 1.0, 0.0),
    ],
)
def test_hand_computed_steps(advantage, ratio, kwargs, expected_loss, expected_clip, expected_lower, dual_clip):
    out, _ = _policy_loss([advantage], [ratio], dual_clip=dual_clip, **kwargs)
    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-12)
    assert out.clip_fraction.item() == expected_clip
    assert out.clip_fraction_lower.item() == expected_lower


@pytest.mark.parametrize("clip_range", [0.2, 0.5])
def test_ties_are_not_counted(clip_range):
    """r exactly on c (or exactly on 1 + eps): both terms are equal, so neither indicator counts the step."""
    zero = th.zeros(1, dtype=th.float64)
    log_prob = _t([math.log(2.5)])
    ratio = compute_policy_loss(zero, log_prob, _t([-4.0]), dual_clip=None).ratio.item()  # 2.5 up to rounding
    out = compute_policy_loss(zero, log_prob, _t([-4.0]), dual_clip=ratio)  # c == r exactly
    assert out.loss.item() == pytest.approx(10.0, rel=1e-12)  # -A r = -A c = 10
    assert out.clip_fraction_lower.item() == 0.0
    log_prob = _t([math.log(1.0 + clip_range)])
    out = compute_policy_loss(zero, log_prob, _t([1.0]), clip_range=clip_range)
    assert out.ratio.item() == 1.0 + clip_range  # exp(log(1 + eps)) is exact for these eps in float64
    assert out.clip_fraction.item() == 0.0


@pytest.mark.parametrize(
    "dual_clip, expected_loss, expected_lower",
    [
        # per-step losses -2.4, -1.0, 2.0, 0.8 and, for (A, r) = (-1, 5), 5 (vanilla, c > 5) or c
        (None, (-2.4 - 1.0 + 2.0 + 0.8 + 5.0) / 5, 0.0),
        (3.0, (-2.4 - 1.0 + 2.0 + 0.8 + 3.0) / 5, 1 / 5),
        (4.0, (-2.4 - 1.0 + 2.0 + 0.8 + 4.0) / 5, 1 / 5),
        (6.0, (-2.4 - 1.0 + 2.0 + 0.8 + 5.0) / 5, 0.0),  # r = 5 < c = 6: no bound
    ],
)
def test_hand_computed_batch(dual_clip, expected_loss, expected_lower):
    # steps: (A, r) = (2, 1.5) -> -2.4, (2, 0.5) -> -1.0, (-1, 2) -> 2.0, (-1, 0.5) -> 0.8, (-1, 5) -> 5 or c
    out, _ = _policy_loss([2.0, 2.0, -1.0, -1.0, -1.0], [1.5, 0.5, 2.0, 0.5, 5.0], dual_clip=dual_clip)
    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-12)
    assert out.clip_fraction.item() == pytest.approx(2 / 5)  # the (2, 1.5) and (-1, 0.5) steps
    assert out.clip_fraction_lower.item() == pytest.approx(expected_lower)
    assert out.ratio_max.item() == pytest.approx(5.0)
    expected_kl = -(math.log(1.5) + math.log(0.5) + math.log(2.0) + math.log(0.5) + math.log(5.0)) / 5
    assert out.approx_kl.item() == pytest.approx(expected_kl)


# --------------------------------------------------------------------------------------------------------------
# 3. Gradient where the bound is active
# --------------------------------------------------------------------------------------------------------------


def test_gradient_zero_where_bound_active():
    # A = -10, r = 100: d(loss)/d(log_prob) = d(-A r)/d(log r) = -A r = 1000 for vanilla, 0 under the bound
    for dual_clip, expected in ((None, 1000.0), (3.0, 0.0)):
        out, log_prob = _policy_loss([-10.0], [100.0], dual_clip=dual_clip)
        out.loss.backward()
        assert log_prob.grad.item() == pytest.approx(expected, rel=1e-12)
    out, log_prob = _policy_loss([-10.0], [100.0], dual_clip=3.0)
    out.loss.backward()
    assert log_prob.grad.item() == 0.0  # exactly zero, not just small


def test_gradient_mixed_batch():
    # (A, r): (-10, 100) bounded -> 0; (-1, 2) -> -A r / N = 2 / 4; (1, 1.5) clipped -> 0; (1, 1) -> -A r / N
    out, log_prob = _policy_loss([-10.0, -1.0, 1.0, 1.0], [100.0, 2.0, 1.5, 1.0], dual_clip=3.0)
    out.loss.backward()
    expected = _t([0.0, 2.0 / 4, 0.0, -1.0 / 4])
    th.testing.assert_close(log_prob.grad, expected)
    assert log_prob.grad[0].item() == 0.0


@FAST
@given(data=steps(), dual_clip=dual_clips)
def test_gradient_zero_wherever_bound_active(data, dual_clip):
    log_ratio, adv = data
    log_prob = log_ratio.clone().requires_grad_(True)
    out = compute_policy_loss(th.zeros_like(log_prob), log_prob, adv, dual_clip=dual_clip)
    out.loss.backward()
    ppo = _reference_per_step(out.ratio, adv, 0.2, 0.2, None)
    bound_active = (adv < 0) & (ppo > -adv * dual_clip)
    assert th.all(log_prob.grad[bound_active] == 0.0)
    # the bound is active exactly where A < 0 and r > c (advantages here are far from subnormal)
    assert th.equal(bound_active, (adv < 0) & (out.ratio > dual_clip))
    assert out.clip_fraction_lower.item() == pytest.approx(bound_active.double().mean().item())


# --------------------------------------------------------------------------------------------------------------
# 4. A > 0 never hits the bound
# --------------------------------------------------------------------------------------------------------------


@FAST
@given(
    log_ratio=st.lists(log_ratios, min_size=1, max_size=16),
    dual_clip=dual_clips,
    clip_range=clip_ranges,
    data=st.data(),
)
def test_positive_advantages_never_bounded(log_ratio, dual_clip, clip_range, data):
    adv = data.draw(st.lists(st.floats(0.0, 50.0), min_size=len(log_ratio), max_size=len(log_ratio)))
    log_prob, adv = _t(log_ratio, requires_grad=True), _t(adv)
    old = th.zeros_like(log_prob)
    dual = compute_policy_loss(old, log_prob, adv, clip_range=clip_range, dual_clip=dual_clip)
    vanilla = compute_policy_loss(old, log_prob, adv, clip_range=clip_range, dual_clip=None)
    assert dual.clip_fraction_lower.item() == 0.0
    assert th.equal(dual.loss, vanilla.loss)
    (grad_dual,) = th.autograd.grad(dual.loss, log_prob)
    (grad_vanilla,) = th.autograd.grad(vanilla.loss, log_prob)
    assert th.equal(grad_dual, grad_vanilla)


# --------------------------------------------------------------------------------------------------------------
# 5. Properties of the per-step dual-clip objective
# --------------------------------------------------------------------------------------------------------------


@FAST
@given(data=steps(max_size=8), dual_clip=dual_clips, low=clip_ranges, high=clip_ranges)
def test_dual_clip_per_step_properties(data, dual_clip, low, high):
    log_ratio, adv = data
    kwargs = dict(clip_range_low=low, clip_range_high=high)
    for i in range(len(adv)):
        old, new, a = th.zeros(1, dtype=th.float64), log_ratio[i : i + 1], adv[i : i + 1]
        dual = compute_policy_loss(old, new, a, dual_clip=dual_clip, **kwargs)
        vanilla = compute_policy_loss(old, new, a, dual_clip=None, **kwargs)
        objective, a_val, r = -dual.loss.item(), a.item(), dual.ratio.item()
        if a_val < 0:
            assert objective >= dual_clip * a_val  # never below c * A
        if a_val >= 0 or r <= dual_clip:
            assert dual.loss.item() == vanilla.loss.item()  # dual-clip is vanilla wherever r <= c (or A >= 0)
        else:
            assert objective == dual_clip * a_val  # A < 0, r > c: exactly the bound
        assert -vanilla.loss.item() <= objective  # the bound only ever raises the objective


@FAST
@given(data=steps(), dual_clip=st.one_of(st.none(), dual_clips), low=clip_ranges, high=clip_ranges)
def test_matches_reference_formula(data, dual_clip, low, high):
    log_ratio, adv = data
    out = compute_policy_loss(
        th.zeros_like(log_ratio), log_ratio, adv, clip_range_low=low, clip_range_high=high, dual_clip=dual_clip
    )
    ratio = th.exp(th.clamp(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    assert th.equal(out.ratio, ratio)
    assert th.equal(out.loss, _reference_per_step(ratio, adv, low, high, dual_clip).mean())


# --------------------------------------------------------------------------------------------------------------
# 6. Aggregation modes
# --------------------------------------------------------------------------------------------------------------

LOSS_MAT = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 9.0, 9.0, 9.0]]
MASK = [[True, True, False, False], [True, True, True, True], [False, False, False, False]]
# row sums over valid steps: 3 and 26; row means: 1.5 and 6.5; the third row has no valid step
EXPECTED_AGG = {
    "token-mean": (1 + 2 + 5 + 6 + 7 + 8) / 6,
    "seq-mean-token-sum": (3 + 26) / 2,
    "seq-mean-token-mean": (1.5 + 6.5) / 2,
    "seq-mean-token-sum-norm": (3 + 26) / 4,  # divided by T = 4, whatever the number of rows
}
# unmasked: row sums 10, 26, 36; row means 2.5, 6.5, 9
EXPECTED_AGG_UNMASKED = {
    "token-mean": 72 / 12,
    "seq-mean-token-sum": 72 / 3,
    "seq-mean-token-mean": (2.5 + 6.5 + 9) / 3,
    "seq-mean-token-sum-norm": 72 / 4,
}


def test_agg_modes_cover_all():
    assert set(EXPECTED_AGG) == set(LOSS_AGG_MODES)


@pytest.mark.parametrize("mask_dtype", [th.bool, th.float64, th.int64])
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_agg_loss_hand_computed(mode, mask_dtype):
    loss = agg_loss(_t(LOSS_MAT), th.tensor(MASK).to(mask_dtype), mode)
    assert th.isfinite(loss)
    assert loss.item() == pytest.approx(EXPECTED_AGG[mode], rel=1e-12)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_agg_loss_unmasked(mode):
    assert agg_loss(_t(LOSS_MAT), None, mode).item() == pytest.approx(EXPECTED_AGG_UNMASKED[mode], rel=1e-12)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_agg_through_policy_loss(mode):
    # r = 1 everywhere, vanilla: per-step loss = -A, so A = -LOSS_MAT reproduces the table above
    old = th.zeros(3, 4, dtype=th.float64)
    new = th.zeros(3, 4, dtype=th.float64, requires_grad=True)
    out = compute_policy_loss(old, new, -_t(LOSS_MAT), th.tensor(MASK), dual_clip=None, loss_agg_mode=mode)
    assert out.loss.item() == pytest.approx(EXPECTED_AGG[mode], rel=1e-12)
    assert out.approx_kl.item() == 0.0
    out.loss.backward()
    assert th.isfinite(new.grad).all()
    assert th.all(new.grad[~th.tensor(MASK)] == 0.0)  # padded steps get no gradient
    assert th.all(new.grad[th.tensor(MASK)] != 0.0)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 8 / 3),
        ("seq-mean-token-sum", 8 / 3),  # every sample is its own sequence of one step
        ("seq-mean-token-mean", 8 / 3),
        ("seq-mean-token-sum-norm", 8.0),  # T = 1
    ],
)
def test_agg_loss_1d_is_one_token_per_sample(mode, expected):
    values, mask = _t([1.0, 2.0, 3.0, 4.0]), th.tensor([True, False, True, True])
    assert agg_loss(values, mask, mode).item() == pytest.approx(expected, rel=1e-12)
    # same as the (batch, 1) layout
    assert agg_loss(values.unsqueeze(-1), mask.unsqueeze(-1), mode).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_agg_loss_all_masked_is_zero_not_nan(mode):
    values = _t(LOSS_MAT, requires_grad=True)
    loss = agg_loss(values, th.zeros(3, 4, dtype=th.bool), mode)
    assert loss.item() == 0.0
    loss.backward()
    assert th.all(values.grad == 0.0)


def test_all_masked_policy_loss():
    old, new, adv = th.zeros(2, 3), th.ones(2, 3), th.ones(2, 3)
    out = compute_policy_loss(old, new, adv, th.zeros(2, 3, dtype=th.bool))
    assert out.loss.item() == 0.0
    assert out.clip_fraction.item() == 0.0 and out.approx_kl.item() == 0.0
    assert math.isnan(out.ratio_max.item())  # documented: no valid step, no maximum


def test_masked_mean():
    assert masked_mean(_t([1.0, 2.0, 3.0]), None).item() == pytest.approx(2.0)
    assert masked_mean(_t([1.0, 2.0, 3.0]), th.tensor([True, False, True])).item() == pytest.approx(2.0)
    assert masked_mean(_t([1.0, 2.0, 4.0]), th.tensor([False, False, True])).item() == 4.0
    assert masked_mean(_t([1.0, 2.0, 4.0]), th.tensor([False, False, False])).item() == 0.0


def test_mask_ignores_padded_ratio():
    # a huge ratio in a padded cell must not show up in ratio_max, clip_fraction or approx_kl
    old = th.zeros(1, 3, dtype=th.float64)
    new = _t([[0.0, math.log(1.1), 9.0]])
    adv = _t([[1.0, -1.0, -1.0]])
    out = compute_policy_loss(old, new, adv, th.tensor([[True, True, False]]))
    assert out.ratio_max.item() == pytest.approx(1.1)
    assert out.clip_fraction_lower.item() == 0.0
    assert out.clip_fraction.item() == 0.0
    assert out.approx_kl.item() == pytest.approx(-math.log(1.1) / 2)
    assert out.loss.item() == pytest.approx((-1.0 + 1.1) / 2)


# --------------------------------------------------------------------------------------------------------------
# 7. Shape and argument guards
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shapes",
    [
        ((4,), (4, 1), (4,)),  # [B] vs [B, 1] would broadcast to [B, B]
        ((4, 1), (4,), (4, 1)),
        ((4,), (4,), (4, 1)),
        ((4,), (5,), (4,)),
        ((2, 3), (2, 3), (3, 2)),
        ((2, 3, 1), (2, 3, 1), (2, 3, 1)),  # 3-D is refused
    ],
)
def test_shape_mismatch_raises(shapes):
    old, new, adv = (th.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match="shape"):
        compute_policy_loss(old, new, adv)
    with pytest.raises(ValueError, match="shape"):
        compute_decoupled_policy_loss(old, old.clone(), new, adv)


@pytest.mark.parametrize("mask_shape", [(4, 1), (1, 4), (3,), (4, 2)])
def test_mismatched_mask_raises(mask_shape):
    x = th.zeros(4)
    mask = th.ones(mask_shape, dtype=th.bool)
    with pytest.raises(ValueError, match="shape"):
        compute_policy_loss(x, x, x, mask)
    with pytest.raises(ValueError, match="shape"):
        compute_decoupled_policy_loss(x, x, x, x, mask)
    with pytest.raises(ValueError, match="shape"):
        agg_loss(x, mask, "seq-mean-token-mean")


@pytest.mark.parametrize("dual_clip", [1.0, 0.8, 0.0, -3.0])
def test_dual_clip_must_exceed_one(dual_clip):
    x = th.zeros(3)
    with pytest.raises(ValueError, match=re.escape(f"dual_clip={dual_clip}")):
        compute_policy_loss(x, x, x, dual_clip=dual_clip)
    with pytest.raises(ValueError, match=re.escape(f"dual_clip={dual_clip}")):
        compute_decoupled_policy_loss(x, x, x, x, dual_clip=dual_clip)


def test_dual_clip_nan_raises():
    x = th.zeros(3)
    with pytest.raises(ValueError, match="nan"):
        compute_policy_loss(x, x, x, dual_clip=float("nan"))


@pytest.mark.parametrize("mode", ["sum", "seq-mean-token-sum-norm ", "Token-Mean", ""])
def test_unknown_agg_mode_raises(mode):
    x = th.zeros(2, 3)
    with pytest.raises(ValueError, match=re.escape(repr(mode))):
        compute_policy_loss(x, x, x, loss_agg_mode=mode)
    with pytest.raises(ValueError, match="loss_agg_mode=.* is unknown"):
        agg_loss(x, None, mode)
    with pytest.raises(ValueError, match="loss_agg_mode=.* is unknown"):
        compute_decoupled_policy_loss(x, x, x, x, loss_agg_mode=mode)


@pytest.mark.parametrize("is_weight_max", [0.0, -1.0])
def test_is_weight_max_must_be_positive(is_weight_max):
    x = th.zeros(3)
    with pytest.raises(ValueError, match="is_weight_max"):
        compute_decoupled_policy_loss(x, x, x, x, is_weight_max=is_weight_max)


# --------------------------------------------------------------------------------------------------------------
# 8. Log-ratio clamp
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_log_ratio_clamp(dtype, dual_clip):
    assert LOG_RATIO_CLAMP == 10.0
    old = th.zeros(2, dtype=dtype)
    new = th.tensor([50.0, -50.0], dtype=dtype, requires_grad=True)  # r = exp(50) and exp(-50) before the clamp
    adv = th.tensor([-1.0, 1.0], dtype=dtype)
    out = compute_policy_loss(old, new, adv, dual_clip=dual_clip)
    assert out.ratio_max.item() == pytest.approx(math.exp(10.0), rel=1e-6)
    assert out.ratio[1].item() == pytest.approx(math.exp(-10.0), rel=1e-6)
    assert th.isfinite(out.loss)
    assert out.approx_kl.item() == pytest.approx(0.0, abs=1e-6)  # -(10) and -(-10) average to 0
    # step 0: vanilla loss -A r = e^10, dual c = 3; step 1: A > 0, r < 1 - eps: loss -A r = -e^-10
    first = math.exp(10.0) if dual_clip is None else 3.0
    assert out.loss.item() == pytest.approx((first - math.exp(-10.0)) / 2, rel=1e-6)
    out.loss.backward()
    assert th.all(new.grad == 0.0)  # beyond the clamp the log-ratio is constant


def test_log_ratio_clamp_float32_no_overflow():
    # exp(100) overflows float32; the clamp keeps everything finite even with a large advantage
    old = th.zeros(4)
    new = th.tensor([100.0, 100.0, -100.0, 0.0], requires_grad=True)
    adv = th.tensor([-1e3, 1e3, -1e3, 1.0])
    out = compute_policy_loss(old, new, adv, dual_clip=None)
    assert th.isfinite(out.loss) and th.isfinite(out.ratio).all()
    out.loss.backward()
    assert th.isfinite(new.grad).all()


# --------------------------------------------------------------------------------------------------------------
# 9. pack_segments
# --------------------------------------------------------------------------------------------------------------


def test_pack_segments():
    segment_ids = th.tensor([5, 5, 7, 5, 9])
    x = th.tensor([1.0, 2.0, 3.0, 4.0, 5.0], requires_grad=True)
    y = th.tensor([10.0, 20.0, 30.0, 40.0, 50.0])
    (px, py), mask = pack_segments(segment_ids, (x, y), width=4)
    # rows in ascending id order (5, 7, 9); steps keep their order within a segment
    assert th.equal(px, th.tensor([[1.0, 2.0, 4.0, 0.0], [3.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]]))
    assert th.equal(py, th.tensor([[10.0, 20.0, 40.0, 0.0], [30.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0]]))
    expected_mask = th.tensor([[True, True, True, False], [True, False, False, False], [True, False, False, False]])
    assert mask.dtype == th.bool
    assert th.equal(mask, expected_mask)
    # gradient flows back to the flat input at the place each value went
    weights = th.arange(1.0, 13.0).reshape(3, 4)
    (px * weights).sum().backward()
    assert th.equal(x.grad, th.tensor([1.0, 2.0, 5.0, 3.0, 9.0]))


def test_pack_segments_then_seq_loss():
    """Packing then seq-mean-token-sum gives per-segment sums averaged over segments."""
    segment_ids = th.tensor([5, 5, 7, 5, 9])
    old = th.zeros(5, dtype=th.float64)
    new = th.zeros(5, dtype=th.float64, requires_grad=True)
    adv = _t([-1.0, -2.0, -3.0, -4.0, -5.0])  # r = 1, vanilla: per-step loss -A
    (p_old, p_new, p_adv), mask = pack_segments(segment_ids, (old, new, adv), width=3)
    out = compute_policy_loss(p_old, p_new, p_adv, mask, dual_clip=None, loss_agg_mode="seq-mean-token-sum")
    assert out.loss.item() == pytest.approx((1 + 2 + 4 + 3 + 5) / 3)  # segments {1,2,4}, {3}, {5}
    out.loss.backward()
    th.testing.assert_close(new.grad, _t([1.0, 2.0, 3.0, 4.0, 5.0]) / 3)  # d(-A r)/d(log r) = -A r, r = 1


def test_pack_segments_width_too_small():
    with pytest.raises(ValueError, match="width=2"):
        pack_segments(th.tensor([5, 5, 7, 5, 9]), (th.zeros(5),), width=2)


def test_pack_segments_bad_shapes():
    with pytest.raises(ValueError):
        pack_segments(th.tensor([0, 0, 1]), (th.zeros(4),), width=4)
    with pytest.raises(ValueError):
        pack_segments(th.tensor([[0, 0, 1]]), (th.zeros(1, 3),), width=4)


# --------------------------------------------------------------------------------------------------------------
# 10. Decoupled PPO
# --------------------------------------------------------------------------------------------------------------


def _random_batch(seed, shape=(4, 6), dtype=th.float32, scale=0.3):
    gen = th.Generator().manual_seed(seed)
    old = th.randn(shape, generator=gen, dtype=dtype)
    new = old + scale * th.randn(shape, generator=gen, dtype=dtype)
    adv = th.randn(shape, generator=gen, dtype=dtype)
    mask = th.rand(shape, generator=gen) > 0.3
    mask[-1] = False  # a sequence with no valid step
    new[0, :2] = old[0, :2] + math.log(5.0)  # two valid steps with A < 0 and r = 5 > c = 3: the bound is active
    adv[0, :2] = -1.0
    mask[0, :2] = True
    return old, new, adv, mask


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("dual_clip", [None, 3.0])
@pytest.mark.parametrize("use_mask", [False, True])
def test_decoupled_equals_policy_loss_when_prox_is_mu(mode, dual_clip, use_mask):
    old, new, adv, mask = _random_batch(seed=3, scale=1.5)  # scale 1.5: some steps clipped and bounded
    mask = mask if use_mask else None
    new_a = new.clone().requires_grad_(True)
    new_b = new.clone().requires_grad_(True)
    kwargs = dict(clip_range=0.2, dual_clip=dual_clip, loss_agg_mode=mode)
    ref = compute_policy_loss(old, new_a, adv, mask, **kwargs)
    dec = compute_decoupled_policy_loss(old, old.clone(), new_b, adv, mask, **kwargs)
    assert th.equal(dec.loss, ref.loss)
    for field in ("clip_fraction", "approx_kl", "clip_fraction_lower", "ratio_max"):
        assert th.equal(getattr(dec, field), getattr(ref, field)), field
    assert dec.is_weight_mean.item() == 1.0 and dec.is_weight_max.item() == 1.0
    assert dec.is_weight_truncated.item() == 0.0 and dec.is_ess.item() == 1.0
    ref.loss.backward()
    dec.loss.backward()
    assert th.equal(new_a.grad, new_b.grad)
    if dual_clip is not None:
        assert ref.clip_fraction_lower.item() > 0  # the bound is exercised


def test_decoupled_hand_computed_truncation():
    # step 0: pi_prox / mu = 200 -> w = min(200, 100) = 100; r' = 1.5, A = 2: inner = max(-3, -2.4) = -2.4
    # step 1: pi_prox / mu = 0.5 -> w = 0.5; r' = 1, A = 1: inner = -1
    old = _t([0.0, 0.0])
    prox = _t([math.log(200.0), math.log(0.5)])
    new = prox + _t([math.log(1.5), 0.0])
    adv = _t([2.0, 1.0])
    out = compute_decoupled_policy_loss(old, prox, new, adv, is_weight_max=100.0)
    assert out.loss.item() == pytest.approx((100 * -2.4 + 0.5 * -1.0) / 2, rel=1e-12)  # -120.25
    assert out.is_weight_truncated.item() == 0.5
    assert out.is_weight_max.item() == pytest.approx(100.0)
    assert out.is_weight_mean.item() == pytest.approx((100.0 + 0.5) / 2)
    assert out.is_ess.item() == pytest.approx(100.5**2 / (2 * (100.0**2 + 0.5**2)))
    assert out.clip_fraction.item() == 0.5  # against pi_prox: step 0 clipped at 1.2
    assert out.ratio_max.item() == pytest.approx(1.5)
    assert out.approx_kl.item() == pytest.approx(-math.log(1.5) / 2)  # mean of prox - new


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_decoupled_filter_masks_exactly_the_steps_above_the_cap(mode):
    """AReaL's filter: a step whose pi_prox / mu exceeds the cap gets weight 0 (the denominators still count it);
    truncate gives it the cap instead. Two sequences of three steps, the last step of sequence 1 padded."""
    weights = [[200.0, 0.5, 3.0], [5.0, 6.0, 1.0]]  # pi_prox / mu; cap 5: 200 and 6 are above, 5 is not
    old = th.zeros(2, 3, dtype=th.float64)
    prox = th.log(_t(weights))
    new = prox.clone()  # r' = 1: the inner term is -A
    adv = _t([[1.0, 2.0, -1.0], [4.0, -2.0, 8.0]])
    mask = th.tensor([[True, True, True], [True, True, False]])
    filt = compute_decoupled_policy_loss(old, prox, new, adv, mask, is_weight_max=5.0, is_weight_mode="filter",
                                         loss_agg_mode=mode)
    trunc = compute_decoupled_policy_loss(old, prox, new, adv, mask, is_weight_max=5.0, loss_agg_mode=mode)
    # per step w * (-A): filter [[0, -1, 3], [-20, 0, pad]]; truncate [[-5, -1, 3], [-20, 10, pad]]
    expected = {
        "token-mean": ((0 - 1 + 3 - 20 + 0) / 5, (-5 - 1 + 3 - 20 + 10) / 5),
        "seq-mean-token-sum": (((0 - 1 + 3) + (-20 + 0)) / 2, ((-5 - 1 + 3) + (-20 + 10)) / 2),
        "seq-mean-token-mean": (((0 - 1 + 3) / 3 + (-20 + 0) / 2) / 2, ((-5 - 1 + 3) / 3 + (-20 + 10) / 2) / 2),
        "seq-mean-token-sum-norm": ((0 - 1 + 3 - 20 + 0) / 3, (-5 - 1 + 3 - 20 + 10) / 3),
    }[mode]
    assert filt.loss.item() == pytest.approx(expected[0], rel=1e-12)
    assert trunc.loss.item() == pytest.approx(expected[1], rel=1e-12)
    assert filt.is_weight_filtered.item() == pytest.approx(2 / 5) and filt.is_weight_truncated.item() == 0.0
    assert trunc.is_weight_truncated.item() == pytest.approx(2 / 5) and trunc.is_weight_filtered.item() == 0.0
    assert filt.is_weight_max.item() == pytest.approx(5.0)  # the largest weight kept


@FAST
@given(data=steps(max_size=12), prox_log=st.lists(st.floats(-3.0, 3.0), min_size=12, max_size=12),
       mode=st.sampled_from(LOSS_AGG_MODES), dual_clip=st.one_of(st.none(), dual_clips))
def test_decoupled_filter_equals_truncate_below_the_cap(data, prox_log, mode, dual_clip):
    """With a cap no weight reaches (e^3 < 100), filter and truncate are the same loss and gradient."""
    log_ratio, adv = data
    n = len(adv)
    old = th.zeros(1, n, dtype=th.float64)
    prox = _t(prox_log[:n]).reshape(1, n)
    outs = []
    for is_weight_mode in IS_WEIGHT_MODES:
        new = (prox + log_ratio.reshape(1, n)).detach().requires_grad_(True)
        out = compute_decoupled_policy_loss(old, prox, new, adv.reshape(1, n), is_weight_mode=is_weight_mode,
                                            dual_clip=dual_clip, loss_agg_mode=mode)
        out.loss.backward()
        outs.append((out.loss.detach(), new.grad, out.is_weight_truncated + out.is_weight_filtered))
    assert th.equal(outs[0][0], outs[1][0]) and th.equal(outs[0][1], outs[1][1])
    assert outs[0][2].item() == outs[1][2].item() == 0.0


def test_unknown_is_weight_mode_raises():
    x = th.zeros(3)
    with pytest.raises(ValueError, match="is_weight_mode='clip' is unknown"):
        compute_decoupled_policy_loss(x, x, x, x, is_weight_mode="clip")


@pytest.mark.parametrize(
    "dual_clip, expected_step0, expected_lower",
    [
        (None, 2.0 * 5.0, 0.0),  # w * max(-A r', -A clip(r')) = 2 * 5
        (3.0, 2.0 * 3.0, 0.5),  # w * min(5, -c A) = 2 * 3: objective w * max(inner, c A) = -6
        (6.0, 2.0 * 5.0, 0.0),  # r' = 5 < c
    ],
)
def test_decoupled_dual_clip_composition(dual_clip, expected_step0, expected_lower):
    # step 0: A = -1, w = pi_prox / mu = 2, r' = 5; step 1: A = -1, w = 2, r' = 2 (< c, so w * 2 = 4 always)
    old = _t([0.0, 0.0])
    prox = _t([math.log(2.0), math.log(2.0)])
    new = prox + _t([math.log(5.0), math.log(2.0)])
    adv = _t([-1.0, -1.0])
    out = compute_decoupled_policy_loss(old, prox, new, adv, dual_clip=dual_clip)
    assert out.loss.item() == pytest.approx((expected_step0 + 4.0) / 2, rel=1e-12)
    assert out.clip_fraction_lower.item() == expected_lower


@FAST
@given(
    data=steps(max_size=12),
    prox_log=st.lists(st.floats(-8.0, 8.0), min_size=12, max_size=12),
    dual_clip=st.one_of(st.none(), dual_clips),
    is_weight_max=st.floats(0.5, 200.0),
)
def test_decoupled_matches_reference(data, prox_log, dual_clip, is_weight_max):
    log_ratio, adv = data
    n = len(adv)
    old = th.zeros(n, dtype=th.float64)
    prox = _t(prox_log[:n])
    new = prox + log_ratio
    out = compute_decoupled_policy_loss(old, prox, new, adv, dual_clip=dual_clip, is_weight_max=is_weight_max)
    ratio = th.exp(th.clamp(new - prox, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    w = th.clamp(th.exp(prox - old), max=is_weight_max)
    ppo = _reference_per_step(ratio, adv, 0.2, 0.2, None)
    inner = ppo if dual_clip is None else th.where(adv < 0, th.minimum(ppo, -dual_clip * adv), ppo)
    th.testing.assert_close(out.loss, (w * inner).mean(), rtol=1e-12, atol=1e-12)
    if dual_clip is not None:  # objective per step >= w * c * A, so the mean too
        assert -out.loss.item() >= (w * dual_clip * th.clamp(adv, max=0.0)).mean().item() - 1e-9
    assert out.is_weight_max.item() <= is_weight_max
    assert 0.0 < out.is_ess.item() <= 1.0 + 1e-12


def test_decoupled_no_gradient_into_prox():
    old, new, adv, mask = _random_batch(seed=7)
    prox = (old + 0.1).requires_grad_(True)
    new = new.requires_grad_(True)
    out = compute_decoupled_policy_loss(old, prox, new, adv, mask, dual_clip=3.0)
    out.loss.backward()
    assert prox.grad is None
    assert new.grad is not None and new.grad.abs().sum() > 0


def test_decoupled_gradient_is_weighted():
    # d loss / d log_prob = w * d inner / d log_prob: A = 1, r' = 1 (inside), w = 4 -> -w * A * r' / N = -4 / 1
    old, prox = _t([0.0]), _t([math.log(4.0)])
    new = prox.clone().requires_grad_(True)
    out = compute_decoupled_policy_loss(old, prox, new, _t([1.0]))
    out.loss.backward()
    assert new.grad.item() == pytest.approx(-4.0)


def test_effective_sample_size():
    # (1 + 2 + 3)^2 / (3 * (1 + 4 + 9)) = 36 / 42
    assert effective_sample_size(_t([1.0, 2.0, 3.0])).item() == pytest.approx(6 / 7)
    assert effective_sample_size(_t([5.0, 5.0, 5.0, 5.0])).item() == pytest.approx(1.0)
    assert effective_sample_size(_t([1.0, 0.0, 0.0, 0.0])).item() == pytest.approx(1 / 4)
    assert th.isfinite(effective_sample_size(_t([0.0, 0.0])))


def test_decoupled_is_ess_masked():
    # weights pi_prox / mu = 1, 2, 3 on valid steps and 50 on a padded one: ESS 6/7, the padded weight ignored
    old = th.zeros(1, 4, dtype=th.float64)
    prox = th.log(_t([[1.0, 2.0, 3.0, 50.0]]))
    mask = th.tensor([[True, True, True, False]])
    out = compute_decoupled_policy_loss(old, prox, prox.clone(), th.ones(1, 4, dtype=th.float64), mask)
    assert out.is_ess.item() == pytest.approx(6 / 7)
    assert out.is_weight_max.item() == pytest.approx(3.0)
    assert out.is_weight_mean.item() == pytest.approx(2.0)
    assert out.is_weight_truncated.item() == 0.0
    assert out.loss.item() == pytest.approx(-(1.0 + 2.0 + 3.0) / 3)  # A = 1, r' = 1: -w per step


# --------------------------------------------------------------------------------------------------------------
# 11. Bit-equality with stock SB3's PPO loss
# --------------------------------------------------------------------------------------------------------------


def _sb3_policy_loss(old_log_prob, log_prob, advantages, clip_range):
    """The policy loss as written in stable-baselines3's ``PPO.train``."""
    ratio = th.exp(log_prob - old_log_prob)
    policy_loss_1 = advantages * ratio
    policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
    return -th.min(policy_loss_1, policy_loss_2).mean()


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 256),
    clip_range=st.sampled_from([0.1, 0.2, 0.3]) | clip_ranges,
    scale=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    dtype=st.sampled_from([th.float32, th.float64]),
)
def test_bit_identical_to_sb3(seed, n, clip_range, scale, dtype):
    gen = th.Generator().manual_seed(seed)
    old = th.randn(n, generator=gen, dtype=dtype)
    new = old + scale * th.randn(n, generator=gen, dtype=dtype)
    adv = th.randn(n, generator=gen, dtype=dtype)
    new_ours, new_sb3 = new.clone().requires_grad_(True), new.clone().requires_grad_(True)
    ours = compute_policy_loss(old, new_ours, adv, clip_range=clip_range, dual_clip=None)
    sb3 = _sb3_policy_loss(old, new_sb3, adv, clip_range)
    assert th.equal(ours.loss, sb3)
    ours.loss.backward()
    sb3.backward()
    assert th.equal(new_ours.grad, new_sb3.grad)


def test_bit_identical_to_sb3_minibatch():
    """A realistic SB3 minibatch (64 float32 steps, normalised advantages), including steps on the clip edge."""
    gen = th.Generator().manual_seed(0)
    old = th.randn(64, generator=gen)
    new = old + 0.2 * th.randn(64, generator=gen)
    new[:2] = old[:2]  # ratio exactly 1
    adv = th.randn(64, generator=gen)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    new_ours, new_sb3 = new.clone().requires_grad_(True), new.clone().requires_grad_(True)
    ours = compute_policy_loss(old, new_ours, adv, dual_clip=None)
    sb3 = _sb3_policy_loss(old, new_sb3, adv, 0.2)
    assert th.equal(ours.loss, sb3)
    ours.loss.backward()
    sb3.backward()
    assert th.equal(new_ours.grad, new_sb3.grad)
    assert 0 < ours.clip_fraction.item() < 1
