"""Many seeds of one configuration in one process: S single-run models trained in lockstep as one batched model.

On SB3's small MLPs most of PPO's time is per-call overhead of Python and torch's dispatcher, not arithmetic. A
:class:`SeedBatch` takes S models that a single run would train one by one (same class, same hyperparameters,
different seeds, each with its own environments, VecNormalize statistics, logger and callbacks) and pays that overhead
once for all S: their parameters are stacked along a leading seed axis, every forward pass is one batched matmul
(``torch.baddbmm``), and one optimizer steps all of them.

What stays per seed, so that a seed's trajectory does not depend on which other seeds share its batch
(tests/test_seed_batch.py trains seed 3 alone and inside a batch of five and compares the parameters):

- environments, normalisation statistics, episode statistics, lag draws and temperatures (the seed's own model);
- random streams: each seed has a torch generator (action noise) and a numpy generator (minibatch order), seeded
  from its seed; nothing reads the global RNGs;
- the loss: each seed's minibatch loss is the single-run code itself (``LaggedPPO._minibatch_loss`` and the arm's
  objective: advantage normalisation, clipped or dual-clipped or decoupled policy term, value and entropy
  terms), run per seed under ``torch.func.vmap``; the batch minimises the sum of the seeds' losses, whose gradient
  with respect to a seed's parameters is that seed's gradient;
- gradient clipping: the norm is each seed's own;
- the optimizer: Adam is elementwise, so one Adam over the stacked parameters is S independent Adams (same step
  count, since the seeds step in lockstep).

Equal in distribution, not bit for bit, to single runs: the random streams differ from a single run's (which draws
from torch's and numpy's global generators), and a few reductions may round differently. On identical inputs
(parameters, minibatch) the loss, gradients and optimizer step of each seed match the single-run code to float
tolerance (tests/test_seed_batch.py).

After every update the seeds' models hold their own parameters, optimizer state, lag snapshots and random-stream
states again (:meth:`SeedBatch.export`), so each model saves, checkpoints, evaluates and loads (also with stock
SB3's ``PPO.load``) exactly as a single run's does.

Scope: SB3's ``MlpPolicy`` (flatten, then Linear layers with Tanh or ReLU) on flat or (C, H, W) Box observations
that SB3 does not rescale as images, and SB3's ``ActorCriticPolicy`` with :class:`agents.networks.MinAtarCNN` as
its features extractor on (C, H, W) Box observations (MinAtar: its 3x3 convolution runs once per seed, :func:`_conv`; the rest batched), with a diagonal
Gaussian (Box actions) or a categorical (Discrete actions); every arm, lag mode and temperature; not gSDE, not
``target_kl`` (seeds would stop their epochs at different points) and not the ``seq-*`` loss aggregation modes
(segment packing is data-dependent). :func:`check_batchable` says which one in one line. The decoupled arm's
``prox="ewma"`` (PPO-EWMA) is batched: the seeds' averages are stacked like their parameters.
"""

from __future__ import annotations

import signal
from collections import defaultdict, deque
from contextlib import contextmanager
from dataclasses import fields
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
from torch import nn
from torch.func import vmap
from torch.nn import functional as F

from agents.buffer import LaggedRolloutBuffer, LaggedRolloutBufferSamples, flat_observations
from agents.checkpoint import StopRequested
from agents.ewma import actor_parameter_names, ewma_step
from agents.fast_optim import adam_step
from agents.fast_policy import _ENTROPY_CONST, _LOG_SQRT_2PI
from agents.lagged import LaggedPPO
from agents.networks import MinAtarCNN
from envs.seed_envs import SeedEnvs

Params = Dict[str, th.Tensor]  #: parameter name -> tensor with a leading seed axis
Steps = List[Tuple[str, Any]]  #: a network as steps: ("linear" | "conv", parameter prefix), ("flatten", None), ("act", fn)
_ACTIVATIONS: Dict[type, Callable[[th.Tensor], th.Tensor]] = {nn.Tanh: th.tanh, nn.ReLU: th.relu}

#: the trainer's hyperparameters that must agree for seeds to train in lockstep (the arm's settings are those of
#: its objective, compared field by field)
_SHARED = ("n_steps", "n_envs", "batch_size", "n_epochs", "gamma", "gae_lambda", "ent_coef", "vf_coef",
           "max_grad_norm", "normalize_advantage", "policy_lag", "lag_mode", "lag_weights", "behavior_temperature",
           "temperature_mode", "would_bound_c")


