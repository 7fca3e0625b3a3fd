"""Guards of the fast paths (agents/fast_policy.py, agents/fast_optim.py, the buffer, envs.RowRunningMeanStd): each
must give SB3's / torch's results bit for bit.

- the Gaussian policy maths without distribution objects or ``nn.Module.__call__`` (``agents.fast_policy``);
- the buffer's torch-once-per-rollout sampling (``LaggedRolloutBuffer.get``);
- ``adam_step`` (torch's Adam arithmetic without the optimizer's per-call overhead, over flat buffers when it can)
  and ``clip_grad_norm``;
- whole runs with the fast path on and off (lagged, dual-clip, decoupled), which the stock equivalence test in
  tests/test_agents.py cannot cover (there is no stock counterpart of a lagged run).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy

from agents import ALGOS
from agents.buffer import LaggedRolloutBuffer
from agents.fast_optim import adam_step, clip_grad_norm
from agents.fast_policy import _run, fast_evaluate_actions, fast_forward, fast_log_prob, has_fast_gaussian
from tests.helpers import flat_params, tiny_model

POLICY_KWARGS = [
    dict(net_arch=[16]),
    dict(net_arch=dict(pi=[32, 32], vf=[32, 32]), activation_fn=th.nn.ReLU, log_std_init=-2, ortho_init=False),
    dict(net_arch=[16], share_features_extractor=False),
]


def _policy(policy_kwargs: dict) -> ActorCriticPolicy:
    model = PPO("MlpPolicy", "Pendulum-v1", seed=0, n_steps=64, batch_size=32, device="cpu", policy_kwargs=policy_kwargs)
    assert has_fast_gaussian(model.policy)
    return model.policy


def _grads(policy: ActorCriticPolicy, outputs) -> list:
    policy.zero_grad(set_to_none=True)
    sum(o.sum() * (i + 1.5) for i, o in enumerate(outputs)).backward()
    return [p.grad.clone() for p in policy.parameters()]


@pytest.mark.parametrize("policy_kwargs", POLICY_KWARGS, ids=["shared", "relu-256-style", "separate-extractors"])
def test_fast_gaussian_maths_bit_identical(policy_kwargs: dict) -> None:
    policy = _policy(policy_kwargs)
    obs, actions = th.randn(37, 3), th.randn(37, 1)

    stock = policy.evaluate_actions(obs, actions)
    stock_grads = _grads(policy, stock)
    fast = fast_evaluate_actions(policy, obs, actions)
    fast_grads = _grads(policy, fast)
    for a, b in zip(stock, fast):
        assert a.shape == b.shape and th.equal(a, b)
    assert all(th.equal(a, b) for a, b in zip(stock_grads, fast_grads))

    with th.no_grad():
        assert th.equal(policy.get_distribution(obs).log_prob(actions), fast_log_prob(policy, obs, actions))
        for batch in (obs[:1], obs):
            th.manual_seed(3)
            stock_out = policy(batch)
            th.manual_seed(3)
            fast_out = fast_forward(policy, batch)
            for a, b in zip(stock_out, fast_out):
                assert a.shape == b.shape and th.equal(a, b)
            th.manual_seed(3)  # and the global RNG is left in the same state
            policy(batch)
            stock_next = th.randn(4)
            th.manual_seed(3)
            fast_forward(policy, batch)
            assert th.equal(stock_next, th.randn(4))


def test_acting_reuses_scale_terms_only_for_the_same_log_std() -> None:
    """Acting reuses exp(log_std) and its square and log across steps; any change of log_std (an update, a load, a
    write through ``.data`` that autograd's version counter does not see, another batch size) recomputes them."""
    policy = _policy(dict(net_arch=[16]))
    obs = th.randn(5, 3)

    def same_as_stock(batch) -> None:
        th.manual_seed(11)
        stock_out = policy(batch)
        th.manual_seed(11)
        for a, b in zip(stock_out, fast_forward(policy, batch)):
            assert th.equal(a, b)

    with th.no_grad():
        same_as_stock(obs)
        same_as_stock(obs)  # from the cache
        policy.log_std.data.add_(0.25)
        same_as_stock(obs)
        policy.log_std.add_(-0.5)
        same_as_stock(obs)
        same_as_stock(obs[:2])
        policy.log_std.data.fill_(float("-inf"))  # scale 0: Normal's validation raises, cached or not
        for _ in range(2):
            with pytest.raises(ValueError):
                fast_forward(policy, obs)


def test_fast_path_keeps_nan_check() -> None:
    """Normal's argument validation (NaN parameters raise) survives on the fast path."""
    policy = _policy(dict(net_arch=[16]))
    with th.no_grad():
        policy.action_net.weight.fill_(float("nan"))
    with pytest.raises(ValueError):
        policy.evaluate_actions(th.randn(4, 3), th.randn(4, 1))
    with pytest.raises(ValueError):
        fast_evaluate_actions(policy, th.randn(4, 3), th.randn(4, 1))


def test_fast_path_only_for_plain_gaussian_policies() -> None:
    assert not has_fast_gaussian(PPO("MlpPolicy", "CartPole-v1", device="cpu").policy)  # categorical
    assert not has_fast_gaussian(PPO("MlpPolicy", "Pendulum-v1", use_sde=True, device="cpu").policy)

    class Custom(ActorCriticPolicy):
        def evaluate_actions(self, obs, actions):
            return super().evaluate_actions(obs, actions)

    assert not has_fast_gaussian(PPO(Custom, "Pendulum-v1", device="cpu").policy)


def test_module_hooks_are_honoured() -> None:
    layer = th.nn.Linear(3, 2)
    calls = []
    handle = layer.register_forward_hook(lambda mod, inp, out: calls.append(1))
    _run(th.nn.Sequential(layer, th.nn.ReLU()), th.randn(1, 3))
    assert calls == [1]
    handle.remove()
    _run(th.nn.Sequential(layer, th.nn.ReLU()), th.randn(1, 3))
    assert calls == [1]


# ---------------------------------------------------------------------------------------------------- buffer
@pytest.mark.parametrize("action_space", [spaces.Box(-1, 1, (2,)), spaces.Discrete(3)], ids=["box", "discrete"])
@pytest.mark.parametrize("batch_size", [16, 24, None])
def test_buffer_minibatches_equal_sb3(action_space: spaces.Space, batch_size) -> None:
    n_steps, n_envs = 32, 3
    obs_space = spaces.Box(-5, 5, (4,))
    rng = np.random.default_rng(0)
    stock = RolloutBuffer(n_steps, obs_space, action_space, device="cpu", n_envs=n_envs)
    ours = LaggedRolloutBuffer(n_steps, obs_space, action_space, device="cpu", n_envs=n_envs)
    for buf in (stock, ours):
        buf.reset()
    for _ in range(n_steps):
        obs = rng.standard_normal((n_envs, 4)).astype(np.float32)
        action = np.array([action_space.sample() for _ in range(n_envs)])
        reward, start = rng.standard_normal(n_envs), rng.random(n_envs) < 0.1
        value, log_prob = th.randn(n_envs, 1), th.randn(n_envs)
        for buf in (stock, ours):
            buf.add(obs, action, reward, start, value, log_prob)
    for buf in (stock, ours):
        buf.compute_returns_and_advantage(last_values=th.zeros(n_envs, 1), dones=np.zeros(n_envs))
    ours.prox_log_probs[:] = rng.standard_normal((n_steps, n_envs))

    for epoch in range(2):  # the second pass reuses the flattened buffer, as SB3's epochs do
        np.random.seed(epoch)
        stock_batches = list(stock.get(batch_size))
        stock_rng = np.random.get_state()[1].copy()
        np.random.seed(epoch)
        indices = np.random.permutation(n_steps * n_envs)
        np.random.seed(epoch)
        our_batches = list(ours.get(batch_size))
        assert np.array_equal(np.random.get_state()[1], stock_rng)  # global RNG consumed identically
        assert len(stock_batches) == len(our_batches)
        start = 0
        for s, o in zip(stock_batches, our_batches):
            for name in s._fields:
                a, b = getattr(s, name), getattr(o, name)
                assert a.dtype == b.dtype and a.shape == b.shape and th.equal(a, b), name
            # our extra columns are those of SB3's per-minibatch conversion (the slow path, kept)
            inds = indices[start : start + len(o.advantages)]
            ref = ours._get_samples(inds)
            assert th.equal(ref.segment_ids, o.segment_ids) and th.equal(ref.prox_log_prob, o.prox_log_prob)
            start += len(o.advantages)


# ------------------------------------------------------------------------------------ normalisation statistics
@pytest.mark.parametrize("shape, dtype", [((17,), np.float32), ((), np.float64), ((3,), np.float64)])
def test_row_running_mean_std_equals_sb3(shape, dtype) -> None:
    """One-row batches skip np.mean / np.var; every other batch (several rows, non-finite values) goes to SB3's
    code; the statistics are SB3's bit for bit, values and numpy types."""
    from stable_baselines3.common.running_mean_std import RunningMeanStd

    from envs import RowRunningMeanStd

    rng = np.random.default_rng(0)
    stock, fast = RunningMeanStd(shape=shape), RowRunningMeanStd(shape=shape)
    with np.errstate(invalid="ignore"):  # the inf row below makes NaNs on purpose
        for i in range(300):
            rows = 3 if i % 50 == 7 else 1
            arr = (rng.standard_normal((rows, *shape)) * 10.0 ** rng.integers(-3, 4)).astype(dtype)
            if i == 200:
                arr[0, ...] = np.inf  # SB3's own code: the mean becomes inf, the variance NaN
            for rms in (stock, fast):
                rms.update(arr)
            for name in ("mean", "var", "count"):
                a, b = getattr(stock, name), getattr(fast, name)
                assert type(a) is type(b) and np.array_equal(a, b, equal_nan=True), (i, name)


def test_fast_statistics_in_make_env_identical_and_pickled_as_sb3(tmp_path) -> None:
    """make_env's VecNormalize gives SB3's observations and rewards; its pickle loads as SB3's classes."""
    import pickle

    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.running_mean_std import RunningMeanStd
    from stable_baselines3.common.vec_env import VecNormalize

    from envs import RowRunningMeanStd, make_env

    ours = make_env("Pendulum-v1", n_envs=1, seed=3, normalize=True)
    stock = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1, seed=3))
    assert type(ours.obs_rms) is RowRunningMeanStd and type(ours.ret_rms) is RowRunningMeanStd
    assert np.array_equal(ours.reset(), stock.reset())
    rng = np.random.default_rng(1)
    for _ in range(450):  # two episodes and a half: the time-limit resets included
        action = rng.uniform(-2, 2, size=(1, 1)).astype(np.float32)
        a, b = ours.step(action), stock.step(action)
        for x, y in zip(a[:3], b[:3]):
            assert np.array_equal(x, y)
    ours.save(str(tmp_path / "vecnormalize.pkl"))
    with open(tmp_path / "vecnormalize.pkl", "rb") as f:
        loaded = pickle.load(f)
    assert type(loaded.obs_rms) is RunningMeanStd and np.array_equal(loaded.obs_rms.var, stock.obs_rms.var)


