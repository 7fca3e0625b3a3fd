"""PPO-EWMA (agents/ewma.py): the decoupled arm's ``prox="ewma"``, its average, checkpoints, refusals, labels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from agents import ALGOS, DecoupledPPO
from agents.checkpoint import read_checkpoint, restore_env, restore_model, save_checkpoint
from agents.ewma import ProximalEWMA, actor_parameter_names
from agents.seed_batch import SeedBatch, check_batchable
from tests.helpers import flat_params, run_script, tiny_model


def _quiet(model):
    model.set_logger(configure(None, []))
    return model


def _ewma_tensors(model) -> dict:
    return model.prox_ewma.state()["tensors"]


def _actor(model) -> dict:
    params = dict(model.policy.named_parameters())
    return {name: params[name] for name in actor_parameter_names(model.policy)}


# ------------------------------------------------------------------------------------------------ the average
def test_hand_computed_ewma_over_three_updates() -> None:
    """openai/ppo-ewma's debiased rule with beta = 0.5 on actor parameters set to 0, then 1, 2, 4 (every entry of
    every actor tensor the same number, so each average is one number). W starts at 1 with the initial parameters:

    update 1 (theta = 1): W = 0.5 * 1 + 1 = 1.5,    ewma = 0 * (0.5 * 1 / 1.5) + 1 / 1.5      = 2/3 = 0.666667
    update 2 (theta = 2): W = 0.5 * 1.5 + 1 = 1.75, ewma = (2/3) * (0.75 / 1.75) + 2 / 1.75   = 2.5/1.75 = 1.428571
    update 3 (theta = 4): W = 0.5 * 1.75 + 1 = 1.875, ewma = 1.428571 * (0.875 / 1.875) + 4 / 1.875 = 5.25/1.875 = 2.8

    Check on the closed form sum_k beta^k theta_(t-k) / sum_k beta^k: after update 3 the weights are 1, 0.5, 0.25,
    0.125 on 4, 2, 1, 0: (4 + 1 + 0.25 + 0) / 1.875 = 2.8. A plain lerp (no debiasing) would give 0.5 * 4 + 0.25 * 2
    + 0.125 * 1 + 0.125 * 0 = 2.625 instead. The critic is not averaged: it keeps the copy's starting values.
    """
    policy = tiny_model(ALGOS["decoupled"], "Pendulum-v1").policy
    ewma = ProximalEWMA(0.5)
    actor = [p for name, p in policy.named_parameters() if name in actor_parameter_names(policy)]
    with th.no_grad():
        for p in actor:
            p.fill_(0.0)
    critic_before = {n: p.detach().clone() for n, p in policy.named_parameters() if n.startswith("value_net.")}
    ewma.log_prob(policy, th.zeros(1, 3), th.zeros(1, 1))  # first read: the average starts from the learner (0)
    with th.no_grad():
        for p in policy.parameters():
            p.add_(1.0)  # the critic moves too: the average must not follow it
    for theta, weight, expected in ((1.0, 1.5, 2 / 3), (2.0, 1.75, 2.5 / 1.75), (4.0, 1.875, 2.8)):
        with th.no_grad():
            for p in actor:
                p.fill_(theta)
        ewma.update(policy)
        assert ewma.total_weight == pytest.approx(weight, abs=1e-12)
        for name, tensor in ewma.state()["tensors"].items():
            assert th.allclose(tensor, th.full_like(tensor, expected), atol=1e-6), name
    assert set(ewma.state()["tensors"]) == set(actor_parameter_names(policy)) and "log_std" in ewma.state()["tensors"]
    copy = dict(ewma.module.named_parameters())
    assert all(th.equal(copy[n], t) for n, t in critic_before.items())


def test_the_average_takes_in_every_optimiser_step() -> None:
    """n_steps 64, batch 32, 2 epochs: 4 optimiser steps per update, so after 2 updates W = sum_(i=0..8) beta^i."""
    m = _quiet(tiny_model(ALGOS["decoupled"], "Pendulum-v1", prox="ewma", prox_ewma_beta=0.9, policy_lag=1))
    m.learn(2 * 64)
    assert m.prox_ewma.total_weight == pytest.approx(sum(0.9**i for i in range(9)), rel=1e-12)
    assert not any(th.equal(t, _actor(m)[n]) for n, t in _ewma_tensors(m).items() if n != "log_std")


def test_beta_zero_is_the_current_learner_bit_for_bit() -> None:
    """beta = 0: W = 1 and the average *is* the learner after every step (0 * old + theta / 1, exact), so in each
    minibatch pi_prox = pi_theta bit for bit: r' = 1 and the clip never acts (pg_clipfrac and ppo_kl exactly 0).
    This is the paper's method at beta = 0 (no trust region), not ``prox="start"``: see the next test."""
    m = _quiet(tiny_model(ALGOS["decoupled"], "Pendulum-v1", prox="ewma", prox_ewma_beta=0.0, policy_lag=2,
                          learning_rate=3e-3))
    m.learn(3 * 64)
    assert all(th.equal(t, _actor(m)[n]) for n, t in _ewma_tensors(m).items())
    assert m.logger.name_to_value["train/pg_clipfrac"] == 0.0 and m.logger.name_to_value["train/ppo_kl"] == 0.0


