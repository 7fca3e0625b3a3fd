"""MinAtar in the suite (envs/minatar.py, agents/networks.py): every id, the CNN on both training paths, lag-0
equivalence with stock SB3, true scores in evaluation, the sweep and report, and the missing-package error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch as th
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor

import envs
from agents import ALGOS, DualClipPPO
from agents.networks import MinAtarCNN
from agents.seed_batch import SeedBatch, check_batchable
from cli.hyperparams import HyperparamError, load_hyperparams, to_constructor_kwargs
from envs import EnvError, check_env_id, make_env
from envs.minatar import minatar_ids
from tests.helpers import ROOT, assert_batched_forward_matches, flat_params, run_script

pytest.importorskip("minatar")

#: tiny settings with the MinAtar network (the entry's own network, a fraction of its budget)
CNN = dict(policy_kwargs=dict(features_extractor_class=MinAtarCNN, net_arch=[]), device="cpu")
TINY = dict(n_steps=32, batch_size=32, n_epochs=2, **CNN)
#: (id, channels, actions): the five minimal action sets (-v1) and MinAtar's full set of 6 (-v0)
GAMES = [("MinAtar/Asterix-v1", 4, 5), ("MinAtar/Breakout-v1", 4, 3), ("MinAtar/Freeway-v1", 7, 3),
         ("MinAtar/Seaquest-v1", 10, 6), ("MinAtar/SpaceInvaders-v1", 6, 4), ("MinAtar/Breakout-v0", 4, 6)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread, as train.py runs (--num-threads 1): on a busy 2-core machine a second thread made these
    small convolutions ~15x slower."""
    before = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(before)


def tiny(cls, env_id="MinAtar/Breakout-v1", seed=0, n_envs=2, **kwargs):
    return cls("MlpPolicy", make_env(env_id, n_envs=n_envs, seed=seed), seed=seed, **{**TINY, **kwargs})


@pytest.mark.parametrize("env_id,channels,n_actions", GAMES)
def test_every_game_builds_and_trains(env_id, channels, n_actions):
    """Channel-first 0/1 uint8 frames, the game's action set, and one rollout and update of dualclip with the
    MinAtar CNN."""
    model = tiny(DualClipPPO, env_id)
    assert model.observation_space.shape == (channels, 10, 10) and model.observation_space.dtype == np.uint8
    assert model.action_space.n == n_actions
    obs = model.env.reset()
    assert obs.shape == (2, channels, 10, 10) and set(np.unique(obs)) <= {0, 1}
    model.learn(64)
    assert model.num_timesteps == 64 and th.isfinite(flat_params(model)).all()


def test_every_id_is_registered_and_finds_the_minatar_entry():
    """Ten ids (five games x two action sets), each with the ``minatar`` entry of hyperparams/ppo.yml, whose
    network is named, not eval-ed; an unknown extractor name is one line naming the known ones."""
    assert len(minatar_ids()) == 10
    for env_id in minatar_ids():
        check_env_id(env_id)
        config = load_hyperparams(ROOT / "hyperparams" / "ppo.yml", env_id, atari=False)
        assert config["n_envs"] == 64 and config["policy_kwargs"]["features_extractor_class"] == "MinAtarCNN"
    kwargs = to_constructor_kwargs(config)
    assert kwargs["policy_kwargs"]["features_extractor_class"] is MinAtarCNN
    with pytest.raises(HyperparamError, match="features_extractor_class='NatureCNNX' is unknown: choose one of "):
        to_constructor_kwargs({"policy_kwargs": {"features_extractor_class": "NatureCNNX"}})


def test_missing_minatar_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setattr(envs, "HAS_MINATAR", False)
    with pytest.raises(EnvError) as info:
        check_env_id("MinAtar/Breakout-v1")
    assert str(info.value) == "env 'MinAtar/Breakout-v1' needs MinAtar: pip install -e '.[minatar]'"


def test_monitor_return_is_the_game_score():
    """No reward clipping anywhere: rewards are the game's own (0 or 1 per step) and a Monitor's episode return
    is their sum, i.e. the score; a seeded reset replays the same episode."""
    def episode(seed):
        env = Monitor(envs.minatar.MinAtarEnv("breakout"))
        env.reset(seed=seed)
        rng, rewards = np.random.default_rng(seed), []
        while True:
            _, reward, terminated, truncated, info = env.step(rng.integers(3))
            rewards.append(reward)
            if terminated or truncated:
                return rewards, info["episode"]["r"]

    for seed in range(5):
        rewards, score = episode(seed)
        assert set(rewards) <= {0.0, 1.0} and score == sum(rewards)
        assert episode(seed) == (rewards, score)


