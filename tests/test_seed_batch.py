"""The seed-batched trainer (agents/seed_batch.py) against the single-run path it batches."""

import copy
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch as th
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from agents import ALGOS
from agents.checkpoint import read_checkpoint
from agents.seed_batch import SeedBatch, check_batchable
from tests.helpers import ROOT, assert_batched_forward_matches, run_script

SMALL = dict(n_steps=64, batch_size=32, n_epochs=2, policy_kwargs=dict(net_arch=[16]))
ENVS = ("Pendulum-v1", "CartPole-v1")  # diagonal Gaussian, categorical


def make(algo, env_id, seed, **kwargs):
    return ALGOS[algo]("MlpPolicy", make_vec_env(env_id, n_envs=2, seed=seed), seed=seed, **{**SMALL, **kwargs})


def params(model):
    return {k: v.detach().clone() for k, v in model.policy.state_dict().items()}


#: lags drawn per rollout: from 0..K, or from weights (the empirical mode draws from the same per-seed generator)
LAG_DRAWS = {"uniform": dict(lag_mode="uniform"), "empirical": dict(lag_mode="empirical", lag_weights=[1, 3, 2])}


@pytest.mark.parametrize("env_id, lags", [(env_id, "uniform") for env_id in ENVS] + [
    ("CartPole-v1", "empirical"), pytest.param("Pendulum-v1", "empirical", marks=pytest.mark.slow)])
@pytest.mark.parametrize("algo", [pytest.param("ppo", marks=pytest.mark.slow),  # the batched parts are the arms'
                                  pytest.param("dualclip", marks=pytest.mark.slow), "decoupled"])  # (decoupled: most)
def test_a_seed_does_not_depend_on_its_batch(algo, env_id, lags):
    """Seed 3 trained alone and inside a batch of five ends with the same parameters, bit for bit (lag drawn per
    rollout, tempered actors: every per-seed stream is exercised)."""
    lagged = dict(policy_lag=2, behavior_temperature=1.5, **LAG_DRAWS[lags])
    alone = make(algo, env_id, 3, **lagged)
    SeedBatch([alone]).learn(384)
    batch = [make(algo, env_id, seed, **lagged) for seed in (1, 2, 3, 4, 5)]
    SeedBatch(batch).learn(384)
    expected, got = params(alone), params(batch[2])
    assert all(th.equal(expected[k], got[k]) for k in expected)
    assert not th.equal(params(batch[1])["action_net.weight"], got["action_net.weight"])  # seeds do differ


class _GlobalOrder:
    """The minibatch order of a single run whose global numpy RNG is seeded with ``seed``."""

    def __init__(self, seed):
        self.random_state = np.random.RandomState(seed)
        self.bit_generator = SimpleNamespace(state=None)

    def permutation(self, n):
        return self.random_state.permutation(n)


def _copy_state(src, dst):
    """dst gets src's parameters, optimizer state and rollout (a single-run twin of one seed of a batch)."""
    dst.policy.load_state_dict(src.policy.state_dict())
    dst.policy.optimizer.load_state_dict(src.policy.optimizer.state_dict())
    dst.rollout_buffer = copy.deepcopy(src.rollout_buffer)
    dst.behavior.last_lags = src.behavior.last_lags.copy()
    dst._current_progress_remaining = src._current_progress_remaining
    dst._n_updates = src._n_updates
    if src.prox_ewma is not None:  # PPO-EWMA's average (decoupled, prox="ewma")
        dst.prox_ewma.load_state(dst.policy, src.prox_ewma.state())
    dst.set_logger(configure(None, []))