def check_batchable(model: LaggedPPO) -> None:
    """Raise ValueError (one line, naming what is not supported) unless :class:`SeedBatch` can train ``model``."""
    policy = model.policy
    problem = None
    if model.use_sde:
        problem = "use_sde=True"
    elif type(policy) is not ActorCriticPolicy:
        problem = f"policy {type(policy).__name__} (only SB3's ActorCriticPolicy, e.g. MlpPolicy, is batched)"
    elif not isinstance(model.observation_space, spaces.Box) or len(model.observation_space.shape) not in (1, 3):
        problem = f"observation space {model.observation_space} (only flat or (C, H, W) Box observations are batched)"
    elif type(policy.action_dist) not in (DiagGaussianDistribution, CategoricalDistribution) or policy.squash_output:
        problem = f"action space {model.action_space} (only Box, unsquashed, and Discrete actions are batched)"
    elif _extractor_problem(policy) is not None:
        problem = _extractor_problem(policy)
    elif type(policy.mlp_extractor) is not MlpExtractor or not all(
        type(layer) is nn.Linear or type(layer) in _ACTIVATIONS
        for net in (policy.mlp_extractor.policy_net, policy.mlp_extractor.value_net) for layer in net
    ):
        problem = "an MLP with layers other than Linear, Tanh and ReLU"
    elif model.target_kl is not None:
        problem = f"target_kl={model.target_kl} (seeds would stop their epochs at different points)"
    elif getattr(model, "loss_agg_mode", "token-mean") != "token-mean":
        problem = f"loss_agg_mode={model.loss_agg_mode} (only token-mean is batched)"
    elif model.rollout_buffer_class is not LaggedRolloutBuffer:
        problem = f"rollout_buffer_class={model.rollout_buffer_class.__name__}"
    if problem is not None:
        raise ValueError(f"seeds cannot be batched with {problem}: train these seeds one per process instead")


def _extractor_problem(policy: ActorCriticPolicy) -> Optional[str]:
    """What keeps the policy's features extractors from the batch, or None: FlattenExtractor (flat or (C, H, W)
    observations), or :class:`MinAtarCNN` (its convolution stride 1, no padding, one group) on (C, H, W)
    observations; either on observations that SB3 does not rescale as images (the batch feeds them as floats, as
    SB3's ``preprocess_obs`` does for a Box that is not an image)."""
    extractors = (policy.pi_features_extractor, policy.vf_features_extractor)
    if is_image_space(policy.observation_space) and policy.normalize_images:
        return "image observations that SB3 divides by 255 (MinAtar's 0/1 frames are batched, not images)"
    if all(type(e) is FlattenExtractor for e in extractors):
        return None
    if len(policy.observation_space.shape) != 3 or not all(type(e) is MinAtarCNN for e in extractors):
        names = sorted({type(e).__name__ for e in extractors})
        return f"features extractor {', '.join(names)} (only FlattenExtractor and MinAtarCNN are batched)"
    for extractor in extractors:
        for layer in extractor.net:
            if type(layer) is nn.Conv2d and (layer.stride, layer.padding, layer.dilation, layer.groups, layer.bias is None,
                                             layer.padding_mode) != ((1, 1), (0, 0), (1, 1), 1, False, "zeros"):
                return f"a convolution other than stride 1, no padding, one group, with bias ({layer})"
            if type(layer) is nn.Flatten and (layer.start_dim, layer.end_dim) != (1, -1):
                return f"a Flatten other than nn.Flatten() ({layer})"
            if type(layer) not in (nn.Conv2d, nn.Flatten, nn.Linear) and type(layer) not in _ACTIVATIONS:
                return f"a MinAtarCNN layer other than Conv2d, Flatten, Linear, Tanh and ReLU ({layer})"
    return None


def check_batch(models: Sequence[LaggedPPO]) -> None:
    """Raise ValueError (one line) unless ``models`` can train as one seed batch: each batchable, one class, one
    configuration and the same number of steps done."""
    if not models:
        raise ValueError("a seed batch needs at least one model")
    first = models[0]
    for model in models:
        check_batchable(model)
        if type(model) is not type(first):
            raise ValueError(f"models of one batch must share their class ({type(first).__name__} and "
                             f"{type(model).__name__} given): batch each algorithm separately")
        different = [k for k in _SHARED if getattr(model, k, None) != getattr(first, k, None)]
        different += [f.name for f in fields(first.objective)
                      if getattr(model.objective, f.name) != getattr(first.objective, f.name)]
        if different or model.num_timesteps != first.num_timesteps:
            what = ", ".join(different) or "num_timesteps"
            raise ValueError(f"models of one batch must share their configuration ({what} differ): batch only "
                             "the seeds of one grid cell")


def _layers(net: nn.Sequential, prefix: str) -> Steps:
    """A Sequential of plain layers as a list of steps: ``("linear", parameter prefix)``, ``("conv", parameter
    prefix)``, ``("flatten", None)`` or ``("act", function)``."""
    kinds = {nn.Linear: "linear", nn.Conv2d: "conv"}
    return [(kinds[type(layer)], f"{prefix}.{i}") if type(layer) in kinds
            else ("flatten", None) if type(layer) is nn.Flatten else ("act", _ACTIVATIONS[type(layer)])
            for i, layer in enumerate(net)]


def _extractor_steps(extractor: nn.Module, prefix: str) -> Steps:
    """A features extractor that :func:`check_batchable` accepts, as steps (FlattenExtractor: one flatten)."""
    return [("flatten", None)] if type(extractor) is FlattenExtractor else _layers(extractor.net, f"{prefix}.net")


