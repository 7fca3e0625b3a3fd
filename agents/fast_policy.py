"""The policy maths of the fast path: SB3's stock Gaussian actor-critic on CPU, bit-identical to the slow path.

On the small MLPs of MuJoCo most of PPO's time is Python overhead, not arithmetic: building a torch ``Normal``
(with argument validation) per forward pass and ``nn.Module.__call__`` per layer. The functions here issue *the
same tensor operations in the same order* as SB3's ``ActorCriticPolicy`` methods and torch's ``Normal``, without
that overhead, so every value, gradient and RNG draw is identical (tests/test_speedups.py). Anything they do not
cover (custom policies, hooks, gSDE, discrete or squashed actions) falls back to SB3's and torch's own calls. The
optimizer half of the fast path is :mod:`agents.fast_optim`; the private torch names both rely on are checked by
tests/test_fast_paths_torch_names.py.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Dict, NamedTuple, Tuple

import torch as th
from stable_baselines3.common.distributions import DiagGaussianDistribution, sum_independent_dims
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
from torch import nn
from torch.distributions import Distribution
from torch.nn import functional as F
from torch.nn.modules import module as _nn_module
_HAS_ALL_TRUE = hasattr(th, "_is_all_true")


# The methods a policy class must not override for the fast Gaussian path (see the module docstring).
_GAUSSIAN_METHODS = ("forward", "evaluate_actions", "get_distribution", "extract_features", "_get_action_dist_from_latent")
_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # the constant of torch's Normal.log_prob
_ENTROPY_CONST = 0.5 + 0.5 * math.log(2 * math.pi)  # the constant of torch's Normal.entropy (added first, as there)


def has_fast_gaussian(policy: Any) -> bool:
    """True for SB3's own actor-critic policy with a plain diagonal Gaussian (no subclass overriding its maths)."""
    cls = type(policy)
    return (
        isinstance(policy, ActorCriticPolicy)
        and type(policy.action_dist) is DiagGaussianDistribution
        and not policy.use_sde
        and all(getattr(cls, m) is getattr(ActorCriticPolicy, m) for m in _GAUSSIAN_METHODS)
    )


def _gaussian(policy: ActorCriticPolicy, latent_pi: th.Tensor) -> Tuple[th.Tensor, th.Tensor]:
    """(loc, scale) as ``DiagGaussianDistribution.proba_distribution`` and ``Normal.__init__`` compute them."""
    mean_actions = _run(policy.action_net, latent_pi)
    action_std = th.ones_like(mean_actions) * policy.log_std.exp()
    loc, scale = th.broadcast_tensors(mean_actions, action_std)  # Normal's broadcast_all
    _validate(loc, (loc == loc).all() & (scale > 0).all(), scale)
    return loc, scale


def _validate(loc: th.Tensor, valid: Any, scale: th.Tensor) -> None:
    if Distribution._validate_args and not (th._is_all_true(valid) if _HAS_ALL_TRUE else bool(valid)):
        # what Normal's argument validation would raise (a diverged network), so failures stay loud
        raise ValueError(f"Expected parameters loc and scale of Normal to satisfy Real() and GreaterThan(0), "
                         f"but found invalid values:\nloc={loc}\nscale={scale}")


def _gaussian_log_prob(loc: th.Tensor, scale: th.Tensor, value: th.Tensor) -> th.Tensor:
    """``sum_independent_dims(Normal(loc, scale).log_prob(value))`` op for op."""
    return _log_prob_from(loc, value, scale**2, scale.log())


def _log_prob_from(loc: th.Tensor, value: th.Tensor, var: th.Tensor, log_scale: th.Tensor) -> th.Tensor:
    return sum_independent_dims(-((value - loc) ** 2) / (2 * var) - log_scale - _LOG_SQRT_2PI)


class _ActingScale(NamedTuple):
    """What the Gaussian's scale contributes to acting, for one ``log_std`` and batch shape."""

    log_std: th.Tensor  #: the values it was computed from (a copy)
    scale: th.Tensor  #: ``ones_like(mean) * log_std.exp()``, as ``_gaussian``
    scale_valid: th.Tensor  #: ``(scale > 0).all()``
    var: th.Tensor  #: ``scale**2``
    log_scale: th.Tensor  #: ``scale.log()``


# While acting (no autograd) log_std is constant over a rollout: the scale terms are computed once per log_std value
# (and batch shape) instead of once per step, by the same ops, so they are the same tensors bit for bit. Keyed by
# id(log_std) (a tensor cannot be a dict key: == is elementwise), the entry dropped when the tensor is.
_ACTING_SCALES: Dict[int, _ActingScale] = {}


def _acting_scale(log_std: th.Tensor, mean_actions: th.Tensor) -> _ActingScale:
    key = id(log_std)
    cached = _ACTING_SCALES.get(key)
    if cached is not None and cached.scale.shape == mean_actions.shape and th.equal(cached.log_std, log_std):
        return cached  # (an id reused by a new tensor is caught by the value check as well)
    if cached is None:
        weakref.finalize(log_std, _ACTING_SCALES.pop, key, None)
    scale = th.ones_like(mean_actions) * log_std.exp()
    cached = _ActingScale(log_std.clone(), scale, (scale > 0).all(), scale**2, scale.log())
    _ACTING_SCALES[key] = cached
    return cached


