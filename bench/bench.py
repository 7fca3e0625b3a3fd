"""Side-by-side speed benchmark: env-steps/s and peak memory of stock SB3 PPO and our arms.

    python bench/bench.py                       # full set (HalfCheetah tuned + SB3 defaults, Breakout)
    python bench/bench.py --cases halfcheetah-tuned --rounds 8

Speed, in one process per case: every variant's model is built there, then in each round every variant learns one
more chunk of steps (one rollout and update by default), in an order rotated round by round, each timed. The ratio
of a variant to stock SB3 is taken *within* a round, so drift of a shared machine (we have seen +-20 % between
minutes) hits both sides of a ratio alike; printed: the median over rounds of these paired ratios with their
min..max, and the median steps/s. Memory: each variant once more in a fresh child process (its peak RSS is its
own), which also gives a standalone steps/s. Written: JSON with every round, versions and machine.

Targets (what the suite promises its users): dualclip/stock >= 0.97, dualclip lag 8 / dualclip lag 0 >= 0.95.

Seed batches (``--seed-batch 5 10``): summed env-steps/s of S seeds trained as one seed batch (agents/seed_batch.py)
against S single runs, SB3's default HalfCheetah-v4 settings (``--seed-batch-case`` picks another case, e.g.
``minatar-breakout``: MinAtar's Breakout with the ``minatar`` entry, 64 envs x 128 steps, the MinAtar CNN), dualclip
at lag 0, in one process with interleaved, rotated rounds as above (each round: every single run learns one rollout
and update, then each batch does). Printed: the median paired ratio per S with its min..max over rounds, the hours
a cell of S seeds costs per 1M steps per seed on either path (S x 1M steps at the median summed speed, one core),
and where a batch's time goes (cProfile of one batch in a child process: environments, acting, the learner's
update, the rest). Target (HalfCheetah): S = 5 >= 3. ``--note`` records what else ran on the machine; the load
average before and after is recorded as well.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from queue import Empty
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: case -> (env id, hyperparameter file, steps of the standalone (memory) run, steps per interleaved chunk)
CASES: Dict[str, Tuple[str, str, int, int]] = {
    "halfcheetah-tuned": ("HalfCheetah-v4", "hyperparams/ppo.yml", 8192, 512),
    "halfcheetah-sb3-defaults": ("HalfCheetah-v4", "hyperparams/ppo_sb3_defaults.yml", 8192, 2048),
    "breakout": ("ALE/Breakout-v5", "hyperparams/ppo.yml", 4096, 1024),
    "minatar-breakout": ("MinAtar/Breakout-v1", "hyperparams/ppo.yml", 16384, 8192),  # a chunk: one 64 x 128 rollout
}
DEFAULT_CASES = ["halfcheetah-tuned", "halfcheetah-sb3-defaults", "breakout"]  #: what a plain run measures
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
    from cli.hyperparams import load_hyperparams, normalize_kwargs, to_constructor_kwargs
    from envs import is_atari, make_env

    from cli.common import keep_freed_memory

    keep_freed_memory()  # as train.py does; in the shared process of the interleaved rounds it applies to all
    if threads:
        torch.set_num_threads(threads)
    env_id, conf = CASES[case][:2]
    config = load_hyperparams(ROOT / conf, env_id, is_atari(env_id))
    algo, extra = VARIANTS[variant]
    # stock SB3 runs on SB3's own classes throughout; our env speed-ups count as part of our path
    env = make_env(env_id, n_envs=config.get("n_envs", 1), seed=seed, normalize=normalize_kwargs(config),
                   frame_stack=config.get("frame_stack"), fast=algo != "stock")
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


def interleave(case: str, variants: List[str], chunk: int, rounds: int, seed: int, threads: Optional[int],
               queue: Any) -> None:
    """Child process: all variants' models here; per round each learns ``chunk`` more steps (order rotated), timed."""
    models = {v: build_model(case, v, seed, threads) for v in variants}
    for model in models.values():  # warm-up: first reset, allocations, the optimizer's state
        model.learn(chunk)
    rows: List[Dict[str, float]] = []
    for r in range(rounds):
        row = {}
        for v in variants[r % len(variants):] + variants[: r % len(variants)]:
            model, before = models[v], models[v].num_timesteps
            start = time.perf_counter()
            model.learn(chunk, reset_num_timesteps=False)
            row[v] = (model.num_timesteps - before) / (time.perf_counter() - start)
        rows.append(row)
    queue.put(rows)