def _run_steps(params: Params, steps: Steps, x: th.Tensor) -> th.Tensor:
    """The network ``steps`` for every seed: x (S, B, ...) with a seed axis and a sample axis in front."""
    for kind, arg in steps:
        if kind == "linear":
            x = _linear(params, arg, x)
        elif kind == "conv":
            x = _conv(params, arg, x)
        elif kind == "flatten":
            x = x.flatten(2)  # nn.Flatten() per sample: (S, B, ...) -> (S, B, features), the same element order
        else:
            x = arg(x)
    return x


def _linear(params: Params, name: str, x: th.Tensor) -> th.Tensor:
    """``F.linear`` of every seed at once: x (S, B, in) -> (S, B, out)."""
    return _affine(params[f"{name}.weight"], params[f"{name}.bias"], x)


def _conv(params: Params, name: str, x: th.Tensor) -> th.Tensor:
    """``nn.Conv2d`` of every seed: x (S, B, C, H, W) -> (S, B, O, H', W'), one ``F.conv2d`` per seed.

    One call per seed, not one batched kernel: on CPU both batched forms were slower (5 seeds, minibatches of 1024
    MinAtar frames, forward and backward, one thread: the unfolded convolution, im2col and a batched matmul, 0.48 s
    for the convolution alone; a grouped convolution, groups = S, 0.50 s with the 1024x128 layer; five separate
    convolutions 0.33 s with that layer): the arithmetic, not the call overhead, dominates here. Each seed's call is
    the single run's own kernel on the same shapes, so its numbers cannot depend on the batch's size.
    """
    weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]  # (S, O, C, kh, kw), (S, O)
    return th.stack([F.conv2d(x[s], weight[s], bias[s]) for s in range(x.shape[0])])


def _affine(weight: th.Tensor, bias: th.Tensor, x: th.Tensor) -> th.Tensor:
    """``x @ weight.T + bias`` of every seed at once: x (S, B, in), weight (S, out, in), bias (S, out) -> (S, B, out).

    A batched matmul of one matrix takes another kernel path than one of two or more (measured: last-bit differences
    in the gradients), so a lone seed is paired with a gradient-free copy of itself: a seed's numbers never depend
    on how many seeds share its batch.
    """
    if x.shape[0] == 1:
        pair = (th.cat([t, t.detach()]) for t in (bias, x, weight))
        bias, x, weight = pair
        return th.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))[:1]
    return th.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait (pending) until the block ends, so a handler never runs between two seeds' steps."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Distribution:
    """The action distribution of S seeds' rows, as SB3 and torch compute it (same ops as agents/fast_policy.py for
    the Gaussian, as ``torch.distributions.Categorical`` for the categorical)."""

    def __init__(self, gaussian: bool, out: th.Tensor, log_std: Optional[th.Tensor]) -> None:
        self.gaussian = gaussian
        if gaussian:
            assert log_std is not None
            self.loc = out
            self.scale = th.ones_like(out) * log_std.exp().unsqueeze(1)  # DiagGaussianDistribution: ones * std
        else:
            self.logits = out - out.logsumexp(dim=-1, keepdim=True)  # Categorical's normalised logits

    def tempered(self, tau: Optional[th.Tensor]) -> "_Distribution":
        """The distribution tempered by ``tau`` (S, B): std x tau, logits / tau (agents/behavior.py)."""
        if tau is None:
            return self
        if self.gaussian:
            out = _Distribution.__new__(_Distribution)
            out.gaussian, out.loc, out.scale = True, self.loc, self.scale * tau.unsqueeze(-1)
            return out
        return _Distribution(False, self.logits / tau.unsqueeze(-1), None)

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        if self.gaussian:
            var, log_scale = self.scale**2, self.scale.log()
            return (-((actions - self.loc) ** 2) / (2 * var) - log_scale - _LOG_SQRT_2PI).sum(dim=-1)
        return self.logits.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> th.Tensor:
        if self.gaussian:
            return (_ENTROPY_CONST + th.log(self.scale)).sum(dim=-1)
        logits = th.clamp(self.logits, min=th.finfo(self.logits.dtype).min)
        return -(logits * th.softmax(self.logits, dim=-1)).sum(dim=-1)

    def mode(self) -> th.Tensor:
        """The deterministic action, as SB3's ``predict(deterministic=True)``: the mean, or the likeliest category."""
        return self.loc if self.gaussian else th.argmax(self.logits, dim=-1)

    def sample(self, noise: th.Tensor) -> th.Tensor:
        """Actions from per-row noise drawn by each seed's own generator: standard normal (S, B, A) for the
        Gaussian (loc + noise * scale, as ``Normal.rsample``), uniform (S, B) for the categorical (inverse CDF)."""
        if self.gaussian:
            return self.loc + noise * self.scale
        cdf = th.softmax(self.logits, dim=-1).cumsum(dim=-1)
        return (cdf < noise.unsqueeze(-1)).sum(dim=-1).clamp(max=cdf.shape[-1] - 1)