@pytest.mark.parametrize("env_id", ENVS)
@pytest.mark.parametrize("algo,extra", [
    ("ppo", {}), ("dualclip", {}), ("decoupled", {}), ("decoupled", dict(dual_clip=3.0, is_weight_mode="filter",
                                                                       is_weight_max=1.2)),
    ("decoupled", dict(prox="ewma", prox_ewma_beta=0.5)),  # PPO-EWMA: each seed's stacked average as its own
])
def test_each_seed_updates_as_the_single_run_code(algo, extra, env_id):
    """On identical inputs (parameters, optimizer state, rollout, minibatch order) one batched update gives each seed
    the parameters, optimizer state and metrics of the single-run ``train()``, to float tolerance. The data are
    stale (lag 2, two updates in) and tempered, so the ratios, the dual-clip bound and the weights all act."""
    kwargs = dict(policy_lag=2, behavior_temperature=1.5, **extra)
    seeds = (1, 2, 3)
    batched = [make(algo, env_id, seed, **kwargs) for seed in seeds]
    batch = SeedBatch(batched)
    batch.learn(2 * 128)  # two updates: the learner has moved away from mu
    callbacks = [m._init_callback(None) for m in batched]
    batch.collect_rollouts(callbacks)
    singles = [make(algo, env_id, seed, **kwargs) for seed in seeds]
    batch.export()
    for src, dst in zip(batched, singles):
        _copy_state(src, dst)
        # advantages and value targets: the single run's critic and GAE on the same rollout give the batch's
        buf = dst.rollout_buffer
        n = buf.buffer_size * buf.n_envs
        with th.no_grad():
            values = dst.policy.predict_values(th.as_tensor(buf.observations.reshape(n, -1))).reshape(buf.values.shape)
            last = dst.policy.predict_values(th.as_tensor(src._last_obs))
        buf.values[:] = values.numpy()
        buf.compute_returns_and_advantage(last_values=last, dones=src._last_episode_starts)
        assert np.allclose(buf.advantages, src.rollout_buffer.advantages, rtol=1e-5, atol=1e-5)
        assert np.allclose(buf.returns, src.rollout_buffer.returns, rtol=1e-5, atol=1e-5)
    # the same minibatch order: the single runs draw from the global numpy RNG, the batch from its streams
    batch._numpy_rngs = [_GlobalOrder(100 + s) for s in range(len(seeds))]
    batch.train()
    batch.export()
    for s, (b, single) in enumerate(zip(batched, singles)):
        np.random.seed(100 + s)
        single.train()
        mine, theirs = params(b), params(single)
        for key in mine:
            assert th.allclose(mine[key], theirs[key], rtol=1e-5, atol=1e-6), key
        assert not th.equal(mine["action_net.weight"], params(make(algo, env_id, seeds[s]))["action_net.weight"])
        if single.prox_ewma is not None:  # the averages took in the same steps
            assert b.prox_ewma.total_weight == pytest.approx(single.prox_ewma.total_weight, rel=1e-12)
            ours, single_avg = b.prox_ewma.state()["tensors"], single.prox_ewma.state()["tensors"]
            assert all(th.allclose(ours[k], single_avg[k], rtol=1e-5, atol=1e-6) for k in ours), s
        state_b = b.policy.optimizer.state_dict()["state"]
        state_s = single.policy.optimizer.state_dict()["state"]
        for i in state_s:
            for k in ("exp_avg", "exp_avg_sq"):
                assert th.allclose(state_b[i][k], state_s[i][k], rtol=1e-4, atol=1e-7), (i, k)
            assert float(state_b[i]["step"]) == float(state_s[i]["step"])
        logged_b, logged_s = b.logger.name_to_value, single.logger.name_to_value
        for key, value in logged_s.items():
            if key.startswith("train/") and key != "train/log_ratio":
                assert np.isclose(logged_b[key], value, rtol=1e-4, atol=1e-6, equal_nan=True), key


@pytest.mark.parametrize("env_id", ENVS)
def test_batched_forward_matches_the_policy(env_id):
    """Values, log-probs and entropies of the batched forward pass equal SB3's ``evaluate_actions`` per seed."""
    models = [make("ppo", env_id, seed) for seed in (1, 2)]
    assert_batched_forward_matches(models, atol=1e-6, log_prob_atol=1e-5)


def test_models_save_and_load_as_stock_sb3():
    models = [make("dualclip", "Pendulum-v1", seed, policy_lag=1) for seed in (1, 2)]
    SeedBatch(models).learn(256)
    for m, path in zip(models, ("a", "b")):
        m.save(f"/tmp/_seed_batch_{path}.zip")
        loaded = PPO.load(f"/tmp/_seed_batch_{path}.zip")
        for k, v in params(m).items():
            assert th.equal(loaded.policy.state_dict()[k], v)
        assert len(m.policy.optimizer.state) == len(list(m.policy.parameters()))  # Adam state handed back
    assert models[0].num_timesteps == 256 and models[0]._n_updates == 2 * SMALL["n_epochs"]


@pytest.mark.parametrize("kwargs,needle", [
    (dict(target_kl=0.01), "target_kl=0.01"),
    (dict(loss_agg_mode="seq-mean-token-mean"), "loss_agg_mode=seq-mean-token-mean"),
    (dict(use_sde=True), "use_sde=True"),
])
def test_unsupported_settings_are_refused_in_one_line(kwargs, needle):
    model = make("dualclip", "Pendulum-v1", 1, **kwargs)
    with pytest.raises(ValueError, match=needle) as info:
        check_batchable(model)
    assert "\n" not in str(info.value) and "one per process" in str(info.value)


