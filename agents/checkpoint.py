"""Checkpoints that let a killed run resume, and a guard that stops a run going non-finite.

A checkpoint is one file, ``<run>/checkpoint.pkl``, written at a rollout boundary (after an update, before the
next rollout) to a temporary file and renamed over the old one, so a crash during a save leaves the previous
checkpoint intact. It holds:

- the model as SB3 saves it (parameters, optimizer state, counters, last observation, episode statistics);
- the lag snapshots and the generator of the uniform and empirical modes' lag draws (``model.behavior``),
  PPO-EWMA's average of the learner (``model.prox_ewma``, agents/ewma.py), the RNG states (torch, numpy,
  random), the VecNormalize statistics with its running returns;
- the logger values recorded by the last update but not yet written (so TensorBoard misses no step);
- the environments themselves **when their state pickles faithfully** (gymnasium's classic control and MinAtar:
  pure Python and numpy). Then a resumed run ends with exactly the parameters of an uninterrupted one.

Simulators such as MuJoCo (``MjData``) and the ALE emulator do not serialise through gymnasium's API (MuJoCo envs
pickle, but come back re-initialised), so for them a resumed run starts fresh episodes (reset with a seed derived
from the run's seed and the step count); everything on the learner's side is still restored exactly.

Loading unpickles: only resume runs you trust.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import cloudpickle
import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize, unwrap_vec_normalize

from agents.files import atomic_write

#: entry-point prefixes of environments whose whole state round-trips through pickle: gymnasium's classic control
#: and MinAtar (envs/minatar.py: pure Python and numpy, its RandomState included; tests/test_minatar.py)
FAITHFUL_PICKLE = ("gymnasium.envs.classic_control", "envs.minatar:")


class NonFiniteError(RuntimeError):
    """Raised when the parameters or the loss stop being finite."""


def _inner_venv(env: VecEnv) -> VecEnv:
    vec_normalize = unwrap_vec_normalize(env)
    return vec_normalize.venv if vec_normalize is not None else env


def env_pickles_faithfully(env: VecEnv) -> bool:
    """True for a DummyVecEnv (possibly under VecNormalize) of environments named in FAITHFUL_PICKLE."""
    inner = _inner_venv(env)
    if not isinstance(inner, DummyVecEnv):
        return False
    return all(str(e.unwrapped.spec.entry_point).startswith(FAITHFUL_PICKLE) for e in inner.envs if e.unwrapped.spec)


def save_checkpoint(model: Any, path: Path) -> None:
    """Everything needed to continue ``model.learn`` as if it had not stopped (see module docstring)."""
    zipped = io.BytesIO()
    model.save(zipped)
    vec_normalize = unwrap_vec_normalize(model.get_env())
    state: Dict[str, Any] = {
        "num_timesteps": model.num_timesteps,
        "model_zip": zipped.getvalue(),
        # the behaviour policies' training state: lag snapshots and the generator of (uniform, empirical) lag draws
        "snapshots": model.behavior.snapshot_tensors(),
        "lag_rng": model.behavior.rng.bit_generator.state,
        # PPO-EWMA's moving average of the learner (decoupled with prox=ewma), else None
        "prox_ewma": None if getattr(model, "prox_ewma", None) is None else model.prox_ewma.state(),
        # a seed of a seed batch draws from its own generators (agents/seed_batch.py), not the global ones
        "seed_batch_rng": getattr(model, "_seed_batch_rng", None),
        "rng": {"torch": th.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "vec_normalize": None if vec_normalize is None else cloudpickle.dumps(vec_normalize),
        "vec_normalize_returns": None if vec_normalize is None else vec_normalize.returns.copy(),
        "pending_logs": (dict(model.logger.name_to_value), dict(model.logger.name_to_count),
                         dict(model.logger.name_to_excluded)),
        "env": cloudpickle.dumps(_inner_venv(model.get_env())) if env_pickles_faithfully(model.get_env()) else None,
    }
    atomic_write(path, cloudpickle.dumps(state))


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """The checkpoint's contents; raises ValueError for a file that is not one of ours."""
    try:
        with open(path, "rb") as f:
            state = cloudpickle.load(f)
    except Exception as exc:  # truncated, not a pickle, ...
        raise ValueError(f"{path} is not a readable checkpoint ({type(exc).__name__}): start a new run instead") from exc
    if not isinstance(state, dict) or "model_zip" not in state:
        raise ValueError(f"{path} is not a checkpoint written by train.py: start a new run instead")
    return state


def restore_env(state: Dict[str, Any], fresh_env: VecEnv) -> VecEnv:
    """The environment to resume with: the pickled one when it was saved, else ``fresh_env``; normalisation restored."""
    venv = cloudpickle.loads(state["env"]) if state["env"] is not None else _inner_venv(fresh_env)
    if state["vec_normalize"] is None:
        return venv
    vec_normalize: VecNormalize = cloudpickle.loads(state["vec_normalize"])
    vec_normalize.set_venv(venv)
    vec_normalize.returns = state["vec_normalize_returns"]
    return vec_normalize