def test_episodes_that_never_end_are_truncated():
    """Seaquest's submarine starts at the surface: a policy that never dives plays forever, so every id truncates
    (10,000 steps; env_kwargs max_episode_steps changes it) and an evaluation always returns."""
    import gymnasium as gym

    assert all(gym.spec(env_id).max_episode_steps == 10_000 for env_id in minatar_ids())
    venv = make_env("MinAtar/Seaquest-v1", seed=0, env_kwargs={"max_episode_steps": 300})
    venv.reset()
    for step in range(1, 301):
        _, _, dones, infos = venv.step(np.array([0]))  # no-op: stays at the surface
        if dones[0]:
            break
    assert step == 300 and infos[0]["TimeLimit.truncated"] and infos[0]["episode"]["l"] == 300


@pytest.mark.parametrize("cls, kwargs", [(ALGOS["ppo"], {}), (DualClipPPO, {"dual_clip": None}),
                                         (ALGOS["decoupled"], {"dual_clip": None})],
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_lag0_bit_identical_to_stock_sb3(cls, kwargs):
    """Dual clip off, lag 0, the MinAtar CNN on Breakout: the parameters and Adam state of stock SB3 PPO after 3
    rollouts, bit for bit (as tests/test_agents.py on CartPole and Pendulum)."""
    stock = tiny(PPO)
    stock.learn(3 * 32 * 2)
    ours = tiny(cls, policy_lag=0, **kwargs)
    ours.learn(3 * 32 * 2)
    assert th.equal(flat_params(stock), flat_params(ours))
    assert th.equal(stock.policy.optimizer.state_dict()["state"][0]["exp_avg"],
                    ours.policy.optimizer.state_dict()["state"][0]["exp_avg"])


def test_the_seed_batch_runs_the_cnn_as_the_policy_does():
    """The batched forward (unfolded convolution, batched matmuls) gives each seed SB3's values, log-probs and
    entropies; so does a policy whose actor and critic have their own extractors."""
    for shared in (True, False):
        extra = dict(policy_kwargs=dict(CNN["policy_kwargs"], share_features_extractor=shared))
        models = [tiny(ALGOS["ppo"], "MinAtar/SpaceInvaders-v1", seed=s, **extra) for s in (1, 2)]
        for m in models:
            check_batchable(m)
        assert_batched_forward_matches(models, atol=1e-5)


def test_the_seed_batch_runs_an_mlp_on_the_flat_frame_and_refuses_other_extractors():
    """gymnax-blines' network (FlattenExtractor, MLP) is batched on MinAtar frames as well; an extractor the batch
    does not know is refused in one line."""
    mlp = dict(policy_kwargs=dict(net_arch=[32, 32]))
    models = [tiny(ALGOS["ppo"], seed=s, **mlp) for s in (1, 2)]
    batch = SeedBatch(models)
    obs = th.as_tensor(np.stack([m.env.reset() for m in models]))
    dist, values = batch._forward(batch.params, obs)
    for s, m in enumerate(models):
        v, log_prob, _ = m.policy.evaluate_actions(obs[s], dist.mode()[s])
        assert th.allclose(values[s], v.flatten(), atol=1e-5) and th.allclose(dist.log_prob(dist.mode())[s], log_prob)
    other = type("OtherCNN", (MinAtarCNN,), {})
    model = tiny(ALGOS["ppo"], policy_kwargs=dict(features_extractor_class=other, net_arch=[]))
    with pytest.raises(ValueError, match="features extractor OtherCNN") as info:
        check_batchable(model)
    assert "\n" not in str(info.value)


def test_a_seed_does_not_depend_on_its_batch():
    """Seed 3 trained alone and inside a batch of three ends with the same parameters, bit for bit (lag drawn per
    rollout, tempered actors), and one batched update equals the single-run code's to float tolerance."""
    lagged = dict(policy_lag=2, lag_mode="uniform", behavior_temperature=1.5)
    alone = tiny(ALGOS["decoupled"], seed=3, **lagged)
    SeedBatch([alone]).learn(4 * 64)
    batch = [tiny(ALGOS["decoupled"], seed=s, **lagged) for s in (1, 2, 3)]
    SeedBatch(batch).learn(4 * 64)
    expected = alone.policy.state_dict()
    got = batch[2].policy.state_dict()
    assert all(th.equal(expected[k], got[k]) for k in expected)
    assert not th.equal(batch[1].policy.state_dict()["action_net.weight"], got["action_net.weight"])


def test_each_seed_updates_as_the_single_run_code():
    """On identical inputs (parameters, Adam state, a stale and tempered rollout, minibatch order) one batched
    update gives each seed the single-run ``train()``'s parameters, to float tolerance (dual clip acting)."""
    from tests.test_seed_batch import _GlobalOrder, _copy_state

    kwargs = dict(policy_lag=2, behavior_temperature=1.5, learning_rate=3e-3)
    batched = [tiny(DualClipPPO, seed=s, **kwargs) for s in (1, 2)]
    batch = SeedBatch(batched)
    batch.learn(2 * 64)
    batch.collect_rollouts([m._init_callback(None) for m in batched])
    batch.export()
    singles = [tiny(DualClipPPO, seed=s, **kwargs) for s in (1, 2)]
    for src, dst in zip(batched, singles):
        _copy_state(src, dst)
    batch._numpy_rngs = [_GlobalOrder(100 + s) for s in range(2)]
    batch.train()
    batch.export()
    for s, (b, single) in enumerate(zip(batched, singles)):
        np.random.seed(100 + s)
        single.train()
        mine, theirs = b.policy.state_dict(), single.policy.state_dict()
        for key in mine:
            assert th.allclose(mine[key], theirs[key], rtol=1e-5, atol=1e-6), key
        assert np.isclose(b.logger.name_to_value["train/loss"], single.logger.name_to_value["train/loss"], rtol=1e-4)


def test_a_checkpoint_resumes_exactly(tmp_path: Path):
    """MinAtar's games are pure Python and numpy (their RandomState included), so the environments go into the
    checkpoint (agents/checkpoint.py FAITHFUL_PICKLE) and a resumed run ends with exactly the parameters of an
    unbroken one, mid-episode, under lag and with exploring actors. Without them it would start fresh episodes."""
    from agents.checkpoint import read_checkpoint, restore_env, restore_model, save_checkpoint

    model = tiny(ALGOS["dualclip"], "MinAtar/SpaceInvaders-v1", seed=4, policy_lag=1, behavior_temperature=1.5)
    model.learn(128)
    save_checkpoint(model, tmp_path / "checkpoint.pkl")
    model.learn(192, reset_num_timesteps=False)
    state = read_checkpoint(tmp_path / "checkpoint.pkl")
    assert state["env"] is not None
    again = restore_model(ALGOS["dualclip"], state, restore_env(state, None), "cpu")
    again.learn(192, reset_num_timesteps=False)
    assert again.num_timesteps == model.num_timesteps == 320
    assert th.equal(flat_params(again), flat_params(model))


def test_train_seeds_then_evaluate(tmp_path: Path):
    """train.py with the ``minatar`` entry (a tiny budget) on the seed-batched path, then evaluate.py on a run
    folder: whole games, integer scores (in this process: a subprocess pays ~10 s of imports)."""
    import signal

    import evaluate
    import train

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # train.py installs its own
    try:
        code = train.main(["--algo", "dualclip", "--env", "MinAtar/Breakout-v1", "-n", "128", "--seeds", "1", "2",
                           "-f", str(tmp_path), "--eval-freq", "64", "--eval-episodes", "1", "-params", "n_envs:2",
                           "n_steps:32", "batch_size:32", "n_epochs:1"])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MinAtar-Breakout-v1_dualclip_lag0_s1",
                                                          "MinAtar-Breakout-v1_dualclip_lag0_s2"]
    run_dir = tmp_path / "MinAtar-Breakout-v1_dualclip_lag0_s1"
    config = yaml.safe_load((run_dir / "config.yml").read_text())
    assert config["policy_kwargs"]["features_extractor_class"] == "MinAtarCNN" and config["gamma"] == 0.999
    assert evaluate.main([str(run_dir), "--episodes", "2", "--seed", "5"]) == 0
    out = json.loads(next(run_dir.glob("eval_2ep_*.json")).read_text())
    assert out["deterministic"] and len(out["returns"]) == 2 and out["return_kind"].startswith("game score")
    assert all(r >= 0 and r == int(r) for r in out["returns"])


