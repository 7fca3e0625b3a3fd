"""Exploring actors: a behaviour temperature, the second source of off-policy data besides lag.

Large asynchronous systems run many actors that both lag and explore, so the behaviour policy mu is flatter than
the learner pi, and pi/mu often exceeds the dual-clip constant c on samples with A < 0 (the case dual clip was
designed for, Ye et al. 2019). Lag alone moves pi away from mu slowly; a temperature changes mu's shape at once.
Whoever acts (the learner at lag 0, or a lag snapshot) samples from a *tempered copy* of its distribution:

- diagonal Gaussian: the same mean, standard deviation x tau;
- Categorical, and each component of a MultiDiscrete: logits / tau;
- Bernoulli (MultiBinary): logits / tau.

tau > 1 explores more, tau < 1 less, tau = 1 is the policy itself: a rollout whose environments all have
temperature 1 never enters the tempered path (stock SB3's sampling stays untouched, bit for bit); in ``per-env``
mode the tempered path also serves environment 0, at temperature 1. The rollout buffer stores log mu of the tempered distribution that
sampled, so every ratio downstream is pi_theta / mu. The learner, its loss and evaluation never see a temperature.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import torch as th
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from torch.distributions import Bernoulli, Categorical, Normal
from agents.options import TEMPERATURE_MODES



def check_temperature_args(behavior_temperature: Any, temperature_mode: Any) -> None:
    """Raise ValueError naming the bad value: tau must be a number > 0, the mode one of TEMPERATURE_MODES."""
    if isinstance(behavior_temperature, bool) or not isinstance(behavior_temperature, (int, float, np.floating)) \
            or not np.isfinite(behavior_temperature) or not behavior_temperature > 0:
        raise ValueError(f"behavior_temperature={behavior_temperature!r} must be a number > 0 (1 = no tempering, "
                         "e.g. 1.5 for actors that explore more)")
    if temperature_mode not in TEMPERATURE_MODES:
        raise ValueError(f"temperature_mode={temperature_mode!r} is unknown: choose one of "
                         f"{', '.join(TEMPERATURE_MODES)}")


def env_temperatures(behavior_temperature: float, temperature_mode: str, n_envs: int) -> np.ndarray:
    """Temperature per environment: ``fixed`` gives every environment tau; ``per-env`` spreads them geometrically
    from 1 to tau (environment i of n gets tau**(i / (n - 1)); tau when n = 1), like actors that explore by
    different amounts."""
    tau = float(behavior_temperature)
    if temperature_mode == "per-env" and n_envs > 1:
        return tau ** (np.arange(n_envs) / (n_envs - 1))
    return np.full(n_envs, tau)


def temper(dist: Distribution, tau: th.Tensor) -> Distribution:
    """A tempered copy of one of SB3's action distributions (``tau``: one temperature per row of the batch).

    The copy is an SB3 distribution of the same class, so ``sample()`` and ``log_prob()`` keep SB3's conventions
    (log-probs summed over action dimensions and MultiDiscrete components).
    """
    if isinstance(dist, DiagGaussianDistribution):
        normal = dist.distribution
        out: Distribution = DiagGaussianDistribution(normal.loc.shape[-1])
        out.distribution = Normal(normal.loc, normal.scale * tau.reshape(-1, 1).to(normal.scale.dtype))
    elif isinstance(dist, CategoricalDistribution):
        out = CategoricalDistribution(dist.distribution.logits.shape[-1])
        out.distribution = Categorical(logits=dist.distribution.logits / tau.reshape(-1, 1))
    elif isinstance(dist, MultiCategoricalDistribution):
        out = MultiCategoricalDistribution(dist.action_dims)
        out.distribution = [Categorical(logits=d.logits / tau.reshape(-1, 1)) for d in dist.distribution]
    elif isinstance(dist, BernoulliDistribution):
        out = BernoulliDistribution(dist.distribution.logits.shape[-1])
        out.distribution = Bernoulli(logits=dist.distribution.logits / tau.reshape(-1, 1))
    else:
        raise ValueError(f"behavior_temperature != 1 is not defined for {type(dist).__name__}: use a Box "
                         "(diagonal Gaussian), Discrete, MultiDiscrete or MultiBinary action space, or temperature 1")
    return out


def tempered_forward(policy: ActorCriticPolicy, obs: th.Tensor,
                     tau: Optional[th.Tensor]) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
    """``policy(obs)`` (actions, values, log-probs), sampling from the distribution tempered by ``tau`` (one value
    per row); the log-probs are those of the tempered distribution, i.e. log mu. ``tau=None``: ``policy(obs)``."""
    if tau is None:
        return policy(obs)
    features = policy.extract_features(obs)
    if policy.share_features_extractor:
        latent_pi, latent_vf = policy.mlp_extractor(features)
    else:
        pi_features, vf_features = features
        latent_pi = policy.mlp_extractor.forward_actor(pi_features)
        latent_vf = policy.mlp_extractor.forward_critic(vf_features)
    values = policy.value_net(latent_vf)
    dist = temper(policy._get_action_dist_from_latent(latent_pi), tau)
    actions = dist.get_actions(deterministic=False)
    log_prob = dist.log_prob(actions)
    return actions.reshape((-1, *policy.action_space.shape)), values, log_prob  # type: ignore[misc]
