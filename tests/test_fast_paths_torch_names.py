"""The private names of torch and SB3 the fast paths (agents/fast_policy.py, agents/fast_optim.py) rely on.

A release that renames one of them would otherwise make the fast path fall back silently (slower), or, for the
global hook registries, stop noticing a hook a user registered (wrong numbers). Here it fails one clear test."""

from __future__ import annotations

import pytest
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from torch.distributions import Distribution
from torch.nn.modules import module as nn_module
from torch.optim import optimizer as optim_module

NAMES = [
    # agents/fast_optim.py: the scalar dtype of torch's Adam state, the optimizer hook registries and the foreach
    # kernels its multi-tensor branch issues (which fast_optim issues the same way)
    (optim_module, "_get_scalar_dtype"),
    (optim_module, "_global_optimizer_pre_hooks"),
    (optim_module, "_global_optimizer_post_hooks"),
    *[(torch, f"_foreach_{op}") for op in ("add_", "lerp_", "mul_", "addcmul_", "sqrt", "div_", "addcdiv_", "norm")],
    (torch.nn.utils, "get_total_norm"),
    (torch.nn.utils, "clip_grads_with_norm_"),
    # agents/fast_policy.py: the hook registries that make a module or the run fall back to nn.Module.__call__
    *[(nn_module, name) for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                                     "_global_backward_pre_hooks", "_global_forward_hooks_always_called",
                                     "_global_forward_hooks_with_kwargs")],
    (Distribution, "_validate_args"),
    (torch, "_is_all_true"),
    (ActorCriticPolicy, "_get_action_dist_from_latent"),
]


@pytest.mark.parametrize("owner, name", NAMES, ids=[f"{getattr(o, '__name__', o)}.{n}" for o, n in NAMES])
def test_private_name_still_exists(owner, name: str) -> None:
    assert hasattr(owner, name), (
        f"{getattr(owner, '__name__', owner)}.{name} is gone in torch {torch.__version__}: agents/fast_policy.py or "
        "agents/fast_optim.py relies on it; update them (tests/test_speedups.py checks the result bit for bit)")


def test_per_instance_hook_registries() -> None:
    module, optimizer = torch.nn.Linear(2, 2), torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
    for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
        assert hasattr(module, name), f"nn.Module.{name} is gone: agents/fast_policy.py's _no_hooks relies on it"
    for name in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks"):
        assert hasattr(optimizer, name), f"Optimizer.{name} is gone: agents/fast_optim.py's _plain_adam relies on it"
