"""The optimizer maths of the fast path: torch's Adam (multi-tensor branch) and gradient clipping on CPU, without
their per-call machinery, bit-identical to torch.

Adam's elementwise ops run once over flat buffers of all parameters instead of once per parameter, and the
optimizer's state holds views of those buffers, so ``state_dict`` and checkpoints are torch's usual per-parameter
tensors; clipping issues torch's own foreach branch directly. Every parameter and optimizer state is identical to
torch's (tests/test_speedups.py). Anything not covered (fused/capturable/GPU optimizers, hooks, sparse or complex
gradients, a torch without the private functions used) falls back to torch's own calls; those private names are
checked by tests/test_fast_paths_torch_names.py, so a torch upgrade that moves one fails one clear test.
"""

from __future__ import annotations

import weakref
from typing import Any, List, Optional

import torch as th
from torch.optim import optimizer as _optim_module

try:  # private helpers of torch's own Adam; without them the fast Adam is off
    from torch.optim.optimizer import _get_scalar_dtype

    _HAS_FAST_ADAM = hasattr(th, "_foreach_lerp_")
except ImportError:  # pragma: no cover - older torch
    _HAS_FAST_ADAM = False
_HAS_SPLIT_CLIP = hasattr(th.nn.utils, "get_total_norm") and hasattr(th.nn.utils, "clip_grads_with_norm_")


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
