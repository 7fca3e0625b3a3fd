"""Profile one benchmark measurement with cProfile: where does ``model.learn`` spend its time?

    python bench/profile_learn.py --case halfcheetah-tuned --variant dualclip-lag0 --steps 4096 [--top 40]

Builds the model exactly as ``bench/bench.py`` does (same case, variant, seed), runs ``learn(steps)`` under
cProfile and prints the top functions by total (own) time and by cumulative time, plus the share of wall time
spent in ``collect_rollouts`` and ``train``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))
from bench import CASES, VARIANTS, build_model  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="halfcheetah-tuned", choices=list(CASES))
    p.add_argument("--variant", default="dualclip-lag0", choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--top", type=int, default=35)
    p.add_argument("--out", default=None, help="also dump the raw pstats file here")
    args = p.parse_args(argv)

    import torch

    model = build_model(args.case, args.variant, args.seed, args.threads)

    import platform

    import stable_baselines3

    from cli.common import code_version, machine_info

    print(f"command: python bench/profile_learn.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, stable_baselines3 "
          f"{stable_baselines3.__version__}; code {code_version()}; machine {machine_info()}; "
          f"written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    model.learn(args.steps)
    prof.disable()
    wall = time.perf_counter() - start
    print(f"{args.case} {args.variant}: {model.num_timesteps} steps in {wall:.2f} s under cProfile "
          f"({model.num_timesteps / wall:.0f} steps/s; profiling overhead included), torch threads "
          f"{torch.get_num_threads()}")
    stats = pstats.Stats(prof)
    if args.out:
        stats.dump_stats(args.out)
    total = stats.total_tt  # type: ignore[attr-defined]
    # Per name the function with the largest cumulative time: wrappers of one name (VecEnv.step_wait of each
    # VecEnvWrapper) nest, so a sum would count the same time several times.
    for name in ("collect_rollouts", "train", "_log_lag_diagnostics", "step_wait", "evaluate_actions", "get"):
        found = [(v[3], k) for k, v in stats.stats.items() if k[2] == name]  # type: ignore[attr-defined]
        if not found:
            continue
        cum, (path, line, _) = max(found)
        where = f"{Path(path).name}:{line}"
        print(f"  cumulative in {name:22s} {cum:7.2f} s  ({100 * cum / total:5.1f}% of profiled time; {where})")
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(args.top)
        print(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