SEED_BATCH_CASE = "halfcheetah-sb3-defaults"  #: the default --seed-batch-case


def interleave_seeds(case: str, sizes: List[int], rounds: int, seed: int, threads: Optional[int],
                     queue: Any) -> None:
    """Child process: max(sizes) single runs and one seed batch per size; per round the single runs learn one
    chunk each (one after another, as a machine runs them one at a time), then every batch learns one chunk."""
    from agents.seed_batch import SeedBatch

    chunk = CASES[case][3]
    singles = [build_model(case, "dualclip-lag0", seed + i, threads) for i in range(max(sizes))]
    batches = {n: SeedBatch([build_model(case, "dualclip-lag0", seed + 100 * n + i, threads)
                             for i in range(n)]) for n in sizes}
    for model in singles:  # warm-up
        model.learn(chunk)
    for batch in batches.values():
        batch.learn(chunk)
    names = ["single"] + [f"batch-{n}" for n in sizes]
    rows: List[Dict[str, float]] = []
    for r in range(rounds):
        row = {}
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            if name == "single":
                for model in singles:
                    model.learn(chunk, reset_num_timesteps=False)
                row[name] = len(singles) * chunk / (time.perf_counter() - start)
            else:
                n = int(name.split("-")[1])
                batches[n].learn(chunk, reset_num_timesteps=False)
                row[name] = n * chunk / (time.perf_counter() - start)
        rows.append(row)
    queue.put(rows)


def profile_seed_batch(case: str, n: int, seed: int, threads: Optional[int], queue: Any) -> None:
    """Child process: where one seed batch's time goes (cProfile over two rollouts and updates, after a warm-up)."""
    import cProfile
    import pstats

    from agents.seed_batch import SeedBatch

    chunk = CASES[case][3]
    batch = SeedBatch([build_model(case, "dualclip-lag0", seed + i, threads) for i in range(n)])
    batch.learn(chunk)
    profiler = cProfile.Profile()
    profiler.enable()
    batch.learn(2 * chunk, reset_num_timesteps=False)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, function) -> (calls, primitive calls, tottime, cumtime, ...)

    def cumulative(file_end: str, function: str) -> float:
        return sum(v[3] for k, v in stats.items() if k[0].endswith(file_end) and k[2] == function)

    total = cumulative("seed_batch.py", "learn")
    parts = {
        "environments (simulator, wrappers, normalisation)": cumulative("seed_envs.py", "step"),
        "acting (batched forward, sampling)": cumulative("seed_batch.py", "_act"),
        "learner update (train)": cumulative("seed_batch.py", "train"),
        "  of which backward": cumulative("_tensor.py", "backward"),
        "  of which the vmapped minibatch loss": cumulative("apis.py", "wrapped"),
        "  of which Adam and clipping": cumulative("fast_optim.py", "adam_step") + cumulative("seed_batch.py", "_clip_grad_norm"),
    }
    top = [k for k in parts if not k.startswith(" ")]
    parts["rest (callbacks, buffers, GAE, logging)"] = total - sum(parts[k] for k in top)
    queue.put({"seconds": total, "shares": {k: v / total for k, v in parts.items()}})


