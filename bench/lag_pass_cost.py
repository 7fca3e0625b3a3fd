"""What lag costs inside one process: the time of the learner's batched value pass over each rollout.

    python bench/lag_pass_cost.py --out results/bench/lag_pass_cost.json

At lag K > 0 a snapshot acts, so the learner's critic values the rollout afterwards in one batched no-grad pass
(``LearnerPass.values``, agents/learner_pass.py); that pass is lag's only extra work. This script trains dualclip at lag 8 for
``--steps`` steps per case and chunk size and reports the pass's share of the run's wall time, which, unlike
steps/s ratios between separate runs, does not suffer from machine drift.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench import CASES, build_model  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["breakout", "halfcheetah-sb3-defaults"], choices=list(CASES))
    p.add_argument("--chunks", nargs="+", type=int, default=[1024, 256])
    p.add_argument("--steps", type=int, default=4096)
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (refuses an existing one)")
    args = p.parse_args()
    from cli.common import provenance, refuse_existing

    refuse_existing(p, args.out)
    import agents.learner_pass as learner_pass

    spent = [0.0]
    original = learner_pass.LearnerPass.values

    def timed(self, policy, buffer):
        start = time.perf_counter()
        out = original(self, policy, buffer)
        spent[0] += time.perf_counter() - start
        return out

    learner_pass.LearnerPass.values = timed
    rows = []
    for case in args.cases:
        for chunk in args.chunks:
            learner_pass.CHUNK = chunk
            spent[0] = 0.0
            model = build_model(case, "dualclip-lag8", 0, 1)
            start = time.perf_counter()
            model.learn(args.steps)
            total = time.perf_counter() - start
            rows.append({"case": case, "chunk": chunk, "steps": model.num_timesteps, "seconds": total,
                         "learner_pass_seconds": spent[0], "learner_pass_share": spent[0] / total})
            print(f"{case:26s} chunk {chunk:5d}: learner pass {spent[0]:.3f} s of {total:.2f} s "
                  f"({100 * spent[0] / total:.1f} %)", flush=True)
    meta = {**provenance("bench/lag_pass_cost.py", sys.argv[1:]), "torch_threads": 1, "variant": "dualclip-lag8"}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