@pytest.mark.parametrize("policy_lag", [0, 2])
def test_beta_zero_with_one_step_per_update_equals_start(policy_lag: int) -> None:
    """Where ``start`` and the paper's ewma can coincide: one optimiser step per update (1 epoch, one minibatch of
    the whole rollout) and beta = 0, so the minibatch's pi_prox is the learner at the start of the update in both.
    Asserted to float tolerance: start reads pi_prox from the learner's batched pass over the rollout (or, for steps
    acted with lag 0, log mu stored while acting, one step of the envs at a time), ewma from a pass over the shuffled
    minibatch: the same parameters in matmuls of other shapes, which nothing promises to round alike. On the
    machine this was written on (AMD EPYC, torch 2.13 CPU) the parameters were in fact equal bit for bit at both
    lags."""
    kwargs = dict(policy_lag=policy_lag, n_epochs=1, batch_size=128, n_envs=2, learning_rate=3e-3)
    start = _quiet(tiny_model(ALGOS["decoupled"], "Pendulum-v1", **kwargs))
    start.learn(3 * 128)
    ewma = _quiet(tiny_model(ALGOS["decoupled"], "Pendulum-v1", prox="ewma", prox_ewma_beta=0.0, **kwargs))
    ewma.learn(3 * 128)
    assert th.allclose(flat_params(start), flat_params(ewma), rtol=0, atol=1e-5)
    assert not th.equal(flat_params(start), flat_params(tiny_model(ALGOS["decoupled"], "Pendulum-v1", **kwargs)))


def test_start_is_unchanged_and_builds_no_average() -> None:
    m = tiny_model(ALGOS["decoupled"])
    assert m.prox == "start" and m.prox_ewma is None and m.objective.ewma_beta is None
    assert tiny_model(ALGOS["ppo"]).prox_ewma is None


# ----------------------------------------------------------------------------------------------- checkpoints
def _ewma_model(seed: int = 3):
    return _quiet(tiny_model(ALGOS["decoupled"], "CartPole-v1", n_envs=2, seed=seed, prox="ewma",
                             prox_ewma_beta=0.5, policy_lag=2, learning_rate=3e-3))


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    """Train 2 updates, checkpoint, resume to 5 == train to 5 straight, bit for bit (CartPole pickles faithfully, so
    the environments come back exactly too). Without the average's state the resumed run differs: it is needed."""
    straight = _ewma_model()
    straight.learn(5 * 128)
    first = _ewma_model()
    first.learn(2 * 128)
    save_checkpoint(first, tmp_path / "c.pkl")
    state = read_checkpoint(tmp_path / "c.pkl")
    assert state["prox_ewma"]["total_weight"] == first.prox_ewma.total_weight

    def resume(checkpoint: dict):
        env = restore_env(checkpoint, make_vec_env("CartPole-v1", n_envs=2, seed=3))
        model = _quiet(restore_model(DecoupledPPO, checkpoint, env, "cpu"))
        model.learn(3 * 128, reset_num_timesteps=False)
        return model

    again = resume(state)
    assert again.num_timesteps == straight.num_timesteps == 5 * 128
    assert th.equal(flat_params(again), flat_params(straight))
    assert again.prox_ewma.total_weight == straight.prox_ewma.total_weight
    assert all(th.equal(t, _ewma_tensors(straight)[n]) for n, t in _ewma_tensors(again).items())
    forgotten = resume({**read_checkpoint(tmp_path / "c.pkl"), "prox_ewma": None})
    assert not th.equal(flat_params(forgotten), flat_params(straight))


def test_a_saved_model_keeps_its_settings(tmp_path: Path) -> None:
    m = tiny_model(ALGOS["decoupled"], prox="ewma", prox_ewma_beta=0.95)
    m.save(tmp_path / "m.zip")
    again = DecoupledPPO.load(tmp_path / "m.zip", device="cpu")
    assert again.objective == m.objective and again.prox_ewma.beta == 0.95


