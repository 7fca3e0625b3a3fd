"""Shared test helpers: tiny models, as in SB3's own tests (net_arch=[16], n_steps=64)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, List

import torch as th
from stable_baselines3.common.env_util import make_vec_env

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_steps=64, batch_size=32, n_epochs=2, policy_kwargs=dict(net_arch=[16]), device="cpu")


def tiny_model(cls: type, env_id: str = "CartPole-v1", n_envs: int = 1, seed: int = 0, **kwargs: Any):
    """A small model of ``cls`` on a seeded vectorised env; ``kwargs`` override TINY."""
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    return cls("MlpPolicy", env, seed=seed, **{**TINY, **kwargs})


def flat_params(model) -> th.Tensor:
    return th.cat([p.detach().flatten() for p in model.policy.parameters()])


def assert_batched_forward_matches(models: List[Any], atol: float = 1e-5, log_prob_atol: float = 1e-5) -> None:
    """One batched forward of ``models`` (agents.seed_batch) gives each model's own values and entropies (to
    ``atol``) and log-probs (to ``log_prob_atol``) of the actions it samples, on each model's reset observations."""
    import numpy as np

    from agents.seed_batch import SeedBatch

    batch = SeedBatch(models)
    obs = th.as_tensor(np.stack([m.env.reset() for m in models]))
    dist, values = batch._forward(batch.params, obs)
    actions = dist.sample(batch._noise(obs.shape[1]))  # (S, E, ...)
    for s, m in enumerate(models):
        v, log_prob, entropy = m.policy.evaluate_actions(obs[s], actions[s])
        assert th.allclose(values[s], v.flatten(), atol=atol)
        assert th.allclose(dist.log_prob(actions)[s], log_prob, atol=log_prob_atol)
        assert th.allclose(dist.entropy()[s], entropy, atol=atol)


def run_script(script: str, args: List[str], cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run one of our entry points in a subprocess with this interpreter and one OpenMP thread (the tiny nets here
    are fastest so, and OpenMP threads spin badly on a busy 2-core machine)."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def ctrl_c_twice(proc: subprocess.Popen, ready: Any, gap: float, wait: float = 240) -> str:
    """Wait (up to ``wait`` s) until ``ready()`` or the process ends, send SIGINT twice ``gap`` s apart, and
    check the second stopped it at once (exit 130, said on stderr); returns its stderr."""
    import signal
    import time

    deadline = time.time() + wait
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "second SIGINT: stopping now" in err, err
    return err


def run(script: str, *args: object) -> subprocess.CompletedProcess:
    """:func:`run_script` with the arguments given one by one (paths and numbers welcome)."""
    return run_script(script, [str(a) for a in args])
