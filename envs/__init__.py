"""Environment construction for classic control, MuJoCo, Atari and MinAtar, as rl-zoo3 builds them.

``make_env`` returns an SB3 ``VecEnv``: ``Monitor``-wrapped environments (so episode returns are logged),
``VecNormalize`` when the hyperparameters ask for it, and for Atari the standard DeepMind preprocessing
(SB3's ``AtariWrapper``: no-op reset, frame skip 4 with max-pooling, episodic life, fire reset, reward clipping,
84x84 grayscale) plus a 4-frame stack. Monitor sits *under* the Atari wrapper, so ``rollout/ep_rew_mean`` and
evaluation report the true game score of whole games, not clipped per-life rewards. MinAtar ids (``MinAtar/*``,
registered by :mod:`envs.minatar` when the ``minatar`` package is installed) need no preprocessing: their frames
are already small, channel-first and unclipped, so they are built like classic-control envs.
"""

from __future__ import annotations

import copyreg
import difflib
from typing import Any, Dict, Optional, Union

import gymnasium as gym
import numpy as np
from stable_baselines3.common.env_util import make_atari_env, make_vec_env
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack, VecNormalize, VecTransposeImage

from envs.minatar import HAS_MINATAR, is_minatar, register_minatar


class EnvError(ValueError):
    """A user-facing problem with the requested environment (unknown id, missing extra)."""


def _register_ale() -> bool:
    try:
        import ale_py
    except ImportError:
        return False
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Warning)  # no banner on stderr per env; warnings stay
    gym.register_envs(ale_py)
    return True


HAS_ALE = _register_ale()
register_minatar()


def is_atari(env_id: str) -> bool:
    """True for ALE ids (``ALE/Breakout-v5``, ``BreakoutNoFrameskip-v4``, ...)."""
    if env_id.startswith("ALE/"):
        return True
    spec = gym.registry.get(env_id)
    return spec is not None and "ale_py" in str(spec.entry_point)


def check_env_id(env_id: str) -> None:
    """Raise :class:`EnvError` with close matches or the extra to install when ``env_id`` cannot be made."""
    if env_id.startswith("ALE/") or "NoFrameskip" in env_id:
        if not HAS_ALE:
            raise EnvError(f"env {env_id!r} needs Atari support: pip install -e '.[atari]' (ale-py, opencv)")
    if is_minatar(env_id) and not HAS_MINATAR:
        raise EnvError(f"env {env_id!r} needs MinAtar: pip install -e '.[minatar]'")
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see gymnasium.registry for the ids"
        if not HAS_ALE:
            hint += " (Atari games need the atari extra: pip install -e '.[atari]')"
        if is_minatar(env_id):
            hint += " (MinAtar ids are MinAtar/<Game>-v0 or -v1, Game one of Asterix, Breakout, Freeway, Seaquest, " \
                    "SpaceInvaders)"
        raise EnvError(f"unknown env {env_id!r}: {hint}")
    if is_atari(env_id):
        try:
            import cv2  # noqa: F401  (AtariWrapper resizes with OpenCV)
        except ImportError as exc:
            raise EnvError(f"env {env_id!r} needs opencv: pip install -e '.[atari]'") from exc
    entry = str(gym.registry[env_id].entry_point)
    if "mujoco" in entry:
        try:
            import mujoco  # noqa: F401
        except ImportError as exc:
            raise EnvError(f"env {env_id!r} needs MuJoCo: pip install -e '.[mujoco]'") from exc


def make_env(
    env_id: str,
    n_envs: int = 1,
    seed: Optional[int] = None,
    *,
    normalize: Union[bool, Dict[str, Any]] = False,
    frame_stack: Optional[int] = None,
    env_kwargs: Optional[Dict[str, Any]] = None,
    training: bool = True,
    render_mode: Optional[str] = None,
    fast: bool = True,
) -> VecEnv:
    """Build the vectorised environment for ``env_id``.

    :param n_envs: number of copies (DummyVecEnv, one process: our machines have 2 cores)
    :param seed: seed of the first copy; copy i gets ``seed + i``
    :param normalize: True or VecNormalize keyword arguments (e.g. ``{"norm_reward": False}``)
    :param frame_stack: frames to stack (Atari default 4)
    :param env_kwargs: passed to ``gym.make``
    :param training: False for evaluation: VecNormalize statistics frozen, rewards not normalised
    :param render_mode: e.g. ``"rgb_array"`` for video recording
    :param fast: our bit-identical speed-up of SB3's classes (:class:`RowRunningMeanStd`); False: SB3's classes only
    """
    check_env_id(env_id)
    env_kwargs = dict(env_kwargs or {})
    if render_mode is not None:
        env_kwargs["render_mode"] = render_mode
    if is_atari(env_id):
        # AtariWrapper skips 4 frames with max-pooling; the env must not skip as well. NoFrameskip-v4 ids have
        # frameskip=1 already, ALE/*-v5 have 4 and plain *-v4/-v0 ids a random 2-4: all get 1 here.
        env_kwargs.setdefault("frameskip", 1)
        if env_kwargs["frameskip"] != 1:
            raise EnvError(
                f"env_kwargs frameskip={env_kwargs['frameskip']!r} for {env_id!r} would skip frames twice (the Atari "
                "preprocessing already skips 4 with max-pooling): remove frameskip from env_kwargs"
            )
        venv: VecEnv = make_atari_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)
        venv = VecFrameStack(venv, n_stack=frame_stack or 4)
        venv = VecTransposeImage(venv)  # channel-first for the CnnPolicy, as SB3 would do implicitly
    else:
        venv = make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)
        if frame_stack:
            venv = VecFrameStack(venv, n_stack=frame_stack)
    if normalize:
        kwargs = dict(normalize) if isinstance(normalize, dict) else {}
        if not training:
            kwargs.update(training=False, norm_reward=False)
        venv = VecNormalize(venv, **kwargs)
        if fast:
            fast_statistics(venv)
    return venv


class RowRunningMeanStd(RunningMeanStd):
    """SB3's ``RunningMeanStd``, minus ``np.mean`` / ``np.var`` for a batch of one finite float row (one environment):
    there they return the row itself and exact zeros, so the statistics are SB3's bit for bit, about 30 us sooner
    per step (tests/test_speedups.py). It pickles as SB3's own class: ``vecnormalize.pkl`` stays plain SB3."""

    def update(self, arr: np.ndarray) -> None:
        if len(arr) != 1 or arr.dtype not in (np.float32, np.float64) or not np.isfinite(arr).all():
            return super().update(arr)
        zeros = np.zeros(arr.shape[1:], dtype=arr.dtype)
        self.update_from_moments(arr[0], zeros[()] if arr.ndim == 1 else zeros, 1)  # np.var gives a scalar for 1-D

    def __reduce_ex__(self, protocol: Any) -> Any:
        return copyreg._reconstructor, (RunningMeanStd, object, None), self.__dict__.copy()  # type: ignore[attr-defined]


def fast_statistics(venv: VecNormalize) -> VecNormalize:
    """``venv`` with its running statistics (observations, returns) as :class:`RowRunningMeanStd`."""
    for name in ("obs_rms", "ret_rms"):
        rms = getattr(venv, name, None)
        if type(rms) is RunningMeanStd:
            fast = RowRunningMeanStd.__new__(RowRunningMeanStd)
            fast.__dict__.update(rms.__dict__)
            setattr(venv, name, fast)
    return venv