def test_a_batch_needs_one_configuration():
    with pytest.raises(ValueError, match="policy_lag"):
        SeedBatch([make("ppo", "Pendulum-v1", 1), make("ppo", "Pendulum-v1", 2, policy_lag=1)])
    with pytest.raises(ValueError, match="lag_weights differ"):
        SeedBatch([make("ppo", "Pendulum-v1", seed, policy_lag=1, lag_mode="empirical", lag_weights=weights)
                   for seed, weights in ((1, [1, 1]), (2, [1, 2]))])
    with pytest.raises(ValueError, match="share their class"):
        SeedBatch([make("ppo", "Pendulum-v1", 1), make("dualclip", "Pendulum-v1", 2)])
    with pytest.raises(ValueError, match="dual_clip differ"):  # the arm's settings: its objective's fields
        SeedBatch([make("dualclip", "Pendulum-v1", 1), make("dualclip", "Pendulum-v1", 2, dual_clip=5.0)])


# ------------------------------------------------------------------------------------------------- train.py --seeds
BATCH_ARGS = ["--algo", "decoupled", "--env", "CartPole-v1", "-n", "3072", "--seeds", "3", "5", "--policy-lag", "2",
              "--lag-mode", "uniform", "--behavior-temperature", "1.5", "--save-freq", "0", "--verbose", "0",
              "-params", "n_steps:32", "n_epochs:4", "normalize:true", "policy_kwargs:{net_arch: [16]}"]