def _learner_evals(seed_callbacks: Sequence[Any]) -> List[Any]:
    """Every seed's ``LearnerEvalCallback`` when each seed has exactly one and their evaluation envs can step
    together (Monitor-wrapped, one structure), else [] (each seed then evaluates alone, inside its callback)."""
    from stable_baselines3.common.monitor import Monitor

    from agents.callbacks import LearnerEvalCallback

    found = []
    for cb in seed_callbacks:
        mine = [c for c in getattr(cb, "callbacks", [cb]) if isinstance(c, LearnerEvalCallback)]
        if len(mine) != 1:
            return []
        found.append(mine[0])
    envs = [e.eval_env for e in found]
    if not SeedEnvs.supports(envs) or not all(all(env.env_is_wrapped(Monitor)) for env in envs):
        return []
    if len({(e.eval_freq, e.n_eval_episodes) for e in found}) != 1:
        return []
    return found


class _StackedRollout:
    """The step columns of S seeds' rollout buffers as views of stacked arrays (S, n_steps, E, ...), so that one
    assignment per step stores for every seed what ``RolloutBuffer.add`` would store (same dtypes, same values).
    ``arrays`` keeps the stacked arrays from one rollout to the next."""

    COLUMNS = ("observations", "actions", "rewards", "episode_starts", "values", "log_probs")

    def __init__(self, buffers: Sequence[Any], arrays: Dict[tuple, np.ndarray]) -> None:
        self.buffers = buffers
        self.arrays = []
        for name in self.COLUMNS:
            first = getattr(buffers[0], name)  # freshly reset: (n_steps, E, ...) zeros in the buffer's dtype
            key = (name, first.shape, first.dtype)
            if key not in arrays:
                arrays[key] = np.zeros((len(buffers), *first.shape), dtype=first.dtype)
            for s, buf in enumerate(buffers):
                setattr(buf, name, arrays[key][s])
            self.arrays.append(arrays[key])

    def add(self, *columns: np.ndarray) -> None:
        """Store one step of every seed: observations, actions, rewards, episode starts, values, log-probs."""
        pos = self.buffers[0].pos
        for array, column in zip(self.arrays, columns):
            array[:, pos] = column.reshape(array.shape[:1] + array.shape[2:])
        for buf in self.buffers:
            buf.pos += 1
            buf.full = buf.pos == buf.buffer_size