# ------------------------------------------------------------------------------------------- refusals, labels
def test_a_seed_of_a_batch_does_not_depend_on_its_batch() -> None:
    """Seed batches take prox=ewma (the averages are stacked, tests/test_seed_batch.py checks one batched update
    against the single-run code): seed 3 alone and inside a batch of three ends with the same parameters and the
    same average, bit for bit, and exports its average to its model (checkpoints)."""
    def make(seed: int):
        return tiny_model(ALGOS["decoupled"], "Pendulum-v1", n_envs=2, seed=seed, prox="ewma", prox_ewma_beta=0.5,
                          policy_lag=2, learning_rate=3e-3)

    check_batchable(make(3))
    alone = make(3)
    SeedBatch([alone]).learn(3 * 128)
    batch = [make(seed) for seed in (1, 2, 3)]
    SeedBatch(batch).learn(3 * 128)
    assert th.equal(flat_params(alone), flat_params(batch[2]))
    assert alone.prox_ewma.total_weight == batch[2].prox_ewma.total_weight
    # 3 updates x 8 optimiser steps (128 steps / 32 per minibatch x 2 epochs): W = sum_(i=0..24) 0.5^i
    assert alone.prox_ewma.total_weight == pytest.approx(sum(0.5**i for i in range(25)), rel=1e-12)
    assert all(th.equal(t, _ewma_tensors(batch[2])[n]) for n, t in _ewma_tensors(alone).items())
    assert not th.equal(_ewma_tensors(batch[1])["log_std"], _ewma_tensors(batch[2])["log_std"]) or not th.equal(
        _ewma_tensors(batch[1])["action_net.weight"], _ewma_tensors(batch[2])["action_net.weight"])


def test_a_batch_rebuilt_from_its_models_continues_exactly() -> None:
    """A seed batch exports each seed's average to its model, and a batch built from those models (as a resumed
    one is) takes them back: 2 updates, a new batch, 1 more == 3 straight, bit for bit; not without the averages."""
    def make(seed: int):
        return tiny_model(ALGOS["decoupled"], "Pendulum-v1", n_envs=2, seed=seed, prox="ewma", prox_ewma_beta=0.5,
                          policy_lag=2, learning_rate=3e-3)

    straight = [make(seed) for seed in (1, 2)]
    SeedBatch(straight).learn(3 * 128)
    for forget in (False, True):
        parts = [make(seed) for seed in (1, 2)]
        SeedBatch(parts).learn(2 * 128)
        if forget:
            for m in parts:
                m.prox_ewma.load_state(m.policy, None)
        SeedBatch(parts).learn(128, reset_num_timesteps=False)
        same = [th.equal(flat_params(a), flat_params(b)) for a, b in zip(straight, parts)]
        assert same == ([False, False] if forget else [True, True])


@pytest.mark.parametrize("settings, match", [(dict(prox="average"), "prox='average' is unknown"),
                                             (dict(prox="ewma", prox_ewma_beta=1.0), "prox_ewma_beta=1.0 must be")])
def test_bad_settings_raise_naming_the_value(settings: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_model(ALGOS["decoupled"], **settings)


@pytest.mark.parametrize("argv, line", [
    (["--algo", "ppo", "--env", "CartPole-v1", "--prox", "ewma"], "--prox ewma: --algo ppo has no prox"),
    (["--algo", "decoupled", "--env", "CartPole-v1", "--prox-ewma-beta", "0.9"], "has no effect without prox ewma"),
    (["--algo", "decoupled", "--env", "CartPole-v1", "--prox", "ewma", "--prox-ewma-beta", "1"], "beta must be in"),
])
def test_cli_refuses_in_one_line(tmp_path: Path, argv: list, line: str) -> None:
    res = run_script("train.py", [*argv, "-f", str(tmp_path)])
    assert res.returncode == 2 and line in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not any(tmp_path.iterdir())


def test_beta_with_prox_from_params_is_taken() -> None:
    """prox may come from -params (or the YAML): the beta flag is checked against the merged config."""
    import train

    args = train.parse_args(["--algo", "decoupled", "--env", "CartPole-v1", "-params", "prox:ewma",
                             "--prox-ewma-beta", "0.99"])
    config = train.build_config(args)
    assert config["prox"] == "ewma" and config["prox_ewma_beta"] == 0.99


def test_grid_names_and_report_label() -> None:
    from studies.grid import load_grid
    from studies.report import variant_label

    study, runs = load_grid(Path(__file__).resolve().parents[1] / "ablations" / "decoupled_ewma.yml")
    assert study == "mujoco_study" and len(runs) == 15
    assert "HalfCheetah-v4_decoupled_lag8_ewma_s1" in {r.name for r in runs}
    assert all(r.argv[r.argv.index("--prox") + 1] == "ewma" for r in runs)
    assert variant_label({"algo": "decoupled", "prox": "ewma", "prox_ewma_beta": 0.889}) == "decoupled ewma"
    assert variant_label({"algo": "decoupled", "prox": "ewma", "prox_ewma_beta": 0.99}) == "decoupled ewma β=0.99"
    assert variant_label({"algo": "decoupled", "prox": "start", "prox_ewma_beta": 0.889}) == "decoupled"
