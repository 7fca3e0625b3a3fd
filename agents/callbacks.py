"""Callbacks used by train.py."""

from __future__ import annotations

from typing import Any, Dict

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HParam

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