class SeedBatch:
    """Train S models of one configuration (one per seed) in lockstep, as one batched model.

    :param models: single-run models (:class:`~agents.lagged.LaggedPPO` or an arm derived from it) built as the
        single runs would be: same class and hyperparameters, each with its own seed and environments. A model
        restored from a checkpoint brings back its optimizer state, lag snapshots and random streams.
    """

    def __init__(self, models: Sequence[LaggedPPO]) -> None:
        check_batch(models)
        first = models[0]
        self.models = list(models)
        self.device = first.device
        policy = first.policy
        self.gaussian = isinstance(policy.action_dist, DiagGaussianDistribution)
        # the extractors' parameters are named after the first attribute that holds them (named_modules' name):
        # features_extractor.* for a shared one (SB3's default) and the actor's own, vf_features_extractor.* else
        self.shared_extractor = policy.pi_features_extractor is policy.vf_features_extractor
        module_names = {id(module): name for name, module in policy.named_modules()}
        self.pi_extractor = _extractor_steps(policy.pi_features_extractor,
                                             module_names[id(policy.pi_features_extractor)])
        self.vf_extractor = _extractor_steps(policy.vf_features_extractor,
                                             module_names[id(policy.vf_features_extractor)])
        self.pi_layers = _layers(policy.mlp_extractor.policy_net, "mlp_extractor.policy_net")
        self.vf_layers = _layers(policy.mlp_extractor.value_net, "mlp_extractor.value_net")
        names = [name for name, _ in policy.named_parameters()]
        with th.no_grad():
            self.params: Params = {
                name: th.stack([dict(m.policy.named_parameters())[name] for m in models]).requires_grad_(True)
                for name in names
            }
        self.optimizer = type(policy.optimizer)(list(self.params.values()), **policy.optimizer.defaults)
        self._import_optimizer_state()
        # lag snapshots, oldest first: the stacked parameters after each of the last K updates
        per_seed = [m.behavior.snapshot_tensors() for m in models]
        self.snapshots: Deque[Params] = deque(
            [{n: th.stack([snaps[i][n] for snaps in per_seed]) for n in names} for i in range(len(per_seed[0]))],
            maxlen=first.policy_lag,
        )
        # PPO-EWMA (agents/ewma.py): the seeds' averages of their actor parameters, stacked, and their common weight
        # W (the seeds step in lockstep); None until an update first reads it, as in a single run
        self.ewma_beta = first.objective.ewma_beta
        self.ewma: Optional[Params] = None
        self.ewma_weight = 1.0
        ewma_states = [m.prox_ewma.state() for m in models] if self.ewma_beta is not None else []
        if ewma_states and all(st is not None for st in ewma_states):  # resumed models bring theirs
            self.ewma = {n: th.stack([st["tensors"][n] for st in ewma_states]) for n in ewma_states[0]["tensors"]}
            self.ewma_weight = ewma_states[0]["total_weight"]
        self._rollout_arrays: Dict[tuple, np.ndarray] = {}  # the rollout buffers' stacked columns (_StackedRollout)
        self._evals: List[Any] = []  # the seeds' learner evaluations, run together (_evaluate_together)
        self._torch_rngs, self._numpy_rngs = [], []
        for model in models:
            seed = int(model.seed or 0)
            torch_rng = th.Generator(device=self.device)
            torch_rng.manual_seed(int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
            numpy_rng = np.random.default_rng([seed, 2])
            saved = getattr(model, "_seed_batch_rng", None)
            if saved is not None:  # a resumed model: continue its streams
                torch_rng.set_state(saved[0])
                numpy_rng.bit_generator.state = saved[1]
            self._torch_rngs.append(torch_rng)
            self._numpy_rngs.append(numpy_rng)

    # -------------------------------------------------------------------------------------------- the policy
    def _forward(self, params: Params, obs: th.Tensor,
                 critic: bool = True) -> Tuple[_Distribution, Optional[th.Tensor]]:
        """SB3's ActorCriticPolicy (features extractor, MLP extractor, action and value heads) for every seed:
        obs (S, B, D) or (S, B, C, H, W)."""
        obs = obs.float()  # preprocess_obs for a Box that is not an image
        features = _run_steps(params, self.pi_extractor, obs)
        x = _run_steps(params, self.pi_layers, features)
        dist = _Distribution(self.gaussian, _linear(params, "action_net", x), params.get("log_std"))
        if not critic:
            return dist, None
        if not self.shared_extractor:
            features = _run_steps(params, self.vf_extractor, obs)
        v = _run_steps(params, self.vf_layers, features)
        return dist, _linear(params, "value_net", v).squeeze(-1)

    def _noise(self, *shape: int) -> th.Tensor:
        """Per-seed noise of ``shape`` samples (e.g. steps x environments), each seed from its own generator:
        standard normal per action dimension (Gaussian), uniform (categorical)."""
        draws = [th.randn((*shape, self.models[0].action_space.shape[0]), generator=g, device=self.device)
                 if self.gaussian else th.rand(shape, generator=g, device=self.device) for g in self._torch_rngs]
        return th.stack(draws)

    @th.no_grad()
    def _act(self, obs: th.Tensor, lags: np.ndarray, tau: Optional[th.Tensor],
             noise: th.Tensor) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Actions, values and log mu for obs (S, E, D): environment e of seed s is acted by the snapshot
        ``lags[s, e]`` updates old (0 = the learner), tempered by ``tau`` (S, E) when given, sampling with
        ``noise`` (S, E, ...) from :meth:`_noise`."""
        out: Optional[List[th.Tensor]] = None
        for lag in np.unique(lags):
            params = self.params if lag == 0 else self.snapshots[-int(lag)]
            dist, values = self._forward(params, obs)
            behaviour = dist.tempered(tau)
            actions = behaviour.sample(noise)
            parts = [actions, values, behaviour.log_prob(actions)]
            if out is None:
                out = parts
            else:  # environments acted by this lag take this group's rows
                rows = th.as_tensor(lags == lag, device=self.device)
                out = [th.where(rows.view(*rows.shape, *([1] * (new.dim() - 2))), new, old)
                       for new, old in zip(parts, out)]
        assert out is not None and values is not None
        return out[0], out[1], out[2]

    # ------------------------------------------------------------------------------------- state in the models
    def export(self) -> None:
        """Give every model its seed's parameters, optimizer state, lag snapshots and random-stream states, so it
        saves, checkpoints and evaluates as a single run's model does."""
        state = self.optimizer.state
        self._copy_parameters()
        with th.no_grad():
            for s, model in enumerate(self.models):
                own = dict(model.policy.named_parameters())
                opt = model.policy.optimizer
                for group in opt.param_groups:
                    group["lr"] = self.optimizer.param_groups[0]["lr"]
                for name, stacked in self.params.items():
                    if stacked in state and state[stacked]:
                        opt.state[own[name]] = {k: (v.clone() if k == "step" else v[s].clone())
                                                for k, v in state[stacked].items()}
                seed_snapshots = [{n: t[s] for n, t in snap.items()} for snap in self.snapshots]
                model.behavior.load_snapshots(model.policy, seed_snapshots)
                if self.ewma is not None:
                    model.prox_ewma.load_state(model.policy, {"total_weight": self.ewma_weight,
                                                              "tensors": {n: t[s] for n, t in self.ewma.items()}})
                model._seed_batch_rng = (self._torch_rngs[s].get_state(), self._numpy_rngs[s].bit_generator.state)

    @th.no_grad()
    def _copy_parameters(self) -> None:
        """Each model's parameters := its seed's slice of the stacked parameters."""
        for s, model in enumerate(self.models):
            own = dict(model.policy.named_parameters())
            for name, stacked in self.params.items():
                own[name].copy_(stacked[s])

    def _import_optimizer_state(self) -> None:
        """Stack the models' optimizer states (a resumed batch); fresh models have none."""
        states = [m.policy.optimizer.state for m in self.models]
        owns = [dict(m.policy.named_parameters()) for m in self.models]
        for name, stacked in self.params.items():
            per_seed = [st.get(own[name]) for st, own in zip(states, owns)]
            if any(not p for p in per_seed):
                continue
            self.optimizer.state[stacked] = {
                k: (v.clone() if k == "step" else th.stack([p[k] for p in per_seed])) for k, v in per_seed[0].items()
            }

    # ------------------------------------------------------------------------------------------------ learn
    def learn(self, total_timesteps: int, callbacks: Optional[Sequence[Any]] = None, log_interval: int = 1,
              reset_num_timesteps: bool = True) -> "SeedBatch":
        """SB3's ``OnPolicyAlgorithm.learn`` for every seed in lockstep; ``callbacks[s]`` are seed s's callbacks."""
        callbacks = list(callbacks) if callbacks is not None else [None] * len(self.models)
        setups = [m._setup_learn(total_timesteps, cb, reset_num_timesteps, "SeedBatch", False)
                  for m, cb in zip(self.models, callbacks)]
        total = setups[0][0]
        seed_callbacks = [cb for _, cb in setups]
        self._evals = _learner_evals(seed_callbacks)
        for cb in seed_callbacks:
            cb.on_training_start(locals(), globals())
        iteration = 0
        while self.models[0].num_timesteps < total:
            if not self.collect_rollouts(seed_callbacks):
                break
            iteration += 1
            for model in self.models:
                model._update_current_progress_remaining(model.num_timesteps, total)
                if log_interval is not None and iteration % log_interval == 0:
                    model.dump_logs(iteration)
            self.train()
        self.export()
        for cb in seed_callbacks:
            cb.on_training_end()
        return self

    def collect_rollouts(self, seed_callbacks: Sequence[Any]) -> bool:
        """``LaggedPPO.collect_rollouts`` for every seed: one batched forward per step, then each seed's own
        environment step, callbacks and buffer, exactly as the single run does them."""
        models = self.models
        first = models[0]
        self.export()  # the models are current for checkpoints (on_rollout_start) and the timeout bootstrap
        stop: Optional[StopRequested] = None
        with _signals_held():  # a stop request (Ctrl-C) reaches every seed at the same boundary, or none
            for model, cb in zip(models, seed_callbacks):
                model.policy.set_training_mode(False)
                model.rollout_buffer.reset()
                try:
                    cb.on_rollout_start()
                except StopRequested as exc:  # every seed writes its checkpoint before the batch stops
                    stop = exc
        if stop is not None:
            raise stop
        # each seed's behaviour policies pick who acts (their snapshots mirror self.snapshots after export())
        lags = np.stack([m.behavior.start_rollout() for m in models])  # (S, E)
        temperatures = np.stack([m.behavior.temperatures for m in models])
        tau = None if (temperatures == 1.0).all() else th.as_tensor(temperatures, dtype=th.float32, device=self.device)
        box = isinstance(first.action_space, spaces.Box)
        venvs = [m.env for m in models]
        together = SeedEnvs(venvs) if SeedEnvs.supports(venvs) else None  # else each seed's VecEnv steps alone
        rollout = _StackedRollout([m.rollout_buffer for m in models], self._rollout_arrays)
        noise = self._noise(first.n_steps, first.n_envs)  # the rollout's noise, drawn at once per seed
        obs_np = np.stack([m._last_obs for m in models])
        starts = np.stack([m._last_episode_starts for m in models])

        for step in range(first.n_steps):
            actions, values, log_probs = self._act(th.as_tensor(obs_np, device=self.device), lags, tau, noise[:, step])
            actions_np = actions.cpu().numpy()
            clipped_np = np.clip(actions_np, first.action_space.low, first.action_space.high) if box else actions_np
            if together is not None:
                new_obs_np, rewards, dones, infos = together.step(clipped_np)
            else:
                stepped = [m.env.step(a) for m, a in zip(models, clipped_np)]
                new_obs_np, rewards, dones = (np.stack([out[i] for out in stepped]) for i in range(3))
                infos = [out[3] for out in stepped]
            for model in models:
                model.num_timesteps += model.env.num_envs
            if self._evals and all(e.due() for e in self._evals):  # each seed's evaluation, all seeds at once
                self._evaluate_together(self._evals)
            for s, (model, cb) in enumerate(zip(models, seed_callbacks)):
                cb.update_locals({"actions": actions_np[s], "clipped_actions": clipped_np[s], "new_obs": new_obs_np[s],
                                  "rewards": rewards[s], "dones": dones[s], "infos": infos[s]})
                if not cb.on_step():
                    return False
                model._update_info_buffer(infos[s], dones[s])
                model._bootstrap_timeouts(rewards[s], dones[s], infos[s])  # (adds to rewards[s] in place)
                model._last_obs, model._last_episode_starts = new_obs_np[s], dones[s]
            # what each seed's RolloutBuffer.add would store, for all seeds at once
            rollout.add(obs_np, actions_np if box else actions_np.reshape(*actions_np.shape[:2], 1), rewards, starts,
                        values.cpu().numpy(), log_probs.cpu().numpy())
            obs_np, starts = new_obs_np, dones

        lagged = lags.any(axis=1)
        if lagged.any():  # values for GAE from the learner's critic, one batched pass over the rollout
            learner_values = self._learner_pass(values=True)[1]
            for s in np.flatnonzero(lagged):
                buf = models[s].rollout_buffer
                buf.values[:] = learner_values[s].cpu().numpy().reshape(buf.buffer_size, buf.n_envs)
        if first.policy_lag > 0:  # this rollout's learner becomes the newest snapshot
            self.snapshots.append({n: t.detach().clone() for n, t in self.params.items()})
        with th.no_grad():
            last_obs = th.as_tensor(np.stack([m._last_obs for m in models]), device=self.device)
            last_values = self._forward(self.params, last_obs)[1]
        for s, (model, cb) in enumerate(zip(models, seed_callbacks)):
            model.logger.record("rollout/policy_lag", float(lags[s].mean()))
            model.logger.record("rollout/behavior_temperature", float(temperatures[s].mean()))
            model.rollout_buffer.compute_returns_and_advantage(last_values=last_values[s],
                                                               dones=model._last_episode_starts)
            cb.update_locals({"dones": model._last_episode_starts})
            cb.on_rollout_end()
        return True

    @th.no_grad()
    def _evaluate_together(self, evals: List[Any]) -> None:
        """Each seed's due learner evaluation (``LearnerEvalCallback``: its env seeded and given the training
        statistics, deterministic actions, ``n_eval_episodes`` episodes counted from the Monitor's info as SB3's
        ``evaluate_policy`` counts them), with one batched forward per step for all seeds and their evaluation envs
        stepping together; each seed's episodes go to its own callback."""
        for e in evals:
            e.prepare()
        envs = SeedEnvs([e.eval_env for e in evals])
        obs = np.stack([e.eval_env.reset() for e in evals])
        n_envs = obs.shape[1]
        targets = np.array([[(e.n_eval_episodes + i) // n_envs for i in range(n_envs)] for e in evals])
        counts = np.zeros_like(targets)
        returns: List[List[float]] = [[] for _ in evals]
        lengths: List[List[int]] = [[] for _ in evals]
        space = self.models[0].action_space
        while (counts < targets).any():
            actions = self._forward(self.params, th.as_tensor(obs, device=self.device), critic=False)[0].mode()
            actions_np = actions.cpu().numpy()
            if isinstance(space, spaces.Box):
                actions_np = np.clip(actions_np, space.low, space.high)
            obs, _, dones, infos = envs.step(actions_np)
            for s, e in zip(*np.nonzero(dones & (counts < targets))):
                if "episode" in infos[s][e]:
                    returns[s].append(infos[s][e]["episode"]["r"])
                    lengths[s].append(infos[s][e]["episode"]["l"])
                    counts[s, e] += 1
        for e, seed_returns, seed_lengths in zip(evals, returns, lengths):
            e.record(seed_returns, seed_lengths)

    @th.no_grad()
    def _learner_pass(self, values: bool) -> Tuple[th.Tensor, Optional[th.Tensor]]:
        """The learner's log-probs of every stored action and (with ``values``) its values, (S, n_steps * E) each,
        step-major, for all seeds in one batched pass."""
        bufs = [m.rollout_buffer for m in self.models]
        obs = th.as_tensor(np.stack([flat_observations(b) for b in bufs]), device=self.device)
        n = bufs[0].buffer_size * bufs[0].n_envs
        actions = th.as_tensor(np.stack([b.actions.reshape(n, *b.actions.shape[2:]).astype(np.float32) for b in bufs]),
                               device=self.device)
        dist, value = self._forward(self.params, obs, critic=values)
        return dist.log_prob(actions if self.gaussian else actions.squeeze(-1)), value

    # ------------------------------------------------------------------------------------------------ train
    def train(self) -> None:
        """``LaggedPPO.train`` for every seed: the same diagnostics, minibatch loss and metrics per seed."""
        models, first = self.models, self.models[0]
        # pi_prox and the lag diagnostics, per seed, from one batched pass of the learner
        learner_log_prob = self._learner_pass(values=False)[0]
        for s, model in enumerate(models):
            # (log mu verbatim where the seed's learner acted untempered, as in the single run)
            model._log_lag_diagnostics(model._prox_log_probs(learner_log_prob[s]))
            model._update_learning_rate(model.policy.optimizer)
        for group in self.optimizer.param_groups:
            group["lr"] = first.policy.optimizer.param_groups[0]["lr"]
        progress = first._current_progress_remaining
        clip_range = first.clip_range(progress)  # type: ignore[operator]
        clip_range_vf = None if first.clip_range_vf is None else first.clip_range_vf(progress)  # type: ignore[operator]

        columns = self._stacked_columns()
        n = columns[0].shape[1]
        seeds = th.arange(len(models), device=self.device).unsqueeze(1)
        parameters = list(self.params.values())

        def seed_loss(values, log_prob, entropy, old_values, old_log_prob, advantages, returns, prox):
            data = LaggedRolloutBufferSamples(None, None, old_values, old_log_prob, advantages, returns, None, prox)
            return first._minibatch_loss(data, values, log_prob, entropy, clip_range, clip_range_vf)

        batched_loss = vmap(seed_loss)
        metrics: Dict[str, List[th.Tensor]] = defaultdict(list)
        approx_kl_divs: List[th.Tensor] = []
        for _ in range(first.n_epochs):
            approx_kl_divs = []
            order = th.as_tensor(np.stack([rng.permutation(n) for rng in self._numpy_rngs]), device=self.device)
            for start in range(0, n, first.batch_size):
                idx = order[:, start : start + first.batch_size]
                obs, actions, old_values, old_log_prob, advantages, returns, prox = (c[seeds, idx] for c in columns)
                dist, values = self._forward(self.params, obs)
                log_prob = dist.log_prob(actions if self.gaussian else actions.squeeze(-1))
                if self.ewma_beta is not None:  # PPO-EWMA: pi_prox from each seed's average as it is now
                    prox = self._ewma_log_prob(obs, actions)
                loss, minibatch_metrics, approx_kl = batched_loss(
                    values, log_prob, dist.entropy(), old_values, old_log_prob, advantages, returns, prox
                )
                for key, value in minibatch_metrics.items():
                    metrics[key].append(value)
                approx_kl_divs.append(approx_kl)
                self.optimizer.zero_grad()
                loss.sum().backward()  # the gradient of each seed's parameters is that seed's own
                self._clip_grad_norm(parameters, first.max_grad_norm)
                adam_step(self.optimizer)
                if self.ewma is not None:  # PPO-EWMA: each seed's average takes in its new parameters
                    names = list(self.ewma)
                    self.ewma_weight = ewma_step([self.ewma[n] for n in names],
                                                 [self.params[n].detach() for n in names], self.ewma_beta,
                                                 self.ewma_weight)
            for model in models:
                model._n_updates += 1

        self._copy_parameters()  # the models' own parameters, for their logged std (and any reader until export)
        for s, model in enumerate(models):
            seed_metrics = {key: [per_minibatch[s] for per_minibatch in column] for key, column in metrics.items()}
            model._record_update(seed_metrics, [kl[s] for kl in approx_kl_divs], loss[s], clip_range, clip_range_vf)

    @th.no_grad()
    def _ewma_log_prob(self, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """log pi_prox of a minibatch (S, B) under each seed's PPO-EWMA average (started from the seeds' parameters
        when first read, as :class:`agents.ewma.ProximalEWMA` does)."""
        if self.ewma is None:
            self.ewma = {n: self.params[n].detach().clone() for n in actor_parameter_names(self.models[0].policy)}
            self.ewma_weight = 1.0
        dist = self._forward({**self.params, **self.ewma}, obs, critic=False)[0]
        return dist.log_prob(actions if self.gaussian else actions.squeeze(-1))

    def _stacked_columns(self) -> List[th.Tensor]:
        """Each seed's rollout, flattened env-major as SB3's minibatches see it, stacked: observations, actions,
        values, log mu, advantages, returns, pi_prox, each (S, N, ...)."""
        per_seed = []
        for model in self.models:
            model.rollout_buffer.prepare()
            obs, actions, values, log_mu, advantages, returns, _segments, prox = model.rollout_buffer.torch_columns
            per_seed.append((obs, actions, values, log_mu, advantages, returns, prox))
        return [th.stack(column) for column in zip(*per_seed)]

    @staticmethod
    def _clip_grad_norm(parameters: List[th.Tensor], max_norm: float) -> None:
        """``torch.nn.utils.clip_grad_norm_`` per seed: each seed's gradient scaled by its own total norm."""
        # (S, n_parameters), reduced along its contiguous rows: the same summation order for any S
        norms = th.stack([th.linalg.vector_norm(p.grad.reshape(p.shape[0], -1), dim=1) for p in parameters], dim=1)
        total = th.linalg.vector_norm(norms, dim=1)
        coef = th.clamp(max_norm / (total + 1e-6), max=1.0)
        for p in parameters:
            p.grad.mul_(coef.view(-1, *([1] * (p.dim() - 1))))