def seed_batch_main(args: argparse.Namespace, out_path: Path, argv: Optional[List[str]]) -> int:
    """``--seed-batch``: the paired ratios of seed batches to single runs, and a profile of the first size."""
    case = args.seed_batch_case
    load_before = os.getloadavg()
    ctx = mp.get_context("spawn")
    rows = run_child(ctx, interleave_seeds, (case, args.seed_batch, args.rounds, args.seed, args.threads), "seed batch")
    profile = run_child(ctx, profile_seed_batch, (case, args.seed_batch[0], args.seed, args.threads),
                        "seed batch profile")
    load_after = os.getloadavg()

    def cost(steps_per_s: float, n: int) -> float:
        """Hours for n seeds x 1M steps each at a summed speed of steps_per_s (one core)."""
        return n * 1e6 / steps_per_s / 3600

    summary: Dict[str, Any] = {
        f"batch-{n}": {"median_steps_per_s": statistics.median(row[f"batch-{n}"] for row in rows),
                       "ratio_to_single": _paired(rows, f"batch-{n}", "single")} for n in args.seed_batch}
    summary["single"] = {"median_steps_per_s": statistics.median(row["single"] for row in rows)}
    for n in args.seed_batch:
        summary[f"batch-{n}"]["hours_per_cell_per_1M_steps_per_seed"] = cost(summary[f"batch-{n}"]["median_steps_per_s"], n)
        summary["single"][f"hours_per_{n}_seeds_per_1M_steps_per_seed"] = cost(summary["single"]["median_steps_per_s"], n)
    print(f"\n{case}, dualclip lag 0, {args.rounds} interleaved rounds of {CASES[case][3]} steps per seed: summed "
          "steps/s (median) | paired ratio to single runs, median (min..max over rounds) | hours per cell of S seeds "
          "per 1M steps per seed")
    print(f"{'single runs':14s} {summary['single']['median_steps_per_s']:7.0f} | {'':22s} | "
          + ", ".join(f"S={n}: {summary['single'][f'hours_per_{n}_seeds_per_1M_steps_per_seed']:.2f} h"
                      for n in args.seed_batch))
    for n in args.seed_batch:
        v = summary[f"batch-{n}"]
        r = v["ratio_to_single"]
        print(f"{'batch of ' + str(n):14s} {v['median_steps_per_s']:7.0f} | x{r['median']:.2f} ({r['min']:.2f}..{r['max']:.2f})"
              f"{'':8s} | {v['hours_per_cell_per_1M_steps_per_seed']:.2f} h")
    print(f"\nwhere a batch of {args.seed_batch[0]} spends its time ({profile['seconds']:.1f} s under cProfile):")
    for part, share in profile["shares"].items():
        print(f"  {part:55s} {100 * share:5.1f} %")
    from cli.common import provenance

    meta = {**provenance("bench/bench.py", argv if argv is not None else sys.argv[1:], **_extra_versions(case)),
            "rounds": args.rounds, "case": case, "env_id": CASES[case][0], "hyperparams": CASES[case][1],
            "chunk": CASES[case][3], "seed": args.seed, "threads": args.threads, "note": args.note,
            "load_average_1_5_15min": {"before": load_before, "after": load_after}, "cpu_count": os.cpu_count()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"meta": meta, "summary": summary, "rounds": rows, "profile": profile}, indent=1))
    print(f"\nwritten: {out_path}")
    return 0


def _extra_versions(case: str) -> Dict[str, str]:
    """Library versions a case depends on beyond those provenance() records (MinAtar's package)."""
    from importlib.metadata import PackageNotFoundError, version

    if not CASES[case][0].startswith("MinAtar/"):
        return {}
    try:
        return {"minatar": version("minatar")}
    except PackageNotFoundError:
        return {}


def run_child(ctx: Any, target: Any, args: tuple, what: str) -> Any:
    """``target(*args, queue)`` in a fresh process; a child that dies without reporting stops the benchmark."""
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:
        alive = proc.is_alive()  # checked before waiting: a child that reported and then exited is not lost
        try:
            out = queue.get(timeout=5)
            break
        except Empty:
            if not alive:
                raise SystemExit(f"bench.py: the {what} measurement died (exit code {proc.exitcode})")
    proc.join()
    return out


