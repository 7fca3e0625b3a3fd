"""The behaviour policies: who acts each rollout (the learner, or a snapshot of it K updates old) and with which
distribution (its own, or a tempered copy). The two sources of off-policy data the suite simulates live here.

:class:`BehaviorPolicies` is the component ``LaggedPPO.collect_rollouts`` asks for actions and log mu; it holds the
lag snapshots, draws each rollout's lags by mode, and knows each environment's temperature.

**Policy lag.** In asynchronous systems the data come from a policy several updates older than the learner. The
rollout of iteration t is acted by the learner's parameters after update t-K (the initial parameters while t < K):
after every rollout the learner's parameters are pushed as the newest of K snapshots, and the oldest acts next.
``lag_mode`` spreads the lag: ``fixed`` (every environment K), ``uniform`` (each rollout draws one lag from 0..K),
``per-env`` (environment i of n has round(i*K/(n-1)), like actors of different speed), ``empirical`` (each rollout
draws one lag for all its environments from 0..K with probabilities proportional to ``lag_weights``, one weight per
lag; K is the largest lag with weight > 0).

**Replaying a measured lag.** The asynchronous mode (agents/asynchronous.py) measures one lag per trained rollout
(the learner's version at training minus the version that acted it; ``lag_counts`` in its ``async.json``). The
``empirical`` mode replays that distribution in a simulated run: ``lag_weights`` = the counts of lags 0..K, each
rollout's lag drawn independently of the others (the measured lags' order and correlations are not replayed). A
draw is the inverse CDF of one uniform number from the generator the ``uniform`` mode draws from (seeded with the
run's seed, saved in checkpoints), so resumes and seed batches stay exact as for ``uniform``
(``python train.py ... --lag-mode empirical --lag-weights-from logs/<async run>``, docs/async.md).
Like every mode, a lag is capped at the snapshots held: the first K rollouts cannot lag more than their index.

**Exploring actors.** A behaviour temperature, the second source of off-policy data besides lag. Large asynchronous
systems run many actors that both lag and explore, so the behaviour policy mu is flatter than the learner pi, and
pi/mu often exceeds the dual-clip constant c on samples with A < 0 (the case dual clip was designed for, Ye et al.
2019). Lag alone moves pi away from mu slowly; a temperature changes mu's shape at once.
Whoever acts (the learner at lag 0, or a lag snapshot) samples from a *tempered copy* of its distribution:

- diagonal Gaussian: the same mean, standard deviation x tau;
- Categorical, and each component of a MultiDiscrete: logits / tau;
- Bernoulli (MultiBinary): logits / tau.

tau > 1 explores more, tau < 1 less, tau = 1 is the policy itself: a rollout whose environments all have
temperature 1 never enters the tempered path (stock SB3's sampling stays untouched, bit for bit); in ``per-env``
mode the tempered path also serves environment 0, at temperature 1. The rollout buffer stores log mu of the
tempered distribution that sampled, so every ratio downstream is pi_theta / mu. The learner, its loss and
evaluation never see a temperature.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

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
from torch import nn
from torch.distributions import Bernoulli, Categorical, Normal

from agents.fast_policy import fast_forward
from agents.lag_weights import check_lag_weights, lag_probabilities
from agents.options import LAG_MODES, TEMPERATURE_MODES

#: a module's parameters and buffers by name
Snapshot = Dict[str, th.Tensor]


def check_lag_args(policy_lag: Any, lag_mode: Any, lag_weights: Any = None) -> None:
    """Raise ValueError naming the bad value for a lag that is not a non-negative int, an unknown mode, or weights
    that are missing, malformed or given to a mode other than ``empirical`` (:func:`check_lag_weights`)."""
    if isinstance(policy_lag, bool) or not isinstance(policy_lag, (int, np.integer)) or policy_lag < 0:
        raise ValueError(f"policy_lag={policy_lag!r} must be a non-negative integer (0 = no lag)")
    if lag_mode not in LAG_MODES:
        raise ValueError(f"lag_mode={lag_mode!r} is unknown: choose one of {', '.join(LAG_MODES)}")
    if lag_mode == "empirical":
        if lag_weights is None:
            raise ValueError("lag_mode='empirical' draws each rollout's lag from lag_weights: give one weight per lag "
                             "0..K (K = policy_lag), e.g. lag_weights=[12, 30, 8] with policy_lag=2")
        check_lag_weights(lag_weights, int(policy_lag))
    elif lag_weights is not None:
        raise ValueError(f"lag_weights={lag_weights!r} is read by lag_mode='empirical' only (lag_mode={lag_mode!r} "
                         "given): drop lag_weights or set lag_mode='empirical'")


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


def module_tensors(module: nn.Module) -> Snapshot:
    """Parameters and buffers by name; modules shared by actor and critic (the CNN trunk) appear once."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


