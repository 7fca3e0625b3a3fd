"""A fast path for SB3's stock Gaussian actor-critic and Adam on CPU, bit-identical to the slow path.

On the small MLPs of MuJoCo most of PPO's time is Python overhead, not arithmetic: building a torch ``Normal``
(with argument validation) per forward pass, ``nn.Module.__call__`` per layer, the optimizer's per-call machinery.
The functions here issue *the same tensor operations in the same order* as SB3's ``ActorCriticPolicy`` methods,
torch's ``Normal``, ``clip_grad_norm_`` and ``Adam`` (multi-tensor branch; its elementwise ops run once over flat
buffers of all parameters instead of once per parameter), without that overhead, so every value, gradient,
optimizer state and RNG draw is identical (tests/test_speedups.py). Anything they do not cover (custom
policies, hooks, gSDE, discrete or squashed actions, fused/capturable/GPU optimizers, a torch without the
functions used) falls back to SB3's and torch's own calls.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch as th
from stable_baselines3.common.distributions import DiagGaussianDistribution, sum_independent_dims
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
from torch import nn
from torch.distributions import Distribution
from torch.nn import functional as F
from torch.nn.modules import module as _nn_module
from torch.optim import optimizer as _optim_module

try:  # private helpers of torch's own Adam; without them the fast Adam is off
    from torch.optim.optimizer import _get_scalar_dtype

    _HAS_FAST_ADAM = hasattr(th, "_foreach_lerp_")
except ImportError:  # pragma: no cover - older torch
    _HAS_FAST_ADAM = False
_HAS_SPLIT_CLIP = hasattr(th.nn.utils, "get_total_norm") and hasattr(th.nn.utils, "clip_grads_with_norm_")
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


_PLAIN_ADAM = {"weight_decay": 0, "amsgrad": False, "maximize": False, "capturable": False, "differentiable": False,
               "decoupled_weight_decay": False}


def _plain_adam(optimizer: th.optim.Optimizer) -> bool:
    """A ``th.optim.Adam`` on CPU with torch's default flags, float hyperparameters and no step hooks."""
    if type(optimizer) is not th.optim.Adam or optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks:
        return False
    if getattr(_optim_module, "_global_optimizer_pre_hooks", None) or getattr(
        _optim_module, "_global_optimizer_post_hooks", None
    ):
        return False
    for group in optimizer.param_groups:
        if group.get("fused") or any(group.get(k, v) != v for k, v in _PLAIN_ADAM.items()):
            return False
        if not isinstance(group["lr"], float) or not all(isinstance(b, float) for b in group["betas"]):
            return False
        for p in group["params"]:
            if p.grad is not None and (p.device.type != "cpu" or p.grad.is_sparse or th.is_complex(p)):
                return False
    return True


class _FlatAdamState:
    """``exp_avg`` and ``exp_avg_sq`` of every parameter of one param group as views of two flat buffers (the
    optimizer's state holds the views, so ``state_dict`` and checkpoints see torch's usual per-parameter tensors).

    Elementwise arithmetic gives the same value for an element whatever tensor it sits in, so running Adam's
    elementwise ops once over the flat buffers (one kernel call per op instead of one per parameter, better cache
    use) gives torch's values bit for bit (tests/test_speedups.py). Only the gradients are copied in (one ``cat``)
    and the parameters updated through views (``_foreach_addcdiv_``).
    """

    def __init__(self, optimizer: th.optim.Optimizer, group: dict) -> None:
        self.params: List[th.Tensor] = list(group["params"])
        state = optimizer.state
        self.exp_avg = th.zeros(sum(p.numel() for p in self.params), dtype=self.params[0].dtype)
        self.exp_avg_sq = th.zeros_like(self.exp_avg)
        self.denom = th.empty_like(self.exp_avg)
        self.grad = th.empty_like(self.exp_avg)
        self.steps = [state[p]["step"] for p in self.params]
        self.exp_avg_views = _views(self.exp_avg, self.params)
        self.exp_avg_sq_views = _views(self.exp_avg_sq, self.params)
        self.denom_views = _views(self.denom, self.params)
        for p, m, v in zip(self.params, self.exp_avg_views, self.exp_avg_sq_views):
            m.copy_(state[p]["exp_avg"])
            v.copy_(state[p]["exp_avg_sq"])
            state[p]["exp_avg"], state[p]["exp_avg_sq"] = m, v

    def valid(self, optimizer: th.optim.Optimizer, group: dict) -> bool:
        """Still the group's parameters, and the optimizer's state still our views (``load_state_dict`` replaces them)."""
        params = group["params"]
        if len(params) != len(self.params) or any(a is not b for a, b in zip(params, self.params)):
            return False
        state = optimizer.state
        return all(
            state[p].get("exp_avg") is m and state[p].get("exp_avg_sq") is v and state[p].get("step") is s
            for p, m, v, s in zip(self.params, self.exp_avg_views, self.exp_avg_sq_views, self.steps)
        )


