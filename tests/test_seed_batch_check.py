"""bench/seed_batch_check.py report: the comparison of the two training paths from their records."""

from __future__ import annotations

import importlib.util
import json

from tests.helpers import ROOT


def _record(env: str, seed: int, value: float, batch: bool) -> dict:
    return {"meta": {"env": env, "seed": seed, "n_timesteps": 100, "wall_time_s": 60.0, "code": "abc",
                     "machine": {"cpu": "cpu"}, "versions": {"torch": "x"},
                     "batch_seeds": list(range(1, 11)) if batch else None},
            "updates": {}, "eval": {"steps": [0, 100], "returns": [[0.0], [value, value]]}}


def test_report_compares_the_paths_and_flags_missing_seeds(tmp_path, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("seed_batch_check", ROOT / "bench" / "seed_batch_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    monkeypatch.setattr(check, "OUT", tmp_path)
    for path, shift, seeds in (("batch", 0.0, range(1, 11)), ("single", 0.5, range(1, 11))):
        runs = tmp_path / path / "runs"
        runs.mkdir(parents=True)
        for seed in seeds:
            rec = _record("Pendulum-v1", seed, -200.0 + seed + shift, path == "batch")
            (runs / f"Pendulum-v1_s{seed}.json").write_text(json.dumps(rec))
    for path, value in (("single", 5.0), ("batch", 900.0)):
        record = _record("HalfCheetah-v4", 1, value, path == "batch")
        (tmp_path / path / "runs" / "HalfCheetah-v4_s1.json").write_text(json.dumps(record))
    assert check.report(reps=200) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "| Pendulum-v1 | batch | 10 | -194.5 [" in summary
    assert "- Pendulum-v1: no difference detected (exact p " in summary  # shifted by 0.5 of a 10-wide spread
    assert ("- HalfCheetah-v4: INCOMPLETE (1 batched and 1 single of 10 seeds each recorded), so far: too few seeds"
            in summary)
    csv_lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("env,path,seeds,mean") and len(csv_lines) == 5
    # batched wall time is shared by its 10 seeds: 10 records x 60 s / 10 = 1 min; single runs add up: 10 min
    assert any(line.startswith("Pendulum-v1,batch,10") and line.endswith(",1.000") for line in csv_lines)
    assert any(line.startswith("Pendulum-v1,single,10") and line.endswith(",10.000") for line in csv_lines)
