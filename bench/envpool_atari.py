"""Is EnvPool a faster Atari backend here, and can its preprocessing match ours exactly?

    pip install envpool            # optional, not a dependency of the suite
    python bench/envpool_atari.py --out results/bench/envpool_breakout.json

Two measurements on Breakout, both written to JSON with versions and machine:

1. **Throughput** of the vectorised environment alone (uniform random actions, the tuned Atari setting of 8
   environments): our path (``envs.make_env``: SB3's ``make_atari_env`` + ``AtariWrapper`` in a
   ``DummyVecEnv`` + 4-frame stack) against EnvPool with the same preprocessing options, interleaved over
   ``--repeats`` rounds so machine drift hits both alike.
2. **Exactness**: one environment each, the same action sequence, no random no-ops on either side (SB3
   ``noop_max=0``, EnvPool ``noop_max=1``), no sticky actions; the 84x84 frames, rewards and episode ends are
   compared step by step, once for the core preprocessing only and once with everything used in training.
   The count of equal frames and the first step at which frames, rewards or episode ends differ are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli.common import provenance, refuse_existing  # noqa: E402

GYM_ID, POOL_ID = "BreakoutNoFrameskip-v4", "Breakout-v5"
#: EnvPool options equal to SB3's AtariWrapper defaults (its own defaults differ: no episodic life, no clip).
POOL_OPTIONS = dict(episodic_life=True, reward_clip=True, noop_max=30, frame_skip=4, stack_num=4,
                    img_height=84, img_width=84, gray_scale=True, use_fire_reset=True,
                    repeat_action_probability=0.0)


def ours(n_envs: int, seed: int):
    from envs import make_env

    return make_env(GYM_ID, n_envs=n_envs, seed=seed)


def pool(n_envs: int, seed: int, **overrides: Any):
    import envpool

    return envpool.make_gymnasium(POOL_ID, num_envs=n_envs, seed=seed, **{**POOL_OPTIONS, **overrides})


def steps_per_s(venv, n_envs: int, steps: int, rng: np.random.Generator) -> float:
    """Random-action env-steps/s of a vectorised env (SB3 VecEnv or EnvPool: both step an array of actions)."""
    venv.reset()
    start = time.perf_counter()
    for _ in range(steps // n_envs):
        venv.step(rng.integers(0, venv.action_space.n, size=n_envs))
    return (steps // n_envs) * n_envs / (time.perf_counter() - start)


def throughput(n_envs: int, steps: int, repeats: int, seed: int) -> Dict[str, Any]:
    rng = np.random.default_rng(seed)
    runs: Dict[str, list] = {"ours (SB3 AtariWrapper, DummyVecEnv)": [], "envpool": []}
    a, b = ours(n_envs, seed), pool(n_envs, seed)
    for _ in range(repeats):
        runs["ours (SB3 AtariWrapper, DummyVecEnv)"].append(steps_per_s(a, n_envs, steps, rng))
        runs["envpool"].append(steps_per_s(b, n_envs, steps, rng))
    a.close()
    b.close()
    base = statistics.median(runs["ours (SB3 AtariWrapper, DummyVecEnv)"])
    return {name: {"median_steps_per_s": statistics.median(v), "ratio_to_ours": statistics.median(v) / base,
                   "all": v} for name, v in runs.items()}


def exactness(steps: int, seed: int, full: bool) -> Dict[str, Any]:
    """Step one environment of each with one action sequence; report equal frames and the first divergences.

    ``full=False`` compares only the core (frame skip 4 with max-pooling, 84x84 grayscale): no fire reset,
    no episodic life, no reward clipping. ``full=True`` adds those, as in training.
    """
    import gymnasium as gym
    from stable_baselines3.common.atari_wrappers import AtariWrapper, MaxAndSkipEnv, WarpFrame

    from envs import check_env_id

    check_env_id(GYM_ID)  # registers the ALE ids

    if full:
        ref = AtariWrapper(gym.make(GYM_ID), noop_max=0)
        env = pool(1, seed, noop_max=1, stack_num=1)
    else:
        ref = WarpFrame(MaxAndSkipEnv(gym.make(GYM_ID), skip=4))
        env = pool(1, seed, noop_max=1, stack_num=1, use_fire_reset=False, episodic_life=False, reward_clip=False)
    obs_ref, _ = ref.reset(seed=seed)
    obs_pool, _ = env.reset()
    rng = np.random.default_rng(seed)
    first: Dict[str, Any] = {}
    frames_equal = 0
    for t in range(steps):
        a, b = obs_ref[..., 0].astype(np.int16), obs_pool[0, 0].astype(np.int16)
        if np.array_equal(a, b):
            frames_equal += 1
        elif "frame" not in first:
            first["frame"] = {"step": t, "pixels_differing": int((a != b).sum()), "max_abs_diff": int(np.abs(a - b).max())}
        action = int(rng.integers(0, 4))
        obs_ref, r_ref, term_ref, trunc_ref, _ = ref.step(action)
        obs_pool, r_pool, term_pool, trunc_pool, _ = env.step(np.array([action]))
        done_ref, done_pool = bool(term_ref or trunc_ref), bool(term_pool[0] or trunc_pool[0])
        if r_ref != r_pool[0] and "reward" not in first:
            first["reward"] = {"step": t, "ours": float(r_ref), "envpool": float(r_pool[0])}
        if done_ref != done_pool and "done" not in first:
            first["done"] = {"step": t, "ours": done_ref, "envpool": done_pool}
        if done_ref:
            obs_ref, _ = ref.reset()
        if done_pool:
            obs_pool, _ = env.reset()
    return {"steps": steps, "frames_equal": frames_equal, "first_difference": first}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=20000, help="env steps per throughput measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--exact-steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (refuses an existing one)")
    args = p.parse_args()
    refuse_existing(p, args.out)
    try:
        import envpool
    except ImportError:
        p.error("envpool is not installed: pip install envpool")
    result = {
        "meta": {**provenance("bench/envpool_atari.py", sys.argv[1:], envpool=envpool.__version__),
                 "pool_options": POOL_OPTIONS, "n_envs": args.n_envs, "steps": args.steps,
                 "repeats": args.repeats},
        "throughput": throughput(args.n_envs, args.steps, args.repeats, args.seed),
        "exactness": {"core": exactness(args.exact_steps, args.seed, full=False),
                      "full": exactness(args.exact_steps, args.seed, full=True)},
    }
    print(json.dumps(result["throughput"], indent=1))
    print(json.dumps(result["exactness"], indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