def _views(flat: th.Tensor, params: List[th.Tensor]) -> List[th.Tensor]:
    out, offset = [], 0
    for p in params:
        out.append(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return out


_FLAT_STATES: "weakref.WeakKeyDictionary[th.optim.Optimizer, List[Optional[_FlatAdamState]]]" = weakref.WeakKeyDictionary()


def _flat_state(optimizer: th.optim.Optimizer, index: int, group: dict, params: List[th.Tensor]) -> Optional[_FlatAdamState]:
    """The flat buffers of a group whose parameters all have a gradient, share one dtype, are contiguous and have
    taken the same number of steps; None otherwise (then the per-parameter path runs)."""
    cache = _FLAT_STATES.setdefault(optimizer, [])
    cache.extend([None] * (index + 1 - len(cache)))
    usable = (
        len(params) == len(group["params"])
        and len({p.dtype for p in params}) == 1
        and all(p.is_contiguous() and p.grad.is_contiguous() and p.grad.dtype == p.dtype for p in params)
    )
    flat = cache[index]
    if usable and flat is not None and flat.valid(optimizer, group):
        return flat
    # Rebuilt only from equal step counts: the per-parameter path may have stepped some parameters only.
    if not usable or len({float(optimizer.state[p]["step"]) for p in params}) != 1:
        cache[index] = None
        return None
    cache[index] = _FlatAdamState(optimizer, group)
    return cache[index]


@th.no_grad()
def adam_step(optimizer: th.optim.Optimizer) -> None:
    """``optimizer.step()``; for a plain CPU ``Adam`` the arithmetic of torch's multi-tensor implementation
    (``torch.optim.adam._multi_tensor_adam``, non-capturable branch, itself bit-identical to the per-parameter loop
    torch uses by default on CPU) issued directly: same kernels, same scalars, same state (``step``, ``exp_avg``,
    ``exp_avg_sq``), without the optimizer's per-call Python machinery. When every parameter of a group has a
    gradient, the elementwise ops run once over flat buffers (:class:`_FlatAdamState`). Anything else calls
    ``optimizer.step()``.
    """
    if not (_HAS_FAST_ADAM and _plain_adam(optimizer)):
        optimizer.step()
        return
    for index, group in enumerate(optimizer.param_groups):
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        for p in params:
            state = optimizer.state[p]
            if len(state) == 0:  # Adam._init_group's lazy initialisation (non-fused, non-capturable)
                state["step"] = th.tensor(0.0, dtype=_get_scalar_dtype(), device="cpu")
                state["exp_avg"] = th.zeros_like(p, memory_format=th.preserve_format)
                state["exp_avg_sq"] = th.zeros_like(p, memory_format=th.preserve_format)
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        flat = _flat_state(optimizer, index, group, params)
        if flat is None:
            _multi_tensor_adam(optimizer, params, beta1, beta2, lr, eps)
            continue
        th.cat([p.grad.reshape(-1) for p in params], out=flat.grad)
        grad, exp_avg, exp_avg_sq, denom = flat.grad, flat.exp_avg, flat.exp_avg_sq, flat.denom
        th._foreach_add_(flat.steps, 1.0)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2)
        exp_avg_sq.addcmul_(grad, grad, value=1 - beta2)
        step = flat.steps[0].item()  # all equal (checked when the buffers were built, incremented together)
        step_size = (lr / (1 - beta1**step)) * -1
        th.sqrt(exp_avg_sq, out=denom)
        denom.div_((1 - beta2**step) ** 0.5)
        denom.add_(eps)
        th._foreach_addcdiv_(params, flat.exp_avg_views, flat.denom_views, step_size)


def _multi_tensor_adam(
    optimizer: th.optim.Optimizer, params: List[th.Tensor], beta1: float, beta2: float, lr: float, eps: float
) -> None:
    """torch's ``_multi_tensor_adam`` arithmetic over the parameters that have a gradient."""
    states = [optimizer.state[p] for p in params]
    grads = [p.grad for p in params]
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]
    steps = [s["step"] for s in states]
    th._foreach_add_(steps, 1.0)
    th._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    th._foreach_mul_(exp_avg_sqs, beta2)
    th._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    step_values = [step.item() for step in steps]
    bias_correction1 = [1 - beta1**step for step in step_values]
    bias_correction2 = [1 - beta2**step for step in step_values]
    step_size = [(lr / bc) * -1 for bc in bias_correction1]
    bias_correction2_sqrt = [bc**0.5 for bc in bias_correction2]
    exp_avg_sq_sqrt = th._foreach_sqrt(exp_avg_sqs)
    th._foreach_div_(exp_avg_sq_sqrt, bias_correction2_sqrt)
    th._foreach_add_(exp_avg_sq_sqrt, eps)
    th._foreach_addcdiv_(params, exp_avgs, exp_avg_sq_sqrt, step_size)


def clip_grad_norm(parameters: Any, max_norm: float) -> th.Tensor:
    """``th.nn.utils.clip_grad_norm_(parameters, max_norm)``, minus its multiplication by exactly 1.0.

    torch always multiplies every gradient by ``clamp(max_norm / (total_norm + 1e-6), max=1)`` to avoid a device
    synchronisation; on CPU that check is free, and ``g * 1.0 == g`` exactly, so when the norm is below
    ``max_norm`` the pass over all gradients is skipped. For plain CPU gradients of one dtype (one group in torch's
    grouping by device and dtype) torch's foreach branch is issued directly: the norm of the stacked per-tensor
    norms, then one ``_foreach_mul_``; anything else calls torch's functions.
    """
    params = list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or grads[0].device.type != "cpu" or not _HAS_SPLIT_CLIP:
        return th.nn.utils.clip_grad_norm_(params, max_norm)
    max_norm = float(max_norm)
    dtype = grads[0].dtype
    one_group = all(type(g) is th.Tensor and g.dtype == dtype and g.device.type == "cpu" and g.layout == th.strided
                    for g in grads)
    if one_group:
        total_norm = th.linalg.vector_norm(th.stack(th._foreach_norm(grads, 2.0)), 2.0)
    else:
        total_norm = th.nn.utils.get_total_norm(grads, 2.0, False, None)
    clip_coef_clamped = th.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    if bool(clip_coef_clamped == 1.0):  # (a NaN norm is not 1.0: then the multiplication runs, as stock)
        return total_norm
    if one_group:
        th._foreach_mul_(grads, clip_coef_clamped)
    else:
        th.nn.utils.clip_grads_with_norm_(params, max_norm, total_norm)
    return total_norm
