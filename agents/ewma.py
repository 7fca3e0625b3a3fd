"""PPO-EWMA's proximal policy: an exponentially weighted moving average of the learner's actor parameters.

Hilton, Cobbe & Schulman 2021, "Batch size-invariance for policy optimization" (arXiv 2110.00641), code
openai/ppo-ewma. The decoupled objective (:mod:`agents.objectives`) clips pi_theta / pi_prox and weights by
pi_prox / mu; with ``prox="start"`` pi_prox is the learner at the start of the update, with ``prox="ewma"`` it is
this average, as in the paper:

- **what is averaged**: the network's parameters (not its outputs). Here only the actor's: the average's one use is
  log pi_prox, and openai/ppo-ewma discards the averaged network's values (``ppo_ewma/ppo.py`` ``compute_losses``);
  a critic that does not share the actor's layers would be averaged for nothing;
- **the rule** (``ppo_ewma/ppg.py`` ``EwmaModel.update``), after every optimiser step, with decay beta::

      W <- beta * W + 1,     theta_ewma <- theta_ewma * (beta * W_old / W) + theta / W

  W starts at 1 with theta_ewma = the initial parameters. This is the *debiased* average: theta_ewma is always
  sum_k beta^k theta_(t-k) / sum_k beta^k over the iterates since the start, so the initial parameters do not keep
  the weight (1 - beta)^0 = 1 that a plain ``lerp`` would leave them. beta = 0 gives W = 1 and theta_ewma = theta
  exactly (the learner itself);
- **when it is read**: in every minibatch, the average as it is *now* (``compute_losses`` evaluates the EWMA network
  on each minibatch), without gradient. So pi_prox moves during an update, unlike ``prox="start"``.

The paper's parameter is the decay beta_prox per optimiser step. The parameters after step t-k carry weight
proportional to beta^k, so the average's mean age is beta / (1 - beta) optimiser steps (the "center of mass"),
beta / (1 - beta) * batch_size examples. The paper keeps that age in examples fixed when the batch sizes are divided
by c: the age in steps is multiplied by c, beta -> c * beta / (1 - beta + c * beta). See docs/ppo_ewma.md for the
default (the paper's appendix: age 8 steps, beta = 8/9 = 0.889), the conversion and the cost.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch as th
from torch import nn

from agents.behavior import _acting_copy
from agents.fast_policy import fast_log_prob
from agents.options import PROX_MODES

#: beta_prox of the paper's experiments (see docs/ppo_ewma.md for its source); openai/ppo-ewma's own default is off
PROX_EWMA_BETA = 0.889
#: parameter-name prefixes of SB3's critic (ActorCriticPolicy): not averaged (only log pi_prox is read)
CRITIC_PREFIXES = ("value_net.", "mlp_extractor.value_net.", "vf_features_extractor.")


def check_prox(prox: Any) -> None:
    if prox not in PROX_MODES:
        raise ValueError(f"prox={prox!r} is unknown: choose one of {', '.join(PROX_MODES)}")


def check_prox_ewma_beta(beta: Any) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
        raise ValueError(f"prox_ewma_beta={beta!r} must be a number in [0, 1), e.g. {PROX_EWMA_BETA} (the paper's)")


@th.no_grad()
def ewma_step(average: List[th.Tensor], current: List[th.Tensor], beta: float, total_weight: float) -> float:
    """One step of openai/ppo-ewma's debiased rule (module docstring) in place on ``average``; returns the new W.
    Elementwise, so a stack of seeds (agents/seed_batch.py) steps as each seed alone."""
    new_total = beta * total_weight + 1
    th._foreach_mul_(average, beta * total_weight / new_total)
    th._foreach_add_(average, th._foreach_div(current, new_total))
    return new_total


def actor_parameter_names(policy: nn.Module) -> List[str]:
    """The learner's parameters that its action distribution depends on (every one but the critic's)."""
    return [name for name, _ in policy.named_parameters() if not name.startswith(CRITIC_PREFIXES)]


class ProximalEWMA:
    """The EWMA of the learner's actor parameters, beside the learner (``LaggedPPO.prox_ewma``).

    It takes its starting point from the learner when first read (:meth:`log_prob`): the initial parameters in a
    new run, the loaded ones after ``load``. Checkpoints save and restore it (:meth:`state`, :meth:`load_state`).

    :param beta: beta_prox in [0, 1), the decay per optimiser step
    """

    def __init__(self, beta: float) -> None:
        check_prox_ewma_beta(beta)
        self.beta = float(beta)
        self.total_weight = 1.0  #: W of the update rule (module docstring)
        self.module: Optional[nn.Module] = None  #: a copy of the learner holding the averaged actor parameters
        self._names: List[str] = []

    def _start(self, learner: nn.Module) -> None:
        if self.module is None:
            self.module = _acting_copy(learner)
            self._names = actor_parameter_names(learner)
            self.total_weight = 1.0

    def _tensors(self, module: nn.Module) -> List[th.Tensor]:
        params = dict(module.named_parameters())
        return [params[name] for name in self._names]

    @th.no_grad()
    def update(self, learner: nn.Module) -> None:
        """Take in the learner's parameters after an optimiser step (openai/ppo-ewma's rule, module docstring)."""
        self._start(learner)
        mine = self._tensors(self.module)  # type: ignore[arg-type]
        self.total_weight = ewma_step(mine, self._tensors(learner), self.beta, self.total_weight)

    @th.no_grad()
    def log_prob(self, learner: nn.Module, obs: Any, actions: th.Tensor, fast: bool = False) -> th.Tensor:
        """log pi_prox(a|s) of a minibatch under the average as it is now, flat. ``fast``: the learner is SB3's own
        Gaussian policy (:func:`agents.fast_policy.fast_log_prob`, the same operations as SB3's)."""
        self._start(learner)
        module: Any = self.module
        return fast_log_prob(module, obs, actions) if fast else module.get_distribution(obs).log_prob(actions)

    def state(self) -> Optional[Dict[str, Any]]:
        """The average for a checkpoint (None before it was first read)."""
        if self.module is None:
            return None
        return {"total_weight": self.total_weight,
                "tensors": {n: t.detach().clone() for n, t in zip(self._names, self._tensors(self.module))}}

    @th.no_grad()
    def load_state(self, learner: nn.Module, state: Optional[Dict[str, Any]]) -> None:
        """Put back what :meth:`state` returned (None: start from the learner when first read)."""
        if state is None:
            self.module, self.total_weight = None, 1.0
            return
        self._start(learner)  # (a module already held is reused: the seed batch exports after every update)
        self.total_weight = float(state["total_weight"])
        for name, tensor in zip(self._names, self._tensors(self.module)):  # type: ignore[arg-type]
            tensor.copy_(state["tensors"][name])