def restore_model(cls: type, state: Dict[str, Any], env: VecEnv, device: str) -> Any:
    """Load the model onto ``env`` and put back what SB3's zip does not hold."""
    model = cls.load(io.BytesIO(state["model_zip"]), env=env, device=device, force_reset=False)
    inner = _inner_venv(env)
    if state["env"] is None:
        model._last_obs = None  # fresh episodes: learn() resets the environments
        inner.seed(int(model.seed or 0) + int(state["num_timesteps"]))
    elif isinstance(inner, DummyVecEnv):
        inner._reset_seeds()  # load() queued seeds for a reset that a faithful resume never does
    if state["snapshots"]:
        model.behavior.load_snapshots(model.policy, state["snapshots"])
    if "lag_rng" in state:  # (a checkpoint written before the behaviour policies were one part: model.zip had it)
        model.behavior.rng.bit_generator.state = state["lag_rng"]
    if state.get("prox_ewma") is not None:
        model.prox_ewma.load_state(model.policy, state["prox_ewma"])
    if state.get("seed_batch_rng") is not None:
        model._seed_batch_rng = state["seed_batch_rng"]
    th.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return model


def restore_pending_logs(model: Any, state: Dict[str, Any]) -> None:
    values, counts, excluded = state["pending_logs"]
    model.logger.name_to_value.update(values)
    model.logger.name_to_count.update(counts)
    model.logger.name_to_excluded.update(excluded)


class StopRequested(Exception):
    """Raised at a rollout boundary, after the checkpoint was written, when a stop was requested
    (:attr:`CheckpointCallback.stop_requested`, e.g. set by a signal handler)."""


class CheckpointCallback(BaseCallback):
    """Save a checkpoint at the first rollout boundary after every ``save_freq`` env steps.

    Rollout boundaries are the only points where the state is complete without the rollout buffer. The
    non-finite check runs first, so a broken state is never written over the last good checkpoint. Setting
    :attr:`stop_requested` (to anything but None, e.g. a signal number) makes the next boundary write a checkpoint
    and raise :class:`StopRequested`: the safe point to stop a run that is to be resumed.

    :param path: the checkpoint file
    :param save_freq: env steps between checkpoints (0: only when :meth:`save` is called, or a stop is requested)
    :param before_save: called right before every checkpoint is written, e.g. to write a file that must reach at
        least as far as the checkpoint (train.py writes an asynchronous run's lag history there: a run killed
        between the two writes then holds a history a resume cuts back to the checkpoint, never a shorter one)
    """

    def __init__(self, path: Path, save_freq: int, before_save: Optional[Callable[[], None]] = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.save_freq = save_freq
        self.before_save = before_save
        self._last_saved: Optional[int] = None
        self.stop_requested: Optional[int] = None

    def save(self) -> None:
        """Write the checkpoint now (``before_save`` first)."""
        if self.before_save is not None:
            self.before_save()
        save_checkpoint(self.model, self.path)
        self._last_saved = self.model.num_timesteps

    def _on_training_start(self) -> None:
        self._last_saved = self.num_timesteps

    def _on_rollout_start(self) -> None:
        check_finite(self.model)
        assert self._last_saved is not None
        due = self.save_freq > 0 and self.num_timesteps - self._last_saved >= self.save_freq
        if due or self.stop_requested is not None:
            self.save()
        if self.stop_requested is not None:
            raise StopRequested(self.stop_requested)

    def _on_step(self) -> bool:
        return True


def _updates_done(model: Any) -> int:
    return model._n_updates // max(model.n_epochs, 1)  # SB3 counts epochs in _n_updates


def divergence_message(model: Any, exc: Exception) -> Optional[str]:
    """One line describing a diverged run, or None when ``exc`` is something else.

    torch.distributions refuses NaN locations and zero scales (an underflowed ``log_std``) with a ValueError,
    often before any parameter is NaN: that is divergence too.
    """
    if isinstance(exc, NonFiniteError):
        return str(exc)
    if isinstance(exc, ValueError) and "invalid values" in str(exc):
        return (f"the policy's distribution became invalid (NaN or zero scale) in update {_updates_done(model) + 1} "
                f"(step {model.num_timesteps}); lower the learning rate or check the rewards")
    return None


def check_finite(model: Any) -> None:
    """Raise :class:`NonFiniteError` naming the update if a parameter or the last loss is NaN or infinite."""
    bad = [name for name, p in model.policy.named_parameters() if not th.isfinite(p).all()]
    loss = model.logger.name_to_value.get("train/loss")
    iteration = _updates_done(model)
    if bad:
        raise NonFiniteError(f"non-finite parameters ({', '.join(bad[:3])}) after update {iteration} "
                             f"(step {model.num_timesteps}); lower the learning rate or check the rewards")
    if loss is not None and not np.isfinite(loss):
        raise NonFiniteError(f"non-finite loss {loss} in update {iteration} (step {model.num_timesteps}); "
                             "lower the learning rate or check the rewards")