def _paired(rows: List[Dict[str, float]], num: str, den: str) -> Dict[str, float]:
    ratios = [row[num] / row[den] for row in rows]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds per case")
    p.add_argument("--chunk", type=int, default=None, help="env steps per variant and round (default: per case)")
    p.add_argument("--steps", type=int, default=None, help="env steps of the standalone memory run (default: per case)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed-batch", type=int, nargs="+", default=None, metavar="S",
                   help="instead of the cases: seed batches of these sizes against single runs (--seed-batch-case)")
    p.add_argument("--seed-batch-case", default=SEED_BATCH_CASE, choices=list(CASES),
                   help=f"the case of --seed-batch (default {SEED_BATCH_CASE})")
    p.add_argument("--note", default=None,
                   help="free text recorded in the JSON's meta, e.g. what else ran on the machine meanwhile")
    p.add_argument("--out", default=None,
                   help="JSON file to write, never an existing one (default: results/bench/bench-<UTC time>.json)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: give at least 1")
    out_path = Path(args.out or ROOT / "results" / "bench" / time.strftime("bench-%Y%m%d-%H%M%S.json", time.gmtime()))
    from cli.common import refuse_existing

    refuse_existing(p, out_path)
    if args.seed_batch is not None:
        if min(args.seed_batch) < 1:
            p.error(f"--seed-batch {' '.join(map(str, args.seed_batch))}: sizes are numbers of seeds >= 1")
        return seed_batch_main(args, out_path, argv)

    ctx = mp.get_context("spawn")
    rounds: Dict[str, List[Dict[str, float]]] = {}
    standalone: Dict[str, Dict[str, dict]] = {}
    summary: Dict[str, Dict[str, Any]] = {}
    for case in args.cases:
        chunk = args.chunk or CASES[case][3]
        rows = run_child(ctx, interleave, (case, args.variants, chunk, args.rounds, args.seed, args.threads),
                         f"{case} interleaved")
        rounds[case] = rows
        standalone[case] = {}
        steps = args.steps or CASES[case][2]
        for variant in args.variants:
            standalone[case][variant] = run_child(ctx, measure, (case, variant, steps, args.seed, args.threads),
                                                  f"{case}/{variant}")
        summary[case] = {}
        for variant in args.variants:
            alone = standalone[case][variant]
            summary[case][variant] = {
                "median_steps_per_s": statistics.median(row[variant] for row in rows),
                "ratio_to_stock": _paired(rows, variant, "stock-sb3") if "stock-sb3" in args.variants else None,
                "standalone_steps_per_s": alone["steps_per_s"],
                "peak_rss_mib": alone["peak_rss_mib"],
            }
        if "dualclip-lag8" in args.variants and "dualclip-lag0" in args.variants:
            summary[case]["lag8_over_lag0"] = _paired(rows, "dualclip-lag8", "dualclip-lag0")

    print(f"\n{args.rounds} interleaved rounds per case: median steps/s | paired ratio to stock SB3, median (min..max "
          "over rounds) | standalone run: steps/s, peak RSS")
    for case, by_variant in summary.items():
        for variant in args.variants:
            v = by_variant[variant]
            r = v["ratio_to_stock"]
            ratio = f"x{r['median']:.3f} ({r['min']:.3f}..{r['max']:.3f})" if r else "-"
            print(f"{case:26s} {variant:14s} {v['median_steps_per_s']:7.0f} | {ratio:24s} | "
                  f"{v['standalone_steps_per_s']:7.0f}, {v['peak_rss_mib']:.0f} MiB")
        if "lag8_over_lag0" in by_variant:
            r = by_variant["lag8_over_lag0"]
            print(f"{case:26s} lag 8 / lag 0: x{r['median']:.3f} ({r['min']:.3f}..{r['max']:.3f})")

    from cli.common import provenance

    meta = {**provenance("bench/bench.py", argv if argv is not None else sys.argv[1:]),
            "rounds": args.rounds, "chunks": {c: args.chunk or CASES[c][3] for c in args.cases},
            "seed": args.seed, "threads": args.threads}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"meta": meta, "summary": summary, "rounds": rounds, "standalone": standalone},
                                   indent=1))
    print(f"\nwritten: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