# ------------------------------------------------------------------------------------------- optimizer step
def _net() -> th.nn.Module:
    th.manual_seed(0)
    return th.nn.Sequential(th.nn.Linear(5, 32), th.nn.Tanh(), th.nn.Linear(32, 3))


@pytest.mark.parametrize("kwargs", [dict(lr=3e-3, eps=1e-5), dict(lr=1e-2, weight_decay=0.1), dict(lr=1e-2, amsgrad=True)])
@pytest.mark.parametrize("max_norm", [0.05, 100.0])  # always clipping / never clipping
def test_adam_step_and_clip_bit_identical(kwargs: dict, max_norm: float) -> None:
    nets = [_net(), _net()]
    opts = [th.optim.Adam(n.parameters(), **kwargs) for n in nets]
    gen = th.Generator().manual_seed(1)
    for _ in range(30):
        x = th.randn(16, 5, generator=gen)
        norms = []
        for i, (net, opt) in enumerate(zip(nets, opts)):
            opt.zero_grad()
            (net(x) ** 2).mean().backward()
            if i == 0:
                norms.append(th.nn.utils.clip_grad_norm_(net.parameters(), max_norm))
                opt.step()
            else:
                norms.append(clip_grad_norm(net.parameters(), max_norm))
                adam_step(opt)
        assert th.equal(norms[0], norms[1])
    assert th.equal(th.cat([p.flatten() for p in nets[0].parameters()]), th.cat([p.flatten() for p in nets[1].parameters()]))
    s0, s1 = opts[0].state_dict(), opts[1].state_dict()
    assert s0["param_groups"] == s1["param_groups"]
    for key in s0["state"]:
        for name, value in s0["state"][key].items():
            assert value.dtype == s1["state"][key][name].dtype and th.equal(value, s1["state"][key][name])