class BehaviorPolicies:
    """The policies that act: the learner (lag 0) and copies of it from the last K updates, each sampling from its
    distribution tempered by its environment's temperature.

    The component never trains. Per rollout: :meth:`start_rollout` picks who acts for each environment,
    :meth:`act` samples actions with their log mu at every step, :meth:`end_rollout` keeps the learner's parameters
    as the newest snapshot. Its training state (snapshots, the lag generator) goes into checkpoints, not model.zip.

    :param policy_lag: K, how many snapshots are kept (0: the learner always acts)
    :param lag_mode: ``fixed``, ``uniform``, ``per-env`` or ``empirical`` (module docstring)
    :param temperatures: one temperature per environment (:func:`env_temperatures`); 1 = untempered
    :param rng: draws the ``uniform`` and ``empirical`` modes' lags
    :param device: where the policies' parameters live
    :param lag_weights: ``empirical`` mode only (and required there): weights of lags 0..K, K + 1 numbers >= 0
        (counts or probabilities; normalised here), the last > 0
    """

    def __init__(self, policy_lag: int, lag_mode: str, temperatures: np.ndarray, rng: np.random.Generator,
                 device: th.device = th.device("cpu"), lag_weights: Optional[Sequence[float]] = None) -> None:
        check_lag_args(policy_lag, lag_mode, lag_weights)
        self.device = device
        self.policy_lag = int(policy_lag)
        self.lag_mode = lag_mode
        self.temperatures = temperatures
        self.rng = rng
        # empirical mode: the CDF of the lag over 0..K, its last value exactly 1 (a uniform draw in [0, 1) always
        # falls below it)
        self._lag_cdf: Optional[np.ndarray] = None
        if lag_weights is not None:
            self._lag_cdf = np.cumsum(lag_probabilities(lag_weights))
            self._lag_cdf[-1] = 1.0
        # the learner after each of the last K updates (oldest first), as modules that act directly; K copies plus
        # the learner: nothing else holds parameters
        self.snapshots: Deque[nn.Module] = deque(maxlen=self.policy_lag)
        #: the lag per environment of the last rollout, as it was acted (capped at the snapshots held)
        self.last_lags = np.zeros(len(temperatures), dtype=np.int64)
        self._groups: List[Tuple[Optional[nn.Module], np.ndarray]] = [(None, np.arange(len(temperatures)))]

    # ----------------------------------------------------------------------------------------------- a rollout
    def draw_lags(self) -> np.ndarray:
        """Requested lag per environment for the coming rollout."""
        k, n = self.policy_lag, len(self.temperatures)
        if self.lag_mode == "uniform":
            return np.full(n, self.rng.integers(0, k + 1), dtype=np.int64)
        if self.lag_mode == "empirical":  # inverse CDF: the first lag l with u < P(lag <= l), u uniform in [0, 1)
            assert self._lag_cdf is not None
            return np.full(n, np.searchsorted(self._lag_cdf, self.rng.random(), side="right"), dtype=np.int64)
        if self.lag_mode == "per-env" and n > 1:
            return np.rint(np.linspace(0, k, n)).astype(np.int64)
        return np.full(n, k, dtype=np.int64)

    def start_rollout(self) -> np.ndarray:
        """Pick who acts for each environment in the coming rollout (the lag drawn, capped at the oldest snapshot
        held) and return the lags."""
        lags = np.minimum(self.draw_lags(), len(self.snapshots))
        self.last_lags = lags
        self._groups = [(None if lag == 0 else self.snapshots[-int(lag)], np.flatnonzero(lags == lag))
                        for lag in np.unique(lags)]
        return lags

    def act(self, learner: nn.Module, obs: th.Tensor, fast: bool = False) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Actions, values and log mu(a|s) for one step of every environment, each acted by its behaviour policy
        (the rollout's groups; ``learner`` where the lag is 0) and tempered where its temperature is not 1. The
        values are the actor's own and are replaced by the learner's after a lagged rollout. ``fast``: the learner
        is SB3's own Gaussian policy, so the fast path (:func:`agents.fast_policy.fast_forward`) may act."""
        if len(self._groups) == 1:
            module, idx = self._groups[0]
            return self._forward(learner if module is None else module, obs, self._temperature_of(idx), fast)
        parts = [(idx, self._forward(learner if module is None else module, _rows(obs, idx),
                                     self._temperature_of(idx), fast)) for module, idx in self._groups]
        out = [t.new_empty((len(self.temperatures), *t.shape[1:])) for t in parts[0][1]]
        for idx, tensors in parts:
            for dst, src in zip(out, tensors):
                dst[th.as_tensor(idx)] = src
        return out[0], out[1], out[2]

    def end_rollout(self, learner: nn.Module) -> None:
        """The learner that trained on nothing since this rollout began becomes the newest snapshot (K > 0)."""
        if self.policy_lag > 0:
            self.push(learner)

    def fresh(self) -> np.ndarray:
        """Per environment: whether the last rollout was acted by the learner itself, untempered (lag 0, tau 1)."""
        return (self.last_lags == 0) & (self.temperatures == 1.0)

    def _temperature_of(self, idx: np.ndarray) -> Optional[th.Tensor]:
        """The temperatures of environments ``idx`` as a tensor, or None when all are 1 (untempered)."""
        temps = self.temperatures[idx]
        return None if (temps == 1.0).all() else th.as_tensor(temps, dtype=th.float32, device=self.device)

    @staticmethod
    def _forward(policy: nn.Module, obs: th.Tensor, tau: Optional[th.Tensor],
                 fast: bool) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
        """``policy(obs)``, tempered by ``tau`` (one value per row) when it is given, else on the fast path when
        allowed (the same operations as SB3's forward, tests/test_speedups.py)."""
        if tau is not None:
            return tempered_forward(policy, obs, tau)  # type: ignore[arg-type]
        return fast_forward(policy, obs) if fast else policy(obs)  # type: ignore[arg-type,operator]

    # ----------------------------------------------------------------------------------------------- snapshots
    @th.no_grad()
    def push(self, learner: nn.Module, tensors: Optional[Snapshot] = None, module: Optional[nn.Module] = None) -> None:
        """Append the learner's current parameters (or ``tensors``) as the newest snapshot, in ``module`` or else
        recycling the oldest (a new copy of the learner while fewer than K are held)."""
        if module is None:
            full = len(self.snapshots) == self.snapshots.maxlen
            module = self.snapshots.popleft() if full else _acting_copy(learner)
        source = module_tensors(learner) if tensors is None else tensors
        for name, tensor in module_tensors(module).items():
            tensor.copy_(source[name])
        self.snapshots.append(module)

    def snapshot_tensors(self) -> List[Snapshot]:
        """The snapshots' tensors, oldest first (for checkpoints); :meth:`load_snapshots` puts them back."""
        return [{k: t.detach().clone() for k, t in module_tensors(m).items()} for m in self.snapshots]

    def load_snapshots(self, learner: nn.Module, snapshots: List[Snapshot]) -> None:
        spare = list(self.snapshots)  # modules to reuse (the seed batch reloads them after every update)
        self.snapshots.clear()
        for tensors in snapshots:
            self.push(learner, tensors, spare.pop() if spare else None)


def _acting_copy(policy: nn.Module) -> nn.Module:
    """A copy of the learner's module for acting: without the optimizer (it never trains) and without the last
    distribution SB3's action_dist keeps (its tensors may belong to an autograd graph)."""
    memo: Dict[int, Any] = {}
    if getattr(policy, "optimizer", None) is not None:
        memo[id(policy.optimizer)] = None
    for value in vars(getattr(policy, "action_dist", object())).values():
        if isinstance(value, (th.Tensor, th.distributions.Distribution)):
            memo[id(value)] = None
    module = copy.deepcopy(policy, memo)
    module.set_training_mode(False)  # type: ignore[operator]
    return module


def _rows(obs: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of a batch of observations (a tensor, or a dict of tensors for Dict spaces)."""
    return {k: v[idx] for k, v in obs.items()} if isinstance(obs, dict) else obs[idx]
