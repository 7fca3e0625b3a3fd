"""Stepping the environments of several seeds at once, with SB3's semantics and a fraction of its overhead.

A seed batch (agents/seed_batch.py) owns S vectorised environments, one per seed, each SB3's ``DummyVecEnv`` under
an optional ``VecNormalize``. Stepping them one by one costs, per seed and step, SB3's bookkeeping around the
simulator (info deep copies, observation buffer copies, two running-statistics updates): on HalfCheetah about
three times the time of the simulator step itself. :class:`SeedEnvs` steps every gymnasium environment exactly as
``DummyVecEnv.step_wait`` does (auto-reset, ``terminal_observation``, ``TimeLimit.truncated``), then normalises
observations and rewards for all seeds at once, as ``VecNormalize.step_wait`` does per seed, with each seed's own
statistics (its ``obs_rms``, ``ret_rms`` and ``returns``, which stay the VecNormalize's own objects, updated in
place of SB3's update: saving, checkpoints and evaluation read them as usual). Every array operation is
elementwise per seed or a reduction over one seed's environments, so each seed gets SB3's numbers
(tests/test_seed_batch.py compares them step by step with the seeds' own ``VecEnv.step``).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from envs import RowRunningMeanStd

_PLAIN_RMS = (RunningMeanStd, RowRunningMeanStd)


def _layers(env: VecEnv) -> Optional[Tuple[Optional[VecNormalize], DummyVecEnv]]:
    """(VecNormalize or None, DummyVecEnv) when ``env`` is one of the two shapes handled here, else None."""
    norm = env if type(env) is VecNormalize else None
    inner = norm.venv if norm is not None else env
    if type(inner) is not DummyVecEnv or list(inner.keys) != [None]:
        return None
    if norm is not None and not (isinstance(norm.obs_rms, _PLAIN_RMS) and type(norm.ret_rms) in _PLAIN_RMS):
        return None
    return norm, inner


class SeedEnvs:
    """The vectorised environments of S seeds (same structure, same number of environments), stepped together.

    :param venvs: seed s's ``VecEnv``; use :meth:`supports` first (otherwise step each seed's env itself)
    """

    def __init__(self, venvs: Sequence[VecEnv]) -> None:
        if not self.supports(venvs):
            raise ValueError("SeedEnvs needs DummyVecEnvs (optionally under VecNormalize) of one structure per seed")
        layers = [_layers(v) for v in venvs]
        self.norms: List[Optional[VecNormalize]] = [n for n, _ in layers]  # type: ignore[misc]
        self.inners: List[DummyVecEnv] = [i for _, i in layers]  # type: ignore[misc]
        first = self.norms[0]
        self.normalize = first is not None
        if first is not None:
            self.train_stats = first.training
            self.norm_obs, self.norm_reward = first.norm_obs, first.norm_reward
            self.clip_obs, self.clip_reward = first.clip_obs, first.clip_reward
            self.epsilon, self.gamma = first.epsilon, first.gamma
            # the seeds' statistics stacked, (S, ...), written back to each seed's objects (as views) after every
            # update, and read again whenever something else replaced them (e.g. VecNormalize.reset)
            self.obs_stats = _Stacked([n.obs_rms for n in self.norms])  # type: ignore[union-attr]
            self.ret_stats = _Stacked([n.ret_rms for n in self.norms])  # type: ignore[union-attr]
            self.returns = np.stack([n.returns for n in self.norms])  # type: ignore[union-attr]
            self._returns_views: List[Any] = [None] * len(self.norms)

    @staticmethod
    def supports(venvs: Sequence[VecEnv]) -> bool:
        layers = [_layers(v) for v in venvs]
        if any(layer is None for layer in layers):
            return False
        norms = [n for n, _ in layers]  # type: ignore[misc]
        if any(n is None for n in norms) and not all(n is None for n in norms):
            return False
        settings = {(n.training, n.norm_obs, n.norm_reward, n.clip_obs, n.clip_reward, n.epsilon, n.gamma)
                    for n in norms if n is not None}
        sizes = {i.num_envs for _, i in layers}  # type: ignore[misc]
        return len(settings) <= 1 and len(sizes) == 1

    def step(self, actions: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[List[dict]]]:
        """Every seed's ``VecEnv.step(actions[s])``: observations (S, E, ...), rewards (S, E), dones (S, E) and each
        seed's list of infos."""
        raw, rewards, dones, infos = self._step_inner(actions)
        if not self.normalize:
            return raw, rewards, dones, infos
        norms = self.norms
        for s, norm in enumerate(norms):
            norm.old_obs, norm.old_reward = raw[s], rewards[s]  # type: ignore[union-attr]
        if self.train_stats and self.norm_obs:
            self.obs_stats.update(raw)
        obs = self._normalize_obs(raw)
        if self.train_stats:
            if any(n.returns is not v for n, v in zip(norms, self._returns_views)):  # type: ignore[union-attr]
                self.returns = np.stack([n.returns for n in norms])  # type: ignore[union-attr]
            self.returns = self.returns * self.gamma + rewards
            self.ret_stats.update(self.returns)
        if self.norm_reward:
            self.ret_stats.sync()
            ret_var = self.ret_stats.var.reshape(len(norms), 1)
            rewards = np.clip(rewards / np.sqrt(ret_var + self.epsilon), -self.clip_reward, self.clip_reward)
        rewards = rewards.astype(np.float32)
        self.returns[dones] = 0
        self._returns_views = list(self.returns)
        for s, norm in enumerate(norms):
            norm.returns = self._returns_views[s]  # type: ignore[union-attr]
            for e in np.flatnonzero(dones[s]):
                if "terminal_observation" in infos[s][e]:
                    terminal = infos[s][e]["terminal_observation"]
                    infos[s][e]["terminal_observation"] = norm.normalize_obs(terminal)  # type: ignore[union-attr]
        return obs, rewards, dones, infos

    def _step_inner(self, actions: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[List[dict]]]:
        """``DummyVecEnv.step_wait`` of every seed (SB3's lines), into stacked arrays."""
        first = self.inners[0]
        n_seeds, n_envs = len(self.inners), first.num_envs
        raw = np.empty((n_seeds, n_envs, *first.buf_obs[None].shape[1:]), dtype=first.buf_obs[None].dtype)
        rewards = np.zeros((n_seeds, n_envs), dtype=np.float32)
        dones = np.zeros((n_seeds, n_envs), dtype=bool)
        infos: List[List[dict]] = []
        for s, venv in enumerate(self.inners):
            seed_infos = []
            for e, env in enumerate(venv.envs):
                obs, rewards[s, e], terminated, truncated, info = env.step(actions[s, e])
                dones[s, e] = terminated or truncated
                info["TimeLimit.truncated"] = truncated and not terminated
                if dones[s, e]:
                    info["terminal_observation"] = obs
                    obs, venv.reset_infos[e] = env.reset()
                raw[s, e] = obs
                seed_infos.append(info)
            venv.buf_obs[None][:] = raw[s]  # what the DummyVecEnv would hold after its own step
            infos.append(seed_infos)
        return raw, rewards, dones, infos

    def _normalize_obs(self, raw: np.ndarray) -> np.ndarray:
        if not self.norm_obs:
            return raw
        shape = (len(self.norms), 1, *raw.shape[2:])
        self.obs_stats.sync()
        mean, var = self.obs_stats.mean.reshape(shape), self.obs_stats.var.reshape(shape)
        return np.clip((raw - mean) / np.sqrt(var + self.epsilon), -self.clip_obs, self.clip_obs).astype(np.float32)