def _adam_pair(freeze_bias: bool = False):
    nets = [_net(), _net()]
    if freeze_bias:  # a parameter of the group never gets a gradient: the per-parameter (multi-tensor) path
        for net in nets:
            net[2].bias.requires_grad_(False)
    return nets, [th.optim.Adam(n.parameters(), lr=3e-3, eps=1e-5) for n in nets]


def _train_pair(nets, opts, steps: int, gen: th.Generator) -> None:
    for _ in range(steps):
        x = th.randn(16, 5, generator=gen)
        for i, (net, opt) in enumerate(zip(nets, opts)):
            opt.zero_grad()
            (net(x) ** 2).mean().backward()
            opt.step() if i == 0 else adam_step(opt)


def _assert_same_adam(nets, opts) -> None:
    assert th.equal(th.cat([p.flatten() for p in nets[0].parameters()]), th.cat([p.flatten() for p in nets[1].parameters()]))
    s0, s1 = opts[0].state_dict()["state"], opts[1].state_dict()["state"]
    assert s0.keys() == s1.keys()
    for key in s0:
        for name, value in s0[key].items():
            assert value.shape == s1[key][name].shape and th.equal(value, s1[key][name]), (key, name)


@pytest.mark.parametrize("freeze_bias", [False, True])
def test_flat_adam_state_survives_load_state_dict(freeze_bias: bool) -> None:
    """The flat buffers hold every parameter's state as views; loading a state dict (a checkpoint) replaces those
    views, and the next step rebuilds the buffers from the loaded values: still torch's Adam bit for bit."""
    from agents.fast_optim import _FLAT_STATES

    nets, opts = _adam_pair(freeze_bias)
    gen = th.Generator().manual_seed(2)
    _train_pair(nets, opts, 5, gen)
    flat = _FLAT_STATES.get(opts[1], [None])[0]
    assert (flat is None) == freeze_bias  # flat only when every parameter of the group has a gradient
    _assert_same_adam(nets, opts)
    saved = [copy.deepcopy(o.state_dict()) for o in opts]
    _train_pair(nets, opts, 3, gen)
    for opt, state in zip(opts, saved):  # back to the checkpoint, then on
        opt.load_state_dict(state)
    _train_pair(nets, opts, 5, gen)
    _assert_same_adam(nets, opts)


