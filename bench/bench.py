"""Side-by-side speed benchmark: env-steps/s and peak memory of stock SB3 PPO and our arms.

    python bench/bench.py                       # full set (HalfCheetah tuned + SB3 defaults, Breakout)
    python bench/bench.py --cases halfcheetah-tuned --steps 4096 --repeats 3

Each measurement runs in a fresh child process (so its peak RSS is its own), one after the other and
interleaved across variants (stock, ppo, dualclip, dualclip lag 8, stock, ppo, ...), so slow drifts of the
machine hit every variant alike. Timed: ``model.learn(steps)`` after construction. Printed: median steps/s per
variant, its ratio to stock SB3, min..max over repeats; written: JSON with every repeat, versions and machine.

Also: steps per CPU-second of the child (robust to other jobs on a shared machine; compare with --threads 1).

Targets (issue: performance): dualclip/stock >= 0.97, dualclip lag 8 / dualclip lag 0 >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path
from queue import Empty
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: case -> (env id, hyperparameter file, default steps)
CASES: Dict[str, Tuple[str, str, int]] = {
    "halfcheetah-tuned": ("HalfCheetah-v4", "hyperparams/ppo.yml", 8192),
    "halfcheetah-sb3-defaults": ("HalfCheetah-v4", "hyperparams/ppo_sb3_defaults.yml", 8192),
    "breakout": ("ALE/Breakout-v5", "hyperparams/ppo.yml", 4096),
}
#: variant -> (algo id or "stock", extra constructor kwargs)
VARIANTS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "stock-sb3": ("stock", {}),
    "ppo-lag0": ("ppo", {}),
    "dualclip-lag0": ("dualclip", {}),
    "dualclip-lag8": ("dualclip", {"policy_lag": 8}),
}


def build_model(case: str, variant: str, seed: int, threads: Optional[int]):
    """The model of one measurement: the case's env and hyperparameters, the variant's class and extras."""
    import torch
    from stable_baselines3 import PPO

    from agents import ALGOS
    from agents.hyperparams import load_hyperparams, to_constructor_kwargs
    from envs import is_atari, make_env

    if threads:
        torch.set_num_threads(threads)
    env_id, conf, _ = CASES[case]
    config = load_hyperparams(ROOT / conf, env_id, is_atari(env_id))
    env = make_env(env_id, n_envs=config.get("n_envs", 1), seed=seed, normalize=config.get("normalize", False),
                   frame_stack=config.get("frame_stack"))
    algo, extra = VARIANTS[variant]
    cls = PPO if algo == "stock" else ALGOS[algo]
    return cls(config.get("policy", "MlpPolicy"), env, seed=seed, device="cpu", **to_constructor_kwargs(config), **extra)


def measure(case: str, variant: str, steps: int, seed: int, threads: Optional[int], queue: Any) -> None:
    """Child process: build the model, time ``learn(steps)``, report steps/s and peak RSS."""
    import torch

    model = build_model(case, variant, seed, threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.learn(steps)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    queue.put({"steps_per_s": model.num_timesteps / elapsed, "seconds": elapsed, "steps": model.num_timesteps,
               "cpu_steps_per_s": model.num_timesteps / cpu, "cpu_seconds": cpu,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "torch_threads": torch.get_num_threads()})


def run_child(ctx: Any, case: str, variant: str, steps: int, seed: int, threads: Optional[int]) -> dict:
    """One measurement in a fresh process; a child that dies without reporting stops the benchmark."""
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(case, variant, steps, seed, threads, queue))
    proc.start()
    while True:
        alive = proc.is_alive()  # checked before waiting: a child that reported and then exited is not lost
        try:
            out = queue.get(timeout=5)
            break
        except Empty:
            if not alive:
                raise SystemExit(f"bench.py: the {case}/{variant} measurement died (exit code {proc.exitcode})")
    proc.join()
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=None, help="env steps per measurement (default: per case)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=None,
                   help="JSON file to write, never an existing one (default: results/bench/bench-<UTC time>.json)")
    args = p.parse_args(argv)
    out_path = Path(args.out or ROOT / "results" / "bench" / time.strftime("bench-%Y%m%d-%H%M%S.json", time.gmtime()))
    from agents.cli import refuse_existing

    refuse_existing(p, out_path)

    ctx = mp.get_context("spawn")
    results: Dict[str, Dict[str, List[dict]]] = {}
    for case in args.cases:
        steps = args.steps or CASES[case][2]
        results[case] = {v: [] for v in args.variants}
        for rep in range(args.repeats):
            for variant in args.variants:  # interleaved: every variant once per repeat
                out = run_child(ctx, case, variant, steps, args.seed, args.threads)
                results[case][variant].append(out)
                print(f"{case:26s} {variant:14s} rep {rep}: {out['steps_per_s']:8.0f} steps/s, "
                      f"{out['cpu_steps_per_s']:8.0f} steps/cpu-s, peak {out['peak_rss_mib']:.0f} MiB", flush=True)

    # Wall-clock steps/s is what a user sees; steps per CPU-second (the child's process time) is far less sensitive
    # to other jobs on a shared machine (with 1 torch thread it measures the work done), so both are reported.
    print("\nmedian steps/s (ratio to stock SB3; min..max over repeats) | median steps per CPU-second (ratio)")
    summary: Dict[str, Dict[str, dict]] = {}
    for case, by_variant in results.items():
        stock = cpu_stock = None
        if "stock-sb3" in by_variant:
            stock = statistics.median(r["steps_per_s"] for r in by_variant["stock-sb3"])
            cpu_stock = statistics.median(r["cpu_steps_per_s"] for r in by_variant["stock-sb3"])
        summary[case] = {}
        for variant, runs in by_variant.items():
            sps = [r["steps_per_s"] for r in runs]
            cps = [r["cpu_steps_per_s"] for r in runs]
            med, cpu_med = statistics.median(sps), statistics.median(cps)
            ratio = med / stock if stock else float("nan")
            cpu_ratio = cpu_med / cpu_stock if cpu_stock else float("nan")
            summary[case][variant] = {"median_steps_per_s": med, "ratio_to_stock": ratio,
                                      "min": min(sps), "max": max(sps),
                                      "median_cpu_steps_per_s": cpu_med, "cpu_ratio_to_stock": cpu_ratio,
                                      "cpu_min": min(cps), "cpu_max": max(cps),
                                      "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}
            print(f"{case:26s} {variant:14s} {med:8.0f}  x{ratio:.3f}  ({min(sps):.0f}..{max(sps):.0f})"
                  f" | {cpu_med:8.0f}  x{cpu_ratio:.3f}  ({min(cps):.0f}..{max(cps):.0f})"
                  f"  peak {summary[case][variant]['peak_rss_mib']:.0f} MiB")
        if "dualclip-lag8" in by_variant and "dualclip-lag0" in by_variant:
            lag8, lag0 = summary[case]["dualclip-lag8"], summary[case]["dualclip-lag0"]
            r = lag8["median_steps_per_s"] / lag0["median_steps_per_s"]
            cpu_r = lag8["median_cpu_steps_per_s"] / lag0["median_cpu_steps_per_s"]
            summary[case]["lag8_over_lag0"] = {"ratio": r, "cpu_ratio": cpu_r}
            print(f"{case:26s} lag 8 / lag 0: x{r:.3f} | x{cpu_r:.3f}")

    from agents.cli import provenance

    meta = {**provenance("bench/bench.py", argv if argv is not None else sys.argv[1:]),
            "repeats": args.repeats, "seed": args.seed, "threads": args.threads}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"meta": meta, "summary": summary, "runs": results}, indent=1))
    print(f"\nwritten: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