@pytest.mark.slow
def test_sweep_and_report(tmp_path: Path):
    """A tiny MinAtar grid through sweep.py (its two seeds train as one seed batch) and the report (slow: three
    processes' imports, ~40 s on a busy machine)."""
    settings = dict(n_envs=2, n_steps=32, batch_size=32, n_epochs=1, eval_freq=64, eval_episodes=1)
    grid = tmp_path / "minatar.yml"
    grid.write_text(yaml.safe_dump({"study": "tiny_minatar", "settings": settings,
                                    "envs": {"MinAtar/Breakout-v1": {"n_timesteps": 128}},
                                    "grid": {"algo": ["dualclip"], "seed": [1, 2]}}))
    res = run_script("sweep.py", [str(grid), "--runs-root", str(tmp_path / "runs"),
                                  "--results-root", str(tmp_path / "results")])
    assert res.returncode == 0, res.stderr
    results = tmp_path / "results" / "tiny_minatar"
    names = sorted(p.stem for p in (results / "runs").glob("*.json"))
    assert names == ["MinAtar-Breakout-v1_dualclip_lag0_s1", "MinAtar-Breakout-v1_dualclip_lag0_s2"]
    record = json.loads((results / "runs" / f"{names[0]}.json").read_text())
    assert record["meta"]["path"] == "seed-batch"
    assert "## MinAtar/Breakout-v1" in (results / "summary.md").read_text()
