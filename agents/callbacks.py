"""Callbacks used by train.py."""

from __future__ import annotations

import os
from typing import Any, Dict, List

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import HParam
from stable_baselines3.common.vec_env import sync_envs_normalization

#: Metrics shown beside the hyperparameters in TensorBoard's HParams tab.
HPARAM_METRICS = ("rollout/ep_rew_mean", "train/value_loss", "train/behavior_kl")


class HParamCallback(BaseCallback):
    """Record the run's hyperparameters (lag settings included) in TensorBoard's HParams tab at the start."""

    def __init__(self, algo: str, config: Dict[str, Any]) -> None:
        super().__init__()
        self.algo = algo
        self.config = config

    def _on_training_start(self) -> None:
        hparams: Dict[str, Any] = {"algo": self.algo}
        for key, value in self.config.items():
            hparams[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
        metrics = {key: 0.0 for key in HPARAM_METRICS}
        self.logger.record("hparams", HParam(hparams, metrics), exclude=("stdout", "log", "json", "csv"))

    def _on_step(self) -> bool:
        return True


class LearnerEvalCallback(EvalCallback):
    """Evaluate the *learner* every ``eval_freq`` environment steps (deterministic actions, one copy of the env).

    Under policy lag (or exploring actors) ``rollout/ep_rew_mean`` is the return of the behaviour policy mu that
    acted, not of the policy being trained; this callback measures the policy being trained. It is SB3's
    ``EvalCallback`` with three changes that make evaluations comparable across runs and exact across resumes:

    - evaluations fall on multiples of ``eval_freq`` *environment steps* (SB3 counts callback calls, which restart
      from 0 on resume), plus one at the start (step 0) and one at the end of training;
    - evaluation ``k`` resets the evaluation env with seed ``seed + k``, so the episodes evaluated at a given step
      do not depend on how many evaluations a resumed process has run before;
    - ``log_path/evaluations.npz`` (SB3's format: ``timesteps``, ``results``, ``ep_lengths``) keeps the rows of an
      interrupted run up to the step it resumes from, instead of starting a new file.

    The eval env's observation statistics are copied from the training env before each evaluation and frozen
    (``VecNormalize(training=False)``), as in SB3. Episode returns are the raw ``Monitor`` returns. Logged at the
    evaluation's own step as ``eval/mean_reward`` and ``eval/mean_ep_length`` (SB3's keys); no best model is saved.
    """

    def __init__(self, eval_env: Any, eval_freq: int, n_eval_episodes: int, log_path: str, seed: int = 0) -> None:
        super().__init__(eval_env, n_eval_episodes=n_eval_episodes, eval_freq=eval_freq, log_path=log_path,
                         deterministic=True, verbose=0, warn=False)
        self.seed = int(seed)
        self._last_eval_step = -1

    def _init_callback(self) -> None:
        super()._init_callback()
        start = self.model.num_timesteps
        if self.log_path is not None and os.path.isfile(self.log_path + ".npz"):
            with np.load(self.log_path + ".npz") as old:
                keep = old["timesteps"] <= start
                self.evaluations_timesteps = [int(t) for t in old["timesteps"][keep]]
                self.evaluations_results = [list(r) for r in old["results"][keep]]
                self.evaluations_length = [list(r) for r in old["ep_lengths"][keep]]
        self._last_eval_step = self.evaluations_timesteps[-1] if self.evaluations_timesteps else -1

    def _on_training_start(self) -> None:
        if self.model.num_timesteps == 0:
            self._evaluate()

    def _on_step(self) -> bool:
        if self.due():
            self._evaluate()
        return True

    def due(self) -> bool:
        """Whether the current step crosses a multiple of ``eval_freq`` not evaluated yet."""
        return self.model.num_timesteps // self.eval_freq > max(self._last_eval_step, 0) // self.eval_freq

    def _on_training_end(self) -> None:
        if self._last_eval_step != self.model.num_timesteps:
            self._evaluate()

    def prepare(self) -> None:
        """Set the evaluation env up for the next evaluation: the training env's normalisation statistics (frozen
        copy) and the seed ``seed + k`` of evaluation k."""
        if self.model.get_vec_normalize_env() is not None:
            sync_envs_normalization(self.training_env, self.eval_env)
        self.eval_env.seed(self.seed + len(self.evaluations_timesteps))

    def _evaluate(self) -> None:
        self.prepare()
        returns, lengths = evaluate_policy(self.model, self.eval_env, n_eval_episodes=self.n_eval_episodes,
                                           deterministic=True, return_episode_rewards=True, warn=False)
        self.record(list(returns), list(lengths))

    def record(self, returns: List[float], lengths: List[int]) -> None:
        """Store and log one evaluation at the current step (the seed batch evaluates its seeds together and hands
        each seed's episodes in here)."""
        step = self.model.num_timesteps
        self._last_eval_step = step
        self.evaluations_timesteps.append(step)
        self.evaluations_results.append(list(returns))
        self.evaluations_length.append(list(lengths))
        if self.log_path is not None:
            np.savez(self.log_path, timesteps=self.evaluations_timesteps, results=self.evaluations_results,
                     ep_lengths=self.evaluations_length)
        self._dump_alone(step, {"eval/mean_reward": float(np.mean(returns)),
                                "eval/mean_ep_length": float(np.mean(lengths))})

    def _dump_alone(self, step: int, values: Dict[str, float]) -> None:
        """Write ``values`` at ``step`` now, and nothing else: values other code recorded but not yet dumped (the
        last update's ``train/*``) are held back for SB3's next dump, so they land where they would without
        evaluation (SB3's EvalCallback dumps them at the evaluation step instead)."""
        tables = (self.logger.name_to_value, self.logger.name_to_excluded, self.logger.name_to_count)
        held = [dict(t) for t in tables]
        for table in tables:
            table.clear()
        for key, value in values.items():
            self.logger.record(key, value)
        self.logger.dump(step)
        for table, saved in zip(tables, held):
            table.update(saved)
