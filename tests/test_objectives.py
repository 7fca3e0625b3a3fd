"""agents/objectives.py: one objective per arm, rebuilt from the model's saved settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch as th

from agents import ALGOS
from agents.buffer import LaggedRolloutBufferSamples
from agents.objectives import ClippedSurrogate, Decoupled, DualClip
from tests.helpers import tiny_model


def _minibatch(old, prox):
    n = len(old)
    return LaggedRolloutBufferSamples(None, None, th.zeros(n), old, th.zeros(n), th.zeros(n), th.zeros(n, dtype=th.long),
                                      prox)


def test_each_arm_has_its_objective() -> None:
    assert type(tiny_model(ALGOS["ppo"]).objective) is ClippedSurrogate
    assert tiny_model(ALGOS["dualclip"], dual_clip=5.0).objective == DualClip(5.0, n_steps=64)
    assert tiny_model(ALGOS["decoupled"], is_weight_max=5.0, is_weight_mode="filter").objective == Decoupled(
        None, n_steps=64, is_weight_max=5.0, is_weight_mode="filter")
    assert ClippedSurrogate.needs_prox is False and DualClip.needs_prox is False and Decoupled.needs_prox is True
    assert Decoupled.max_metrics == {"ratio_max_minibatch", "is_weight_max"}


@pytest.mark.parametrize("algo, settings", [("dualclip", dict(dual_clip=5.0, clip_range_low=0.1)),
                                            ("decoupled", dict(dual_clip=2.0, is_weight_max=5.0,
                                                               is_weight_mode="filter"))])
def test_a_loaded_model_has_the_objective_it_was_saved_with(tmp_path: Path, algo: str, settings: dict) -> None:
    """PPO.load calls __init__ with the defaults and then restores the attributes: the objective must be built after
    that, from the saved settings (c = 5 must not come back as the default 3)."""
    model = tiny_model(ALGOS[algo], **settings)
    model.save(tmp_path / "m.zip")
    again = ALGOS[algo].load(tmp_path / "m.zip", device="cpu")
    assert again.objective == model.objective and again.objective.dual_clip == settings["dual_clip"]


def test_clipped_surrogate_is_sb3s_lines() -> None:
    """A hand-checked case: A = -10, r = 100, eps = 0.2: SB3's term is max(1000, 12) = 1000 (unbounded); dual clip
    with c = 3 bounds it at 30; the decoupled term with pi_prox = pi_theta is the weighted (unclipped) term."""
    old, new, adv = th.log(th.tensor([0.01])), th.log(th.tensor([1.0])), th.tensor([-10.0])
    loss, metrics = ClippedSurrogate().policy_term(_minibatch(old, old), new, adv, 0.2)
    assert loss.item() == pytest.approx(1000.0) and metrics == {}
    loss, metrics = DualClip(3.0, n_steps=1).policy_term(_minibatch(old, old), new, adv, 0.2)
    assert loss.item() == pytest.approx(30.0) and metrics["pg_clipfrac_lower"].item() == 1.0
    # pi_prox = pi_theta: r' = 1, so the term is -w * A with w = pi_prox / mu = 100, exactly the default cap w_max
    loss, metrics = Decoupled(None, n_steps=1).policy_term(_minibatch(old, new), new, adv, 0.2)
    assert loss.item() == pytest.approx(1000.0, rel=1e-5) and metrics["is_weight_max"].item() == pytest.approx(100.0)


@pytest.mark.parametrize("settings, match", [(dict(dual_clip=1.0), "dual_clip=1.0 must be > 1"),
                                             (dict(loss_agg_mode="sum"), "loss_agg_mode='sum' is unknown"),
                                             (dict(is_weight_mode="clip"), "is_weight_mode='clip' is unknown"),
                                             (dict(is_weight_max=0), "is_weight_max=0 must be a number > 0")])
def test_bad_settings_raise_naming_the_value(settings: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Decoupled(**settings)