def test_flat_adam_after_steps_without_some_gradients() -> None:
    """Steps in which a parameter has no gradient go the per-parameter way and leave the step counts unequal; the
    flat buffers are then not used again (their single bias correction would be wrong for some parameters)."""
    from agents.fast_optim import _FLAT_STATES

    nets, opts = _adam_pair()
    gen = th.Generator().manual_seed(4)
    _train_pair(nets, opts, 3, gen)  # flat
    for net in nets:
        net[2].bias.requires_grad_(False)
    _train_pair(nets, opts, 2, gen)  # per parameter: the bias takes no step
    for net in nets:
        net[2].bias.requires_grad_(True)
    _train_pair(nets, opts, 4, gen)
    assert _FLAT_STATES[opts[1]][0] is None
    _assert_same_adam(nets, opts)


# ------------------------------------------------------------------------------------------------ whole runs
@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("lag_mode", ["fixed", "per-env"])
def test_fast_path_on_off_identical_runs(algo: str, lag_mode: str) -> None:
    """Lagged runs (snapshot modules acting, lag diagnostics, decoupled's proximal policy) are unchanged."""
    kwargs = dict(n_envs=2, policy_lag=2, lag_mode=lag_mode, learning_rate=3e-3)
    fast = tiny_model(ALGOS[algo], "Pendulum-v1", **kwargs)
    assert fast._fast_ok()
    fast.learn(5 * 64 * 2)
    slow = tiny_model(ALGOS[algo], "Pendulum-v1", **kwargs)
    slow._fast = None  # SB3's policy methods and distribution objects
    slow.learn(5 * 64 * 2)
    assert th.equal(flat_params(fast), flat_params(slow))


def test_fast_path_survives_save_load(tmp_path) -> None:
    model = tiny_model(ALGOS["dualclip"], "Pendulum-v1", policy_lag=1)
    model.learn(2 * 64)
    model.save(tmp_path / "m.zip")
    loaded = ALGOS["dualclip"].load(tmp_path / "m.zip", env=model.get_env(), device="cpu")
    assert loaded._fast_ok()
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded._fast_ok() and loaded.num_timesteps == 3 * 64


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_snapshot_module_acts_as_functional_call(env_id: str) -> None:
    """A snapshot is a copy of the policy module holding old parameters: same actions, log mu and RNG use as
    ``functional_call`` of the learner's module with those parameters."""
    from torch.func import functional_call

    model = tiny_model(ALGOS["ppo"], env_id, policy_lag=1, learning_rate=3e-2)
    model.learn(2 * 64)  # one update done: the snapshot differs from the learner
    behaviour = model.behavior.snapshots[-1]
    assert behaviour is not model.policy and getattr(behaviour, "optimizer", None) is None
    (params,) = model.behavior.snapshot_tensors()
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(5)]))
    with th.no_grad():
        th.manual_seed(7)
        expected = functional_call(model.policy, params, (obs,))
        th.manual_seed(7)
        got = model.behavior._forward(behaviour, obs, None, model._fast_ok())
    for a, b in zip(expected, got):
        assert th.equal(a, b)
    assert not th.equal(flat_params(model), th.cat([p.flatten() for p in behaviour.parameters()]))


def test_snapshots_recycle_k_modules() -> None:
    """At most K policy copies exist besides the learner, whatever the mode: the oldest is recycled."""
    model = tiny_model(ALGOS["dualclip"], "CartPole-v1", n_envs=3, policy_lag=2, lag_mode="per-env")
    model.learn(2 * 64 * 3)
    first = [id(m) for m in model.behavior.snapshots]
    model.learn(3 * 64 * 3, reset_num_timesteps=False)
    assert len(model.behavior.snapshots) == 2 and {id(m) for m in model.behavior.snapshots} == set(first)