class _Stacked:
    """The running statistics (SB3's ``RunningMeanStd``) of S seeds as stacked arrays, updated together."""

    def __init__(self, stats: List[Any]) -> None:
        self.stats = stats
        self._views: List[Any] = [None] * len(stats)
        self.sync()

    def sync(self) -> None:
        """Read the seeds' statistics again unless they are still the views this object wrote."""
        if all(r.mean is v for r, v in zip(self.stats, self._views)):
            return
        self.mean = np.stack([np.asarray(r.mean) for r in self.stats])
        self.var = np.stack([np.asarray(r.var) for r in self.stats])
        counts = np.array([r.count for r in self.stats], dtype=np.float64)
        self.count = counts.reshape(-1, *([1] * (self.mean.ndim - 1)))

    def update(self, batch: np.ndarray) -> None:
        """``RunningMeanStd.update(batch[s])`` for every seed s, as SB3 computes it (``update_from_moments``), the
        seed's environments on axis 1. For one environment the batch mean is the row itself and the variance exactly
        0, as ``np.mean`` / ``np.var`` give (and envs.RowRunningMeanStd uses)."""
        if batch.shape[1] == 1:
            batch_mean, batch_var = batch[:, 0], np.zeros(batch.shape[:1] + batch.shape[2:], dtype=batch.dtype)
        else:
            batch_mean, batch_var = np.mean(batch, axis=1), np.var(batch, axis=1)
        batch_count = batch.shape[1]
        self.sync()
        mean, var, count = self.mean, self.var, self.count
        delta = batch_mean - mean
        tot_count = count + batch_count
        new_mean = mean + delta * batch_count / tot_count
        m_a = var * count
        m_b = batch_var * batch_count
        m_2 = m_a + m_b + np.square(delta) * count * batch_count / (count + batch_count)
        new_var = m_2 / (count + batch_count)
        new_count = batch_count + count
        self.mean, self.var, self.count = new_mean, new_var, new_count
        means, variances, counts = list(new_mean), list(new_var), new_count.reshape(-1).tolist()
        for s, rms in enumerate(self.stats):
            rms.mean, rms.var, rms.count = means[s], variances[s], counts[s]
        self._views = means
