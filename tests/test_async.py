"""Asynchronous actors (train.py --actors N, agents/asynchronous.py), on CartPole-v1 with 2 actors and tiny nets.

Ray costs about 20 s to start on a 2-core machine, so one end-to-end run stays in the default suite (it checks that
the run completes, the measured lag with a slowed actor, --max-staleness 1, the record and that no process is left);
the unbounded lag, Ctrl-C with --resume and a rollout returned through Ray are ``slow``. The rest runs without Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.running_mean_std import RunningMeanStd

from agents.asynchronous import RolloutActor, Weights, may_start
from agents.behavior import _acting_copy, module_tensors, temper
from agents.lagged import LaggedPPO
from envs import make_env
from tests.helpers import ROOT, ctrl_c_twice, tiny_model

pytest.importorskip("ray")

#: 2 environments x 64 steps = 128 steps per rollout and update
TINY = ["-params", "n_envs:2", "n_steps:64", "batch_size:64", "n_epochs:2", "policy_kwargs:{net_arch: [16]}"]
MARK = "DUALCLIP_ASYNC_TEST"


# ------------------------------------------------------------------------------------------------ without Ray
def _simulate(n_actors: int, max_staleness: Optional[int], durations: List[float], updates: int,
              rng: np.random.Generator, update_time: float = 0.0) -> List[int]:
    """The learner loop of AsyncRollouts with simulated actors: dispatch the idle actors whose last rollout left
    the queue and that the bound lets start, receive the earliest finisher, hand out the first queued rollout (and
    restart idle actors before the update), train in arrival order."""
    version, clock, lags = 0, 0.0, []
    in_flight: Dict[int, tuple] = {}  # actor -> (acting version, finishing time)
    arrived: List[tuple] = []  # (actor, version)
    training: List[int] = []  # the version of the rollout being trained
    idle = list(range(n_actors))

    def dispatch() -> None:
        for j in list(idle):
            outstanding = [v for v, _ in in_flight.values()] + [v for _, v in arrived] + training
            if j not in [a for a, _ in arrived] and may_start(version, outstanding, max_staleness):
                idle.remove(j)
                in_flight[j] = (version, clock + durations[j] * rng.uniform(0.5, 1.5))

    def receive(until: float) -> None:
        for j in sorted((a for a in in_flight if in_flight[a][1] <= until), key=lambda a: in_flight[a][1]):
            arrived.append((j, in_flight.pop(j)[0]))
            idle.append(j)

    while len(lags) < updates:
        training.clear()
        receive(clock)
        dispatch()
        while not arrived:
            clock = min(t for _, t in in_flight.values())
            receive(clock)
            dispatch()
        _, v = arrived.pop(0)
        training.append(v)
        dispatch()
        lags.append(version - v)
        version += 1
        clock += update_time * rng.uniform(0.5, 1.5)
        assert len(arrived) <= n_actors
    return lags


@pytest.mark.parametrize("n_actors", [2, 3, 5])
def test_the_staleness_bound_holds_on_random_schedules(n_actors: int) -> None:
    rng = np.random.default_rng(n_actors)
    for _ in range(20):
        durations = list(rng.uniform(0.1, 5.0, n_actors))
        update_time = rng.uniform(0.0, 3.0)
        for k in (0, 1, 2, 3):
            lags = _simulate(n_actors, k, durations, 200, rng, update_time)
            assert max(lags) <= k, (k, durations)
            if k == 0:
                assert lags == [0] * 200  # one rollout at a time: synchronous
        # unbounded: at most one queued rollout per actor keeps the lag bounded by the queue, even when the
        # learner is far slower than the actors
        assert max(_simulate(n_actors, None, durations, 200, rng, update_time=20.0)) <= 2 * n_actors
    slow = [1.0] * (n_actors - 1) + [10.0]
    assert max(_simulate(n_actors, None, slow, 200, rng)) > 3  # unbounded: the slow actor lags far behind


@pytest.mark.parametrize("temperatures", [[1.0, 1.0], [1.0, 2.0]], ids=["untempered", "tempered"])
def test_log_mu_of_a_rollout_is_the_acting_weights_distribution(temperatures: List[float]) -> None:
    """The actor acts with the weights and observation statistics it was sent: log mu stored with each step is the
    log-prob of that distribution (tempered where its environment's temperature is not 1) on the raw observation
    normalised with those statistics; older weights are ignored."""
    learner = tiny_model(LaggedPPO, n_envs=2)
    with th.no_grad():
        for p in learner.policy.parameters():
            p.add_(th.randn_like(p) * 0.3)  # not the initial parameters
    obs_rms = RunningMeanStd(shape=(4,))
    obs_rms.mean, obs_rms.var = np.array([0.1, -0.2, 0.05, 0.3]), np.array([0.5, 2.0, 0.01, 1.5])
    weights = Weights(3, {k: t.detach().clone() for k, t in module_tensors(learner.policy).items()}, obs_rms)
    normalizer = {"norm_obs": True, "norm_obs_keys": None, "clip_obs": 10.0, "epsilon": 1e-8}
    actor = RolloutActor(0, partial(make_env, "CartPole-v1", n_envs=2), 5, _acting_copy(learner.policy), 32,
                         np.array(temperatures), normalizer)
    rollout = actor.rollout(weights)
    assert rollout.version == 3 and rollout.log_probs.shape == (32, 2) and rollout.observations.shape == (32, 2, 4)
    stale = Weights(2, {k: th.zeros_like(t) for k, t in weights.tensors.items()}, RunningMeanStd(shape=(4,)))
    assert actor.rollout(stale).version == 3  # not newer: ignored

    raw = rollout.observations.reshape(-1, 4)
    normalised = np.clip((raw - obs_rms.mean) / np.sqrt(obs_rms.var + 1e-8), -10, 10).astype(np.float32)
    with th.no_grad():
        dist = learner.policy.get_distribution(th.as_tensor(normalised))
        if temperatures != [1.0, 1.0]:
            dist = temper(dist, th.as_tensor(np.tile(temperatures, 32), dtype=th.float32))
        log_mu = dist.log_prob(th.as_tensor(rollout.actions.reshape(-1))).numpy()
    np.testing.assert_allclose(rollout.log_probs.reshape(-1), log_mu, rtol=0, atol=1e-5)
    assert rollout.episode_starts[0].all() and rollout.rewards.dtype == np.float32


def _main(argv: List[str], capsys) -> tuple:
    import train

    try:
        code = train.main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


REFUSED = [
    (["--actors", "2", "--policy-lag", "2"], "--actors 2 with --policy-lag 2"),
    (["--actors", "2", "--lag-mode", "uniform"], "--actors 2 with --lag-mode uniform"),
    (["--actors", "2", "--seeds", "1", "2"], "--actors 2 with --seeds"),
    (["--actors", "0"], "--actors 0"),
    (["--actors", "2", "--max-staleness", "-1"], "--max-staleness -1"),
    (["--max-staleness", "1"], "--max-staleness 1 needs asynchronous actors"),
    (["--address", "auto"], "--address auto needs asynchronous actors"),
    (["--actors", "2", "--env", "Pendulum-v1", "-params", "use_sde:true"],
     "use_sde=True is not supported with asynchronous actors"),
]


@pytest.mark.parametrize("argv, named", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_combinations_that_make_no_sense_are_refused(tmp_path, capsys, argv: List[str], named: str) -> None:
    code, err = _main(["--algo", "ppo", "--env", "CartPole-v1", "-f", str(tmp_path / "logs"),
                       *argv], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], err
    assert not (tmp_path / "logs").exists()


def test_missing_ray_is_one_line_naming_the_extra(tmp_path) -> None:
    fake = tmp_path / "fake" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": f"{fake.parent}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "--algo", "ppo", "--env", "CartPole-v1",
                          "--actors", "2", "-f", str(tmp_path / "logs")], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--actors 2 needs Ray: pip install -e '.[cluster]'" in lines[0], res.stderr
    assert not (tmp_path / "logs").exists()


def test_the_lag_history_is_written_before_every_checkpoint_and_a_resume_cuts_it_there(tmp_path) -> None:
    """train.py writes async.json (atomically) right before every checkpoint, the final one too, so a run killed
    hard keeps its lag history up to its checkpoint; a resume cuts a longer history back to the checkpoint and
    refuses a shorter one (it could not continue where training does). A synchronous model stands in for the
    learner here: the hook and the files are train.py's, whatever fills the history."""
    import train
    from agents.asynchronous import LagHistory
    from agents.checkpoint import read_checkpoint

    args = train.parse_args(["--algo", "ppo", "--env", "CartPole-v1", "-n", "512", "--seed", "1", "--actors", "2",
                             "--save-freq", "128", "-f", str(tmp_path), "--verbose", "0", *TINY])
    (run,) = train.new_runs(args)
    train.start_logs(run)
    checkpoint = run.run_dir / "checkpoint.pkl"
    history, seen = LagHistory(), []

    def on_checkpoint(checkpointed: "train.Run") -> None:
        on_disk = read_checkpoint(checkpoint)["num_timesteps"] if checkpoint.is_file() else None
        seen.append((checkpointed.model.num_timesteps, on_disk))
        history.lags.append(len(history.lags) % 3)  # one lag per rollout trained so far
        history.actors.append(len(history.actors) % 2)
        train.write_lag_history(checkpointed, history)

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert train.train([run], on_checkpoint=on_checkpoint) == 0
    finally:  # train() stops at a boundary on Ctrl-C; pytest's own handlers come back
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    # every 128 steps (one update) and at the end, each time before the checkpoint is replaced
    assert seen == [(128, None), (256, 128), (384, 256), (512, 384)]
    written = json.loads((run.run_dir / "async.json").read_text())
    assert written["n_actors"] == 2 and written["lags"] == [0, 1, 2, 0] and written["lag_counts"] == {"0": 2, "1": 1,
                                                                                                     "2": 1}
    assert sorted(p.name for p in run.run_dir.iterdir() if p.name.startswith(".")) == []  # no temporary file left

    history.lags.append(2)  # a run killed after async.json, before its checkpoint: one rollout more
    history.actors.append(1)
    train.write_lag_history(run, history)
    resumed = train.read_lag_history(run)
    assert resumed.lags == [0, 1, 2, 0] and resumed.actors == [0, 1, 0, 1]  # cut at the checkpoint's 4 updates
    del history.lags[3:], history.actors[3:]  # fewer rollouts than the checkpoint trained: refused
    train.write_lag_history(run, history)
    with pytest.raises(train.UsageError, match="async.json holds the lags of 3 rollouts, the checkpoint's 4"):
        train.read_lag_history(run)
    (run.run_dir / "async.json").unlink()
    with pytest.raises(train.UsageError, match="async.json is missing or damaged"):
        train.read_lag_history(run)
    run.env.close()


# --------------------------------------------------------------------------------------------------- with Ray
def _train(args: List[str], mark: str) -> subprocess.Popen:
    """train.py in a subprocess whose every descendant (Ray's processes too) carries ``MARK=mark``."""
    env = {**os.environ, MARK: mark, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _marked(mark: str) -> List[int]:
    """Processes whose environment carries ``MARK=mark``."""
    needle = f"{MARK}={mark}".encode()
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    out.append(int(proc.name))
            except OSError:
                continue
    return out


@pytest.fixture
def marks():
    """Marks handed to :func:`_train`; whatever still carries one after the test (a failed test) is killed."""
    given: List[str] = []
    yield given
    for mark in given:
        for pid in _marked(mark):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _assert_no_orphans(mark: str) -> None:
    deadline = time.time() + 15
    while _marked(mark) and time.time() < deadline:
        time.sleep(0.5)
    assert _marked(mark) == [], "processes left behind after the run"


def _run(args: List[str], marks: List[str], timeout: int = 240) -> tuple:
    mark = uuid.uuid4().hex
    marks.append(mark)
    proc = _train(args, mark)
    out, err = proc.communicate(timeout=timeout)
    _assert_no_orphans(mark)
    return proc.returncode, out, err


def _lags_logged(run: Path) -> List[float]:
    from tbparse import SummaryReader

    scalars = SummaryReader(str(run)).scalars
    return scalars[scalars.tag == "rollout/policy_lag"].sort_values("step")["value"].tolist()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds left-over processes through /proc")
def test_async_run_measures_the_lag_honours_the_bound_and_leaves_nothing_behind(tmp_path, marks) -> None:
    """Two actors, the second slowed down, --max-staleness 1: the run completes, every update logs its measured
    lag (> 0 for the slowed actor's rollouts, never above 1), the record carries the distribution, and no process
    outlives the run."""
    from tbparse import SummaryReader

    from studies.records import build_record

    code, out, err = _run(["--algo", "ppo", "--env", "CartPole-v1", "-n", "1280", "--seed", "1", "--actors", "2",
                           "--max-staleness", "1", "--actor-delay", "0.3", "-f", str(tmp_path), "--verbose", "0",
                           *TINY], marks)
    assert code == 0, err
    run = tmp_path / "CartPole-v1_ppo_actors2-stale1_s1"
    assert (run / "model.zip").is_file() and (run / "checkpoint.pkl").is_file()
    summary = json.loads((run / "async.json").read_text())
    assert len(summary["lags"]) == 10 and sorted(set(summary["actors"])) == [0, 1]
    assert max(summary["lags"]) == 1 and summary["staleness_waits"] > 0
    assert 1 in [lag for lag, actor in zip(summary["lags"], summary["actors"]) if actor == 1]  # the slowed one
    assert _lags_logged(run) == [float(v) for v in summary["lags"]]
    assert "rollout/policy_lag_dist" in set(SummaryReader(str(run)).histograms["tag"])
    record = build_record(run, "test", {}, [])
    assert record["meta"]["path"] == "async" and record["meta"]["async"]["lag_counts"] == summary["lag_counts"]
    assert record["updates"]["rollout/policy_lag"] == [float(v) for v in summary["lags"]]


@pytest.mark.slow
def test_a_slowed_actor_lags_several_versions_without_a_bound(tmp_path, marks) -> None:
    code, _, err = _run(["--algo", "decoupled", "--env", "CartPole-v1", "-n", "2560", "--seed", "2", "--actors",
                         "2", "--actor-delay", "0.5", "-f", str(tmp_path), "--verbose", "0", *TINY], marks)
    assert code == 0, err
    run = tmp_path / "CartPole-v1_decoupled_actors2_s2"
    summary = json.loads((run / "async.json").read_text())
    slowed = [lag for lag, actor in zip(summary["lags"], summary["actors"]) if actor == 1]
    assert slowed and max(slowed) > 1 and summary["staleness_waits"] == 0
    assert _lags_logged(run) == [float(v) for v in summary["lags"]]


@pytest.mark.slow
def test_ctrl_c_saves_exits_130_and_resume_continues(tmp_path, marks) -> None:
    """SIGINT: checkpoint and model.zip written, actors stopped, exit 130, nothing left behind; --resume restarts
    the actors from the saved weights and finishes the run."""
    mark = uuid.uuid4().hex
    marks.append(mark)
    proc = _train(["--algo", "dualclip", "--env", "CartPole-v1", "-n", "12800", "--seed", "3", "--actors", "2",
                   "-f", str(tmp_path), "--verbose", "0", *TINY], mark)
    run = tmp_path / "CartPole-v1_dualclip_actors2_s3"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        csv = run / "progress.csv"
        if csv.is_file() and len(csv.read_text().splitlines()) >= 3:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopped by SIGINT" in err
    for name in ("checkpoint.pkl", "model.zip", "interrupted.txt", "async.json"):
        assert (run / name).is_file(), name
    _assert_no_orphans(mark)
    stopped = len(json.loads((run / "async.json").read_text())["lags"])
    assert stopped >= 2

    code, _, err = _run(["--resume", str(run)], marks)
    assert code == 0, err
    assert not (run / "interrupted.txt").exists()
    summary = json.loads((run / "async.json").read_text())
    assert len(summary["lags"]) == 100  # 12800 / 128 updates, before and after the stop
    assert _lags_logged(run) == [float(v) for v in summary["lags"]]


@pytest.mark.slow
def test_a_hard_killed_run_keeps_its_lag_history_and_resume_continues_it(tmp_path, marks) -> None:
    """SIGKILL (no handler runs, async.json is not written at the end): the history on disk reaches the checkpoint,
    and --resume continues it from there, consistent with the lags the updates logged."""
    from agents.checkpoint import read_checkpoint

    mark = uuid.uuid4().hex
    marks.append(mark)
    proc = _train(["--algo", "ppo", "--env", "CartPole-v1", "-n", "6400", "--seed", "5", "--actors", "2",
                   "--save-freq", "256", "-f", str(tmp_path), "--verbose", "0", *TINY], mark)
    run = tmp_path / "CartPole-v1_ppo_actors2_s5"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (run / "checkpoint.pkl").is_file() and read_checkpoint(run / "checkpoint.pkl")["num_timesteps"] >= 512:
            break
        time.sleep(0.2)
    proc.kill()
    proc.communicate(timeout=60)
    for pid in _marked(mark):  # Ray's processes of the killed run
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    trained = read_checkpoint(run / "checkpoint.pkl")["num_timesteps"] // 128
    kept = json.loads((run / "async.json").read_text())
    assert 4 <= trained <= len(kept["lags"]) and len(kept["actors"]) == len(kept["lags"])

    code, _, err = _run(["--resume", str(run)], marks)
    assert code == 0, err
    summary = json.loads((run / "async.json").read_text())
    assert len(summary["lags"]) == len(summary["actors"]) == 50  # 6400 / 128 updates, before and after the kill
    assert summary["lags"][:trained] == kept["lags"][:trained]
    assert summary["actors"][:trained] == kept["actors"][:trained]
    assert _lags_logged(run) == [float(v) for v in summary["lags"]]


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_leaves_nothing_behind(tmp_path, marks) -> None:
    """One actor that takes 5 s per rollout: both signals land while the learner waits for it (1.5 s apart: two
    signals that arrive while Python waits in Ray's C++ code count once); the second exits at once (130) and takes
    Ray's processes with it."""
    mark = uuid.uuid4().hex
    marks.append(mark)
    proc = _train(["--algo", "ppo", "--env", "CartPole-v1", "-n", "12800", "--seed", "4", "--actors", "1",
                   "--actor-delay", "5", "-f", str(tmp_path), "--verbose", "0", *TINY], mark)
    csv = tmp_path / "CartPole-v1_ppo_actors1_s4" / "progress.csv"
    ctrl_c_twice(proc, lambda: csv.is_file() and len(csv.read_text().splitlines()) >= 2, gap=1.5, wait=180)
    _assert_no_orphans(mark)


@pytest.mark.slow
def test_a_rollout_returned_through_ray_carries_the_acting_log_mu(monkeypatch) -> None:
    """Two actors on train.py's local Ray instance: each returns its rollout with the version it was sent, and log
    mu is the acting weights' log-prob of the stored actions. The instance's workers run at the caller's priority,
    not Ray's default nice 15 (cli/ray_session.py WORKER_NICENESS: at nice 15 actors starve beside other work)."""
    import ray

    from agents.asynchronous import AsyncRollouts
    from cli.ray_session import ray_session

    # absent while the session starts (ray_session sets it, as for train.py); monkeypatch restores it afterwards
    monkeypatch.setenv("RAY_worker_niceness", "15")
    monkeypatch.delenv("RAY_worker_niceness")
    learner = tiny_model(LaggedPPO, n_envs=2)
    rollouts = AsyncRollouts(learner, partial(make_env, "CartPole-v1", n_envs=2), 2, seed=0)

    def niceness() -> int:
        return os.nice(0)

    with ray_session(None, 2):
        worker_niceness = ray.get(ray.remote(num_cpus=0)(niceness).remote())
        rollouts.start()
        try:
            first = rollouts.next_rollout()
        finally:
            rollouts.close()
    assert worker_niceness == os.nice(0)
    assert first.version == 0 and first.actor in (0, 1)
    with th.no_grad():
        obs = th.as_tensor(first.observations.reshape(-1, 4))
        log_mu = learner.policy.get_distribution(obs).log_prob(th.as_tensor(first.actions.reshape(-1))).numpy()
    np.testing.assert_allclose(first.log_probs.reshape(-1), log_mu, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_real_runs_and_their_simulated_twins_side_by_side_in_the_report(tmp_path) -> None:
    """A tiny async_validation: two asynchronous CartPole runs (2 actors) through the sweep, their twins replaying
    the pooled measured lags (the grid reads them from the records), and the report's side-by-side section: the
    twin is matched to its real cell, both rows, the comparison and the lag figure are there."""
    import yaml

    from tests.helpers import run_script

    tiny = {"n_envs": 2, "n_steps": 64, "batch_size": 64, "n_epochs": 2, "policy_kwargs": {"net_arch": [16]},
            "eval_freq": 256, "eval_episodes": 2}
    roots = ["--runs-root", str(tmp_path / "runs"), "--results-root", str(tmp_path / "results")]
    real = tmp_path / "real.yml"
    real.write_text(yaml.safe_dump({"study": "av", "settings": tiny, "envs": {"CartPole-v1": {"n_timesteps": 768}},
                                    "grid": {"algo": ["ppo"], "actors": [2], "seed": [1, 2]}}))
    res = run_script("sweep.py", [str(real), "--no-report", *roots], timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    records = tmp_path / "results" / "av" / "runs"
    assert sorted(p.name for p in records.glob("*.json")) == ["CartPole-v1_ppo_lag0_actors2_s1.json",
                                                             "CartPole-v1_ppo_lag0_actors2_s2.json"]
    pooled = np.zeros(0)
    for path in records.glob("*.json"):
        counts = {int(k): v for k, v in json.loads(path.read_text())["meta"]["async"]["lag_counts"].items()}
        run = np.array([counts.get(lag, 0) for lag in range(max(counts) + 1)], dtype=float)
        pooled = np.pad(pooled, (0, max(0, len(run) - len(pooled)))) + np.pad(run, (0, max(0, len(pooled) - len(run))))
    twin = tmp_path / "twin.yml"
    twin.write_text(yaml.safe_dump({"study": "av", "settings": {**tiny, "lag_mode": "empirical"},
                                    "envs": {"CartPole-v1": {"n_timesteps": 768}},
                                    "grid": {"algo": ["ppo"], "seed": [1, 2], "lag_weights_from": [
                                        str(records / "CartPole-v1_ppo_lag0_actors2_s*.json")]}}))
    res = run_script("sweep.py", [str(twin), "--no-batch", *roots], timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    twins = sorted(p.name for p in records.glob("*empirical*.json"))
    assert len(twins) == 2
    config = json.loads((records / twins[0]).read_text())["meta"]["config"]
    np.testing.assert_allclose(config["lag_weights"], pooled / pooled.sum())
    summary = (tmp_path / "results" / "av" / "summary.md").read_text()
    section = summary.split("## Real asynchronous actors against their simulated twins")[1].split("\n## ")[0]
    assert "| CartPole-v1 | ppo | 2 | real | 1, 2 |" in section
    assert "| CartPole-v1 | ppo | 2 | simulated | 1, 2 |" in section and "not run yet" not in section
    assert "| CartPole-v1 | ppo | 2 | 2 / 2 |" in section and "match no real cell" not in section
    assert (tmp_path / "results" / "av" / "figures" / "async_lag_distributions.png").is_file()