# nn.Module.__call__ costs several microseconds per module (hook bookkeeping), as much as a 256x256 matmul on one
# sample: for the plain layers of SB3's MLPs the fast path calls their ``forward`` body directly (``Linear.forward``
# is ``F.linear(x, weight, bias)``, ...), which is exactly what ``__call__`` would run when no hook is registered.
_HOOK_DICTS = tuple(getattr(_nn_module, name) for name in (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks",
    "_global_forward_hooks_always_called", "_global_forward_hooks_with_kwargs") if hasattr(_nn_module, name))


def _no_hooks(module: nn.Module) -> bool:
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _run(module: nn.Module, x: th.Tensor) -> th.Tensor:
    """``module(x)`` for plain layers, minus ``nn.Module.__call__``; anything else (or any hook) calls the module."""
    cls = type(module)
    if any(_HOOK_DICTS) or not _no_hooks(module):
        return module(x)
    if cls is nn.Linear:
        return F.linear(x, module.weight, module.bias)
    if cls is nn.Sequential:
        for layer in module:
            x = _run(layer, x)
        return x
    if cls is nn.ReLU:
        return F.relu(x, inplace=module.inplace)
    if cls is nn.Tanh:
        return th.tanh(x)
    if cls is nn.Flatten:
        return x.flatten(module.start_dim, module.end_dim)
    if cls is FlattenExtractor:
        return _run(module.flatten, x)
    return module(x)


def _features(policy: ActorCriticPolicy, obs: th.Tensor, extractor: nn.Module) -> th.Tensor:
    """``BaseModel.extract_features(obs, extractor)``."""
    return _run(extractor, preprocess_obs(obs, policy.observation_space, normalize_images=policy.normalize_images))


def _latents(policy: ActorCriticPolicy, obs: th.Tensor) -> Tuple[th.Tensor, th.Tensor]:
    """``latent_pi, latent_vf`` as ``ActorCriticPolicy.forward`` / ``evaluate_actions`` compute them."""
    mlp = policy.mlp_extractor
    plain = type(mlp) is MlpExtractor and _no_hooks(mlp)
    if policy.share_features_extractor:
        features = _features(policy, obs, policy.features_extractor)
        if not plain:
            return mlp(features)
        return _run(mlp.policy_net, features), _run(mlp.value_net, features)  # MlpExtractor.forward
    pi_features = _features(policy, obs, policy.pi_features_extractor)
    vf_features = _features(policy, obs, policy.vf_features_extractor)
    if not plain:
        return mlp.forward_actor(pi_features), mlp.forward_critic(vf_features)
    return _run(mlp.policy_net, pi_features), _run(mlp.value_net, vf_features)


def fast_forward(policy: ActorCriticPolicy, obs: th.Tensor) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
    """``ActorCriticPolicy.forward(obs)`` (stochastic) for a plain Gaussian policy; same RNG draws."""
    latent_pi, latent_vf = _latents(policy, obs)
    values = _run(policy.value_net, latent_vf)
    if th.is_grad_enabled():
        loc, scale = _gaussian(policy, latent_pi)
        var, log_scale = scale**2, scale.log()
    else:  # acting: _gaussian's ops with the scale terms reused across steps
        loc = _run(policy.action_net, latent_pi)
        scale, scale_valid, var, log_scale = _acting_scale(policy.log_std, loc)[1:]
        _validate(loc, (loc == loc).all() & scale_valid, scale)
    eps = th.empty(loc.shape, dtype=loc.dtype, device=loc.device).normal_()  # Normal.rsample
    actions = loc + eps * scale
    log_prob = _log_prob_from(loc, actions, var, log_scale)
    return actions.reshape((-1, *policy.action_space.shape)), values, log_prob  # type: ignore[misc]


def fast_evaluate_actions(
    policy: ActorCriticPolicy, obs: th.Tensor, actions: th.Tensor
) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
    """``ActorCriticPolicy.evaluate_actions`` for a plain Gaussian policy, same autograd graph."""
    latent_pi, latent_vf = _latents(policy, obs)
    loc, scale = _gaussian(policy, latent_pi)
    log_prob = _gaussian_log_prob(loc, scale, actions)
    values = _run(policy.value_net, latent_vf)
    entropy = sum_independent_dims(_ENTROPY_CONST + th.log(scale))
    return values, log_prob, entropy


def fast_log_prob(policy: ActorCriticPolicy, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
    """``policy.get_distribution(obs).log_prob(actions)`` for a plain Gaussian policy."""
    features = _features(policy, obs, policy.pi_features_extractor)
    mlp = policy.mlp_extractor
    latent_pi = _run(mlp.policy_net, features) if type(mlp) is MlpExtractor and _no_hooks(mlp) else mlp.forward_actor(features)
    loc, scale = _gaussian(policy, latent_pi)
    return _gaussian_log_prob(loc, scale, actions)
