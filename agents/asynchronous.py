"""Real asynchronous actors: N Ray actor processes act rollouts for one learner, and the lag is measured, not drawn.

Everything else in the suite *simulates* lag (:mod:`agents.behavior`). Here the lag is what an actor-learner system
produces. The learner is an ordinary arm (``LaggedPPO`` and its subclasses): its ``train()``, objectives and
diagnostics run unchanged; only where the rollout buffer's contents come from changes. :class:`AsyncRollouts`
replaces the model's ``collect_rollouts`` (on the instance, :meth:`AsyncRollouts.attach`), so SB3's ``learn()`` loop,
the callbacks (checkpoints, evaluation, Ctrl-C) and the logger work as in a synchronous run.

**Versions.** The learner's version is the number of updates it has made (``num_timesteps`` // the rollout size:
every update trains on exactly one rollout of ``n_steps x n_envs`` steps, as a synchronous run does). After every
update the learner publishes its weights with their version (one ``ray.put``). An actor (:class:`RolloutActor`)
acts one rollout at a time with the weights it holds, and returns it with their **version** and the log mu of every
step, from the distribution that sampled (tempered where a behaviour temperature is set). When it is handed a newer
version before its next rollout it loads it ("picks up newer weights when there are some"). The learner trains on
rollouts in arrival order (ties broken by the actors' finishing times). An actor starts its next rollout, with the
newest weights, as soon as its last one has left the arrival queue for training, *before* the learner trains on it:
actors do not wait for updates, but the queue holds at most one rollout per actor (as IMPALA's actors block on a
full queue), so actors faster than the learner wait instead of piling up rollouts of ever larger lag. The measured
lag of a rollout is ``learner version when it is trained - version that acted it``: ``rollout/policy_lag``.

**GAE** uses the learner's own critic, as under simulated lag (``LaggedPPO.collect_rollouts``): the stored values
are recomputed by the learner's batched pass (:class:`agents.learner_pass.LearnerPass`) and the last value and the
timeout bootstrap come from the learner's critic.

**Normalisation keeps mu honest.** A behaviour policy is its weights *and* the observation statistics it normalises
with. The learner owns the statistics (its ``VecNormalize``, whose own environments are never stepped, so it is
switched to ``training=False`` and updated here only); they are published with the weights, and an actor normalises
with the statistics that came with its weights. Actors send *raw* observations and rewards. For each arriving
rollout the learner updates the observation statistics with its raw observations, then stores them normalised with
the updated statistics: the learner's policy pi_theta is evaluated on the same raw state as mu was, each through its
own normaliser, so pi_theta(a|s) / mu(a|s) is a ratio of two policies on one state. Reward statistics follow each
actor's environments as VecNormalize's do (a running discounted return per actor environment), and rewards are
normalised step by step with the statistics of that step. Because the stored observations are normalised anew, no
rollout counts as the learner's own ("fresh"): the learner always recomputes log pi for pi_prox and the diagnostics.

**Staleness** (``max_staleness`` K, AReaL's eta). An idle actor starts a rollout only when no rollout can be trained
more than K versions after the version that acted it (:func:`may_start`); until then it waits, and it starts with
the newest weights. K = 0 makes the system synchronous (one rollout at a time, lag 0). None (the default): no
bound (only the queue's one rollout per actor holds actors back).

The Ray session itself (``ray.init``/``shutdown``) belongs to the caller (train.py); this module only needs it
started.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import obs_as_tensor, set_random_seed
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from torch import nn

from agents.behavior import BehaviorPolicies, Snapshot, _acting_copy, module_tensors, tempered_forward

#: info keys an actor sends back (episode statistics, success, time-limit truncation and its terminal observation)
INFO_KEYS = ("episode", "is_success", "TimeLimit.truncated", "terminal_observation")
#: rollouts whose lags make up the TensorBoard histogram ``rollout/policy_lag_dist``
LAG_WINDOW = 100


def may_start(version: int, outstanding: Sequence[int], max_staleness: Optional[int]) -> bool:
    """Whether an idle actor may start a rollout now with the learner's newest weights (``version``).

    ``outstanding`` holds the acting versions of the rollouts started and not yet trained. Every one of them will
    be trained at some point, and each training makes one update, so a rollout acted with version v cannot be
    trained later than version ``version + len(outstanding)`` (every other outstanding one first). Starting one
    more keeps every rollout's lag at most K when ``version + len(outstanding) <= min(outstanding) + K``; training
    a rollout leaves ``version + len(outstanding)`` unchanged and can only raise the minimum, so the bound holds
    for the whole run (tests/test_async.py checks random schedules).
    """
    if max_staleness is None or not outstanding:
        return True
    return version + len(outstanding) <= min(outstanding) + max_staleness


@dataclass
class Weights:
    """What the learner publishes after an update: its parameters, their version and the observation statistics
    to normalise with (None: no observation normalisation)."""

    version: int
    tensors: Snapshot
    obs_rms: Any = None


@dataclass
class Rollout:
    """One actor's rollout, as it travels to the learner: raw observations and rewards, and the version and log mu
    of the weights that acted. Arrays are ``(n_steps, n_envs, ...)`` (observations: a dict of them for Dict
    spaces)."""

    actor: int
    version: int
    observations: Any
    actions: np.ndarray
    rewards: np.ndarray
    episode_starts: np.ndarray
    log_probs: np.ndarray
    dones: np.ndarray
    #: per step, per environment: the :data:`INFO_KEYS` present in its info (terminal observations raw)
    infos: List[List[Dict[str, Any]]]
    last_observation: Any
    finished_at: float = 0.0


def _stack(items: List[Any]) -> Any:
    """Stack per-step observations (arrays, or dicts of arrays) along a new first axis."""
    if isinstance(items[0], dict):
        return {k: np.stack([item[k] for item in items]) for k in items[0]}
    return np.stack(items)


class RolloutActor:
    """One actor: its environments and a policy copy; acts rollouts with the weights it holds. Run as a Ray actor
    (``ray.remote(RolloutActor)``), or in-process (tests).

    :param index: the actor's number (0..N-1); it goes back with every rollout
    :param env_factory: ``env_factory(seed=...)`` builds the actor's raw environments (no VecNormalize)
    :param seed: seed of the actor's first environment (environment i gets ``seed + i``, as ``make_env`` seeds) and
        of its action sampling
    :param policy: a copy of the learner's policy (the architecture; weights come with :meth:`rollout`)
    :param n_steps: steps per environment per rollout
    :param temperatures: behaviour temperature per environment (1: the policy's own distribution)
    :param normalizer: VecNormalize's settings (``norm_obs``, ``norm_obs_keys``, ``clip_obs``, ``epsilon``) when the
        learner normalises observations, else None
    :param delay_s: seconds to sleep after each rollout (tests use it to slow one actor down)
    """

    def __init__(self, index: int, env_factory: Callable[..., VecEnv], seed: Optional[int], policy: nn.Module,
                 n_steps: int, temperatures: np.ndarray, normalizer: Optional[Dict[str, Any]] = None,
                 delay_s: float = 0.0) -> None:
        th.set_num_threads(1)
        if seed is not None:
            set_random_seed(seed)
        self.index = index
        self.env = env_factory(seed=seed)
        self.policy = policy
        self.policy.set_training_mode(False)  # type: ignore[operator]
        self.n_steps = int(n_steps)
        self.version = -1
        self.delay_s = float(delay_s)
        tau = np.asarray(temperatures, dtype=np.float32)
        self.tau: Optional[th.Tensor] = None if (tau == 1.0).all() else th.as_tensor(tau)
        self.normalizer = None if normalizer is None else VecNormalize(self.env, training=False, norm_reward=False,
                                                                       **normalizer)
        self._last_obs = self.env.reset()
        self._last_episode_starts = np.ones(self.env.num_envs, dtype=bool)

    def ready(self) -> int:
        """The actor's number, returned once it is built (its process started, its environments made)."""
        return self.index

    def set_weights(self, weights: Weights) -> None:
        """Load ``weights`` (parameters and observation statistics) unless they are not newer than those held."""
        if weights.version <= self.version:
            return
        with th.no_grad():
            for name, tensor in module_tensors(self.policy).items():
                tensor.copy_(weights.tensors[name])
        if self.normalizer is not None:
            self.normalizer.obs_rms = weights.obs_rms
        self.version = weights.version

    def normalize(self, obs: Any) -> Any:
        """``obs`` as the held weights see it (normalised with the statistics that came with them)."""
        return obs if self.normalizer is None else self.normalizer.normalize_obs(obs)

    @th.no_grad()
    def rollout(self, weights: Optional[Weights] = None) -> Rollout:
        """Act ``n_steps`` steps in every environment (first loading ``weights`` if they are newer) and return them
        with the acting version and log mu of every step."""
        if weights is not None:
            self.set_weights(weights)
        assert self.version >= 0, "no weights yet: pass the learner's Weights"
        policy, space = self.policy, self.policy.action_space  # type: ignore[attr-defined]
        observations, actions, rewards, starts, log_probs, dones_list, infos_list = [], [], [], [], [], [], []
        for _ in range(self.n_steps):
            obs_tensor = obs_as_tensor(self.normalize(self._last_obs), policy.device)  # type: ignore[arg-type]
            action, _, log_mu = tempered_forward(policy, obs_tensor, self.tau)  # type: ignore[arg-type]
            action = action.cpu().numpy()
            clipped = action
            if isinstance(space, spaces.Box):  # as SB3's collect_rollouts
                if policy.squash_output:  # type: ignore[attr-defined]
                    clipped = policy.unscale_action(action)  # type: ignore[attr-defined,operator]
                else:
                    clipped = np.clip(action, space.low, space.high)
            new_obs, reward, dones, infos = self.env.step(clipped)
            observations.append(self._last_obs)
            actions.append(action)
            rewards.append(reward)
            starts.append(self._last_episode_starts)
            log_probs.append(log_mu.cpu().numpy())
            dones_list.append(dones)
            infos_list.append([{k: info[k] for k in INFO_KEYS if k in info} for info in infos])
            self._last_obs = new_obs
            self._last_episode_starts = dones
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        return Rollout(actor=self.index, version=self.version, observations=_stack(observations),
                       actions=np.stack(actions), rewards=np.stack(rewards).astype(np.float32),
                       episode_starts=np.stack(starts), log_probs=np.stack(log_probs).astype(np.float32),
                       dones=np.stack(dones_list), infos=infos_list, last_observation=self._last_obs,
                       finished_at=time.time())

    def close(self) -> None:
        self.env.close()


class MeasuredLag(BehaviorPolicies):
    """The learner's behaviour component in asynchronous mode: nobody acts here (the actors do); it holds the
    measured lag of the rollout being trained (``last_lags``) and the temperatures, and no rollout is the learner's
    own (observations are normalised anew on arrival, module docstring), so log pi is always recomputed."""

    def fresh(self) -> np.ndarray:
        return np.zeros(len(self.temperatures), dtype=bool)


@dataclass
class LagHistory:
    """Per trained rollout, in training order: its measured lag and the actor that acted it; and how many times
    an idle actor waited for the staleness bound. Goes to ``async.json`` and into the run's record."""

    lags: List[int] = field(default_factory=list)
    actors: List[int] = field(default_factory=list)
    staleness_waits: int = 0

    def summary(self) -> Dict[str, Any]:
        values, counts = np.unique(np.asarray(self.lags, dtype=np.int64), return_counts=True)
        return {"lags": list(self.lags), "actors": list(self.actors), "staleness_waits": self.staleness_waits,
                "lag_counts": {str(int(v)): int(c) for v, c in zip(values, counts)},
                "lag_mean": float(np.mean(self.lags)) if self.lags else None,
                "lag_max": int(max(self.lags)) if self.lags else None}


class AsyncRollouts:
    """The learner's side: N remote :class:`RolloutActor` s feeding ``model``'s rollout buffer in arrival order.

    :param model: the learner (``LaggedPPO`` or an arm), with ``policy_lag=0``; its env is only read for the
        normalisation statistics (it is never stepped)
    :param env_factory: ``env_factory(seed=...)`` builds one actor's raw environments (``model.n_envs`` of them)
    :param n_actors: N >= 1
    :param seed: the run's seed: actor j's environment i gets ``seed + j * n_envs + i`` (actor 0's are the
        synchronous run's), and its action sampling the seed of its first environment; a resumed run adds
        ``num_timesteps`` (fresh episodes, as a synchronous run resumes environments that do not pickle)
    :param max_staleness: K >= 0 (AReaL's eta; :func:`may_start`), None: no bound
    :param actor_delays: seconds each actor sleeps after each rollout (tests slow one actor down); default none
    :param history: the lag history so far (a resumed run's, cut at its checkpoint)
    :param actor_options: Ray options of each actor (default one CPU)
    """

    def __init__(self, model: Any, env_factory: Callable[..., VecEnv], n_actors: int, *, seed: Optional[int],
                 max_staleness: Optional[int] = None, actor_delays: Sequence[float] = (),
                 history: Optional[LagHistory] = None, actor_options: Optional[Dict[str, Any]] = None) -> None:
        if isinstance(n_actors, bool) or not isinstance(n_actors, int) or n_actors < 1:
            raise ValueError(f"n_actors={n_actors!r}: use a positive integer, e.g. 2")
        if max_staleness is not None and (isinstance(max_staleness, bool) or not isinstance(max_staleness, int)
                                          or max_staleness < 0):
            raise ValueError(f"max_staleness={max_staleness!r}: use an integer >= 0 (versions), or None for no bound")
        if model.policy_lag != 0:
            raise ValueError(f"policy_lag={model.policy_lag}: asynchronous actors produce their own lag; use 0")
        if model.use_sde:
            raise ValueError("use_sde=True is not supported with asynchronous actors: set use_sde=False")
        self.model = model
        self.n_actors = n_actors
        self.max_staleness = max_staleness
        self.history = history if history is not None else LagHistory()
        self.rollout_size = model.n_steps * model.n_envs
        self.vec_normalize: Optional[VecNormalize] = model.get_vec_normalize_env()
        if self.vec_normalize is not None:
            self.vec_normalize.training = False  # never stepped: the statistics are updated from the actors' data
        # each actor's environments' running discounted returns (VecNormalize's ``returns``, one per actor)
        self._returns = [np.zeros(model.n_envs) for _ in range(n_actors)]
        self._env_factory = env_factory
        self._seed = seed
        self._delays = list(actor_delays) + [0.0] * (n_actors - len(actor_delays))
        self._actor_options = actor_options or {"num_cpus": 1}
        self._actors: List[Any] = []
        self._in_flight: Dict[Any, Tuple[int, int]] = {}  # object ref -> (actor, acting version)
        self._arrived: List[Rollout] = []
        self._training: Optional[Rollout] = None  # handed to the learner, trained before the next call
        self._idle: List[int] = []
        self._waiting: set = set()  # idle actors the staleness bound holds back (counted once per wait)
        self._weights_ref: Any = None
        self._published = -1

    # ----------------------------------------------------------------------------------------------- set-up
    def version(self) -> int:
        """The learner's version: the number of updates made (one per rollout of ``n_steps x n_envs`` steps)."""
        return self.model.num_timesteps // self.rollout_size

    def start(self) -> "AsyncRollouts":
        """Start the actors (Ray must be initialised) and put the model's collect_rollouts on them."""
        import ray

        model = self.model
        remote = ray.remote(**self._actor_options)(RolloutActor)
        normalizer = None
        if self.vec_normalize is not None and self.vec_normalize.norm_obs:
            vn = self.vec_normalize
            normalizer = {"norm_obs": True, "norm_obs_keys": vn.norm_obs_keys, "clip_obs": vn.clip_obs,
                          "epsilon": vn.epsilon}
        temperatures = model.behavior.temperatures
        policy = _acting_copy(model.policy).cpu()
        offset = model.num_timesteps  # a resumed run starts fresh episodes, seeded apart from the first ones
        for j in range(self.n_actors):
            seed = None if self._seed is None else self._seed + j * model.n_envs + offset
            # max_restarts=0: an actor that dies is an error of the run, not silently replaced
            self._actors.append(remote.options(max_restarts=0).remote(
                j, self._env_factory, seed, policy, model.n_steps, temperatures, normalizer, self._delays[j]))
        # Wait until every actor is up before the first rollout. Starting a Ray worker process (importing torch, SB3,
        # the simulator) takes 10-20 s on a loaded 2-core machine; without the wait the learner trains on the first
        # actors' rollouts meanwhile, and the last actor's first rollout arrives 20-26 versions old (CartPole, 4
        # actors: docs/async.md), a start-up artefact and not the steady lag the system produces.
        ray.get([actor.ready.remote() for actor in self._actors])
        self._idle = list(range(self.n_actors))
        model.behavior = MeasuredLag(0, "fixed", temperatures, model.behavior.rng, model.device)
        self.attach()
        return self

    def attach(self) -> None:
        """Make ``model.collect_rollouts`` this object's (an instance attribute; LaggedPPO never saves it)."""
        self.model.collect_rollouts = self.collect_rollouts

    def close(self) -> None:
        """Stop the actors at once (rollouts in flight are dropped) and give ``model`` its own collect_rollouts back."""
        import ray

        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone (Ray shut down, process killed): nothing to stop
                pass
        self._actors, self._in_flight, self._arrived, self._idle, self._training = [], {}, [], [], None
        self.model.__dict__.pop("collect_rollouts", None)

    # --------------------------------------------------------------------------------------------- the loop
    def _publish(self) -> None:
        """Put the learner's weights (and observation statistics) in Ray's object store, once per version."""
        import ray

        version = self.version()
        if version == self._published:
            return
        tensors = {k: t.detach().cpu().clone() for k, t in module_tensors(self.model.policy).items()}
        obs_rms = None
        if self.vec_normalize is not None and self.vec_normalize.norm_obs:
            obs_rms = copy.deepcopy(self.vec_normalize.obs_rms)
        self._weights_ref = ray.put(Weights(version, tensors, obs_rms))
        self._published = version

    def _dispatch(self) -> None:
        """Start a rollout, with the newest weights, on every idle actor whose last rollout no longer waits in the
        arrival queue (the queue holds at most one rollout per actor) and that the staleness bound lets start."""
        version = self._published
        queued = {r.actor for r in self._arrived}
        for j in list(self._idle):
            if j in queued:
                continue
            training = [] if self._training is None else [self._training.version]
            outstanding = [v for _, v in self._in_flight.values()] + [r.version for r in self._arrived] + training
            if not may_start(version, outstanding, self.max_staleness):
                if j not in self._waiting:
                    self._waiting.add(j)
                    self.history.staleness_waits += 1
                continue
            self._waiting.discard(j)
            self._idle.remove(j)
            ref = self._actors[j].rollout.remote(self._weights_ref)
            self._in_flight[ref] = (j, version)

    def _receive(self, block: bool) -> None:
        """Move finished rollouts into the arrival queue (ordered by finishing time), their actors to idle."""
        import ray

        if not self._in_flight:
            return
        refs = list(self._in_flight)
        if block:  # a short timeout: the loop wakes up for signals (Ctrl-C) while it waits
            first, _ = ray.wait(refs, num_returns=1, timeout=0.5)
            if not first:
                return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        arrived = ray.get(ready)
        for ref, rollout in zip(ready, arrived):
            j, _ = self._in_flight.pop(ref)
            self._idle.append(j)
        self._arrived.extend(sorted(arrived, key=lambda r: r.finished_at))

    def next_rollout(self) -> Rollout:
        """The next rollout to train on (in arrival order). Called after each update: the rollout handed out last
        time has been trained. Idle actors start again as soon as their last rollout has left the queue (before the
        learner trains on it), with the newest weights."""
        self._training = None
        self._publish()
        self._receive(block=False)  # what finished during the update
        self._dispatch()
        while not self._arrived:
            self._receive(block=True)
            self._dispatch()
        self._training = self._arrived.pop(0)
        self._dispatch()
        return self._training

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer,
                         n_rollout_steps: int) -> bool:
        """SB3's ``collect_rollouts`` contract with the steps of the next arriving rollout: the buffer holds the
        learner-normalised observations, the actors' actions and log mu, the learner-normalised rewards (with the
        timeout bootstrap from the learner's critic) and GAE from the learner's critic; ``num_timesteps``, the
        callbacks' ``on_step`` and the episode statistics advance step by step as in SB3."""
        model = self.model
        callback.on_rollout_start()  # checkpoints (and a requested stop) happen here, before anything is taken
        rollout = self.next_rollout()
        lag = self.version() - rollout.version
        observations, rewards = self._learner_view(rollout)
        rollout_buffer.reset()
        model.learner_pass.forget()
        zeros = th.zeros(model.n_envs)
        for t in range(model.n_steps):
            infos = rollout.infos[t]
            dones = rollout.dones[t]
            model.num_timesteps += model.n_envs
            callback.update_locals({"infos": infos, "dones": dones, "rewards": rewards[t]})
            if not callback.on_step():
                return False
            model._update_info_buffer(infos, dones)
            action = rollout.actions[t]
            if isinstance(model.action_space, spaces.Discrete):
                action = action.reshape(-1, 1)
            model._bootstrap_timeouts(rewards[t], dones, infos)  # uses the learner-normalised terminal observations
            rollout_buffer.add(_at(observations, t), action, rewards[t], rollout.episode_starts[t], zeros,
                               th.tensor(rollout.log_probs[t]))
        rollout_buffer.values[:] = model.learner_pass.values(model.policy, rollout_buffer)
        model.behavior.last_lags = np.full(model.n_envs, lag, dtype=np.int64)
        self.history.lags.append(int(lag))
        self.history.actors.append(int(rollout.actor))
        model.logger.record("rollout/policy_lag", float(lag))
        model.logger.record("rollout/policy_lag_dist", th.as_tensor(self.history.lags[-LAG_WINDOW:], dtype=th.float32),
                            exclude=("stdout", "log", "json", "csv"))
        model.logger.record("rollout/behavior_temperature", float(model.behavior.temperatures.mean()))
        with th.no_grad():
            last = self._normalize(rollout.last_observation)
            values = model.policy.predict_values(obs_as_tensor(last, model.device))  # type: ignore[arg-type]
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=rollout.dones[-1])
        callback.update_locals({"infos": rollout.infos[-1], "dones": rollout.dones[-1]})
        callback.on_rollout_end()
        return True

    # ------------------------------------------------------------------------------------- normalisation
    def _normalize(self, obs: Any) -> Any:
        """``obs`` normalised with the learner's statistics (a writable copy: Ray hands out read-only arrays)."""
        vn = self.vec_normalize
        if vn is not None:
            return vn.normalize_obs(obs)
        return {k: np.array(v) for k, v in obs.items()} if isinstance(obs, dict) else np.array(obs)

    def _learner_view(self, rollout: Rollout) -> Tuple[Any, np.ndarray]:
        """The rollout's observations and rewards as the learner trains on them: the statistics updated with the
        raw data first (observations: the whole rollout; rewards: step by step, with this actor's running returns,
        as VecNormalize does), then the observations normalised with the updated statistics, each reward with
        those of its step. Terminal observations in the infos are normalised in place, for the timeout bootstrap."""
        vn = self.vec_normalize
        rewards = rollout.rewards.copy()
        if vn is None:
            return rollout.observations, rewards
        if vn.norm_obs:
            obs = rollout.observations
            if isinstance(obs, dict) and isinstance(vn.obs_rms, dict):
                for key, rms in vn.obs_rms.items():
                    rms.update(obs[key].reshape(-1, *obs[key].shape[2:]))
            else:
                vn.obs_rms.update(obs.reshape(-1, *obs.shape[2:]))
        own_returns, vn.returns = vn.returns, self._returns[rollout.actor]
        try:
            for t in range(len(rewards)):
                vn._update_reward(rewards[t])
                rewards[t] = vn.normalize_reward(rewards[t])
                vn.returns[rollout.dones[t]] = 0
        finally:
            self._returns[rollout.actor], vn.returns = vn.returns, own_returns
        for infos in rollout.infos:
            for info in infos:
                if "terminal_observation" in info:
                    info["terminal_observation"] = vn.normalize_obs(info["terminal_observation"])
        return vn.normalize_obs(rollout.observations), rewards


def _at(observations: Any, t: int) -> Any:
    """Step ``t`` of stacked observations (an array, or a dict of arrays)."""
    return {k: v[t] for k, v in observations.items()} if isinstance(observations, dict) else observations[t]