def test_cli_seeds_stop_on_ctrl_c_and_resume_exactly(tmp_path):
    """``--seeds``: one folder per seed; Ctrl-C stops every seed at a boundary with its checkpoint; ``--resume`` of
    the folders continues the batch to exactly the uninterrupted batch's parameters (CartPole pickles faithfully);
    each model loads in stock SB3."""
    stopped = tmp_path / "stopped"
    victim = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *BATCH_ARGS, "-f", str(stopped)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = stopped / "CartPole-v1_decoupled_lag2-uniform_t1.5_s5" / "progress.csv"
    deadline = time.time() + 240
    while (not progress.exists() or progress.stat().st_size < 1200) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGINT)
    _, stderr = victim.communicate(timeout=240)
    assert victim.returncode == 130, stderr
    folders = sorted(stopped.iterdir())
    assert [f.name[-2:] for f in folders] == ["s3", "s5"]
    assert f"--resume {folders[0]} {folders[1]}" in stderr.strip().splitlines()[-1]
    steps = {read_checkpoint(f / "checkpoint.pkl")["num_timesteps"] for f in folders}
    assert len(steps) == 1 and 0 < steps.pop() < 3072

    resumed = run_script("train.py", ["--resume", *map(str, folders)])
    assert resumed.returncode == 0, resumed.stderr
    full = run_script("train.py", [*BATCH_ARGS, "-f", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr
    for folder in folders:
        again = PPO.load(folder / "model.zip", device="cpu")
        whole = PPO.load(tmp_path / "full" / folder.name / "model.zip", device="cpu")
        assert again.num_timesteps == whole.num_timesteps == 3072
        assert all(th.equal(a, b) for a, b in zip(again.policy.parameters(), whole.policy.parameters()))
        assert yaml.safe_load((folder / "args.yml").read_text())["seeds"] == [3, 5]
    evaluated = run_script("evaluate.py", [str(folders[1]), "--episodes", "2"])
    assert evaluated.returncode == 0 and "returns:" in evaluated.stdout, evaluated.stderr


def test_cli_one_seed_is_a_batch_of_one(tmp_path):
    """``--seeds 2`` trains seed 2 as a batch of one: it ends with exactly the parameters of seed 2 inside
    ``--seeds 1 2 3``, so a seed's result does not depend on which seeds were asked for with it (``--seed 2`` is the
    single-run path)."""
    tiny = ["--algo", "decoupled", "--env", "CartPole-v1", "-n", "256", "--policy-lag", "2", "--lag-mode", "uniform",
            "--behavior-temperature", "1.5", "--verbose", "0", "-params", "n_steps:32", "n_epochs:2",
            "policy_kwargs:{net_arch: [16]}"]
    for folder, seeds in (("alone", ["2"]), ("three", ["1", "2", "3"])):
        res = run_script("train.py", [*tiny, "--seeds", *seeds, "-f", str(tmp_path / folder)])
        assert res.returncode == 0, res.stderr
    name = "CartPole-v1_decoupled_lag2-uniform_t1.5_s2"
    alone, inside = (PPO.load(tmp_path / folder / name / "model.zip", device="cpu") for folder in ("alone", "three"))
    assert alone.num_timesteps == inside.num_timesteps == 256
    assert all(th.equal(a, b) for a, b in zip(alone.policy.parameters(), inside.policy.parameters()))
    assert yaml.safe_load((tmp_path / "alone" / name / "args.yml").read_text())["seeds"] == [2]


@pytest.mark.parametrize("extra,needle", [
    (["--seed", "1"], "--seed 1 and --seeds"),
    (["--run-name", "same"], "must contain {seed}"),
    (["-params", "target_kl:0.01"], "target_kl=0.01"),
])
def test_cli_seeds_refuse_bad_input_in_one_line(tmp_path, extra, needle):
    res = run_script("train.py", ["--algo", "ppo", "--env", "CartPole-v1", "--seeds", "1", "2", "-f", str(tmp_path), *extra])
    assert res.returncode == 2
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("env_id,normalize", [("Pendulum-v1", True), ("CartPole-v1", True), ("CartPole-v1", False)])
def test_seed_envs_step_as_each_seeds_own_vec_env(env_id, normalize):
    """envs.seed_envs.SeedEnvs gives every seed what its own (VecNormalize over) DummyVecEnv gives, value for value,
    across episode ends (terminal observations, time-limit truncation), with the same statistics afterwards."""
    from envs import make_env
    from envs.seed_envs import SeedEnvs

    def envs():
        return [make_env(env_id, n_envs=3, seed=seed, normalize=normalize) for seed in (1, 2)]

    alone, together = envs(), envs()
    batch = SeedEnvs(together)
    for venv in alone + together:
        venv.reset()
    rng = np.random.default_rng(0)
    space = alone[0].action_space
    for _ in range(450):  # Pendulum's episodes end by time limit at 200 steps; CartPole's terminate
        if hasattr(space, "n"):
            actions = rng.integers(0, space.n, size=(2, 3))
        else:
            actions = rng.uniform(space.low, space.high, size=(2, 3, *space.shape)).astype(np.float32)
        obs, rewards, dones, infos = batch.step(actions)
        for s, venv in enumerate(alone):
            o, r, d, i = venv.step(actions[s])
            assert np.array_equal(o, obs[s]) and np.array_equal(r, rewards[s]) and np.array_equal(d, dones[s])
            assert o.dtype == obs[s].dtype and r.dtype == rewards[s].dtype
            for mine, theirs in zip(infos[s], i):
                assert mine.keys() == theirs.keys()
                if "terminal_observation" in theirs:
                    assert np.array_equal(mine["terminal_observation"], theirs["terminal_observation"])
    if normalize:
        for a, b in zip(alone, together):
            for name in ("obs_rms", "ret_rms"):
                x, y = getattr(a, name), getattr(b, name)
                assert np.array_equal(x.mean, y.mean) and np.array_equal(x.var, y.var) and x.count == y.count
            assert np.array_equal(a.returns, b.returns)


@pytest.mark.parametrize("env_id", ENVS)
def test_seeds_are_evaluated_together_as_each_alone(env_id, tmp_path, monkeypatch):
    """The seeds' periodic learner evaluations run as one batched pass; each seed's episodes equal what its own
    LearnerEvalCallback (SB3's evaluate_policy) records when the seeds evaluate one by one."""
    import agents.seed_batch as seed_batch
    from agents.callbacks import LearnerEvalCallback
    from envs import make_env

    def run(folder):
        models = [make("dualclip", env_id, seed, policy_lag=1) for seed in (1, 2)]
        evals = [LearnerEvalCallback(make_env(env_id, seed=100 + seed, normalize=True, training=False), eval_freq=128,
                                     n_eval_episodes=2, log_path=str(folder / str(seed)), seed=seed) for seed in (1, 2)]
        batch = SeedBatch(models)
        batch.learn(384, [[e] for e in evals])
        return batch, [np.load(folder / str(seed) / "evaluations.npz") for seed in (1, 2)]

    together, got = run(tmp_path / "together")
    assert len(together._evals) == 2
    monkeypatch.setattr(seed_batch, "_learner_evals", lambda callbacks: [])
    alone, expected = run(tmp_path / "alone")
    assert alone._evals == []
    for mine, theirs in zip(got, expected):
        assert list(mine["timesteps"]) == list(theirs["timesteps"]) == [0, 128, 256, 384]
        assert np.allclose(mine["results"], theirs["results"], rtol=1e-5)
        assert np.array_equal(mine["ep_lengths"], theirs["ep_lengths"])


def test_cli_resume_refuses_folders_of_different_configurations(tmp_path):
    """``--resume A B`` resumes a seed batch only when the runs share their configuration; else one line, exit 2."""
    for name, lag in (("a", "0"), ("b", "1")):
        res = run_script("train.py", ["--algo", "ppo", "--env", "CartPole-v1", "-n", "64", "--seed", "1",
                                      "--policy-lag", lag, "-f", str(tmp_path), "--run-name", name, "--verbose", "0",
                                      "-params", "n_envs:1", "n_steps:64"])
        assert res.returncode == 0, res.stderr
        config = tmp_path / name / "config.yml"
        config.write_text(config.read_text().replace("n_timesteps: 64", "n_timesteps: 128"))  # not complete yet
    res = run_script("train.py", ["--resume", str(tmp_path / "a"), str(tmp_path / "b")])
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "policy_lag" in res.stderr and "share their configuration" in res.stderr
