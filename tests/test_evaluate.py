"""evaluate.py end to end: a tiny CartPole run trained by train.py, evaluated from its folder and its model.zip."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.helpers import run

TINY = ["-n", "256", "--policy-lag", "2", "--seed", "3", "--verbose", "0", "-params", "n_steps:64", "batch_size:64",
        "n_envs:1", "policy_kwargs:{net_arch: [16]}"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    logs = tmp_path_factory.mktemp("logs")
    proc = run("train.py", "--algo", "dualclip", "--env", "CartPole-v1", "-f", logs, *TINY)
    assert proc.returncode == 0, proc.stderr
    (folder,) = logs.iterdir()
    assert (folder / "model.zip").is_file() and (folder / "config.yml").is_file()
    return folder


def eval_files(folder: Path) -> list:
    return sorted(folder.glob("eval_*.json"))


def assert_one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("evaluate.py: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_run_folder_json(run_dir):
    before = eval_files(run_dir)
    proc = run("evaluate.py", run_dir, "--episodes", "3", "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    (new,) = sorted(set(eval_files(run_dir)) - set(before))
    record = json.loads(new.read_text())
    assert record["env_id"] == record["trained_env_id"] == "CartPole-v1"
    assert record["algo"] == "dualclip" and record["model_timesteps"] == 256
    assert record["episodes"] == 3 and record["seed"] == 5 and record["deterministic"] is True
    assert len(record["returns"]) == len(record["lengths"]) == 3
    # CartPole pays 1 per step: the returns are the Monitor's whole-episode sums
    assert record["returns"] == [float(n) for n in record["lengths"]]
    assert record["mean"] == pytest.approx(sum(record["returns"]) / 3)
    assert record["std"] >= 0 and record["min"] <= record["mean"] <= record["max"]
    assert {"stable-baselines3", "torch", "gymnasium"} <= set(record["versions"])
    assert record["videos"] == [] and record["normalize"] is False
    assert f"{record['mean']:.2f} +- {record['std']:.2f}" in proc.stdout and str(new) in proc.stdout


def test_model_zip_never_overwrites_and_is_reproducible(run_dir):
    before = eval_files(run_dir)
    args = ("evaluate.py", run_dir / "model.zip", "--episodes", "2", "--seed", "7", "--stochastic")
    first, second = run(*args), run(*args)  # a file of the same second would get a _2 suffix
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    new = sorted(set(eval_files(run_dir)) - set(before))
    assert len(new) == 2
    a, b = (json.loads(p.read_text()) for p in new)
    assert a["deterministic"] is False and a["episodes"] == 2
    assert a["returns"] == b["returns"]  # the seed fixes env and action sampling


def test_missing_path(tmp_path):
    assert_one_line_error(run("evaluate.py", tmp_path / "nope"), "nope", "train.py")


def test_folder_without_config(tmp_path, run_dir):
    shutil.copy(run_dir / "model.zip", tmp_path / "model.zip")
    assert_one_line_error(run("evaluate.py", tmp_path), "config.yml")
    assert_one_line_error(run("evaluate.py", tmp_path / "model.zip"), "config.yml")


@pytest.fixture
def fake_run(tmp_path, run_dir) -> Path:
    for name in ("config.yml", "args.yml"):
        shutil.copy(run_dir / name, tmp_path / name)
    return tmp_path


def test_not_a_zip(fake_run):
    (fake_run / "model.zip").write_text("not a model\n")
    assert_one_line_error(run("evaluate.py", fake_run), "model.zip", "zip")


def test_truncated_zip(fake_run, run_dir):
    data = (run_dir / "model.zip").read_bytes()
    (fake_run / "model.zip").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("evaluate.py", fake_run), "model.zip", "truncated")


def test_corrupt_member(fake_run, run_dir):
    """Central directory intact, a member's bytes damaged: caught by the CRC check."""
    data = bytearray((run_dir / "model.zip").read_bytes())
    with zipfile.ZipFile(run_dir / "model.zip") as archive:
        info = archive.getinfo("data")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 10 : start + 20] = bytes(10)
    (fake_run / "model.zip").write_bytes(bytes(data))
    assert_one_line_error(run("evaluate.py", fake_run), "model.zip")


def test_zip_without_model(fake_run):
    with zipfile.ZipFile(fake_run / "model.zip", "w") as archive:
        archive.writestr("hello.txt", "hi")
    assert_one_line_error(run("evaluate.py", fake_run), "stable-baselines3")


def test_mismatched_env(run_dir):
    before = eval_files(run_dir)
    proc = run("evaluate.py", run_dir, "--env", "Pendulum-v1", "--episodes", "1")
    assert_one_line_error(proc, "Pendulum-v1", "CartPole-v1", "observation space")
    assert eval_files(run_dir) == before


def test_unknown_env(run_dir):
    assert_one_line_error(run("evaluate.py", run_dir, "--env", "CartPol-v1"), "CartPol-v1", "CartPole-v1")


@pytest.mark.parametrize("args", [["--episodes", "0"], ["--deterministic", "--stochastic"], ["--seed", "-1"]])
def test_bad_flags(run_dir, args):
    proc = run("evaluate.py", run_dir, *args)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow  # encodes MP4s; the default suite stays near 5 minutes
def test_video(run_dir, tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason="--video needs imageio-ffmpeg")
    pytest.importorskip("pygame", reason="CartPole renders rgb_array frames with pygame")
    videos = tmp_path / "videos"
    proc = run("evaluate.py", run_dir, "--episodes", "2", "--seed", "1", "--video", videos)
    if proc.returncode == 2 and "cannot render" in proc.stderr:
        pytest.skip(f"rendering unavailable here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    files = sorted(videos.glob("*.mp4"))
    assert len(files) == 2 and all(f.stat().st_size > 1000 for f in files)
    written = proc.stdout.strip().splitlines()[-1]
    assert written.startswith("written: ")
    record = json.loads(Path(written[len("written: ") :]).read_text())
    assert sorted(record["videos"]) == [str(f) for f in files]

    import imageio.v2 as imageio

    for path, length in zip(record["videos"], record["lengths"]):
        reader = imageio.get_reader(path)
        assert reader.count_frames() == length  # reset frame + one per step, less the terminal frame
        assert reader.get_data(0).shape == (400, 600, 3)
        reader.close()


@pytest.fixture(scope="module")
def normalized_run(tmp_path_factory) -> Path:
    logs = tmp_path_factory.mktemp("norm")
    proc = run("train.py", "--algo", "ppo", "--env", "Pendulum-v1", "-f", logs, "-n", "128", "--seed", "0",
               "--verbose", "0", "-params", "normalize:true", "n_envs:1", "n_steps:64", "batch_size:64",
               "policy_kwargs:{net_arch: [16]}")
    assert proc.returncode == 0, proc.stderr
    (folder,) = logs.iterdir()
    assert (folder / "vecnormalize.pkl").is_file()
    return folder


def test_vecnormalize_loaded_and_rewards_raw(normalized_run):
    proc = run("evaluate.py", normalized_run, "--episodes", "1", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    (path,) = normalized_run.glob("eval_*.json")
    record = json.loads(path.read_text())
    assert record["normalize"] is True and record["lengths"] == [200]
    assert record["returns"][0] < -100  # raw Pendulum reward (-16.3..0 per step), not the normalised one


def test_missing_vecnormalize(normalized_run, tmp_path):
    for name in ("config.yml", "args.yml", "model.zip"):
        shutil.copy(normalized_run / name, tmp_path / name)
    assert_one_line_error(run("evaluate.py", tmp_path), "vecnormalize.pkl")


@pytest.mark.slow
def test_mujoco_video_headless(tmp_path):
    """HalfCheetah (normalize on in the YAML) rendered off-screen through EGL."""
    pytest.importorskip("mujoco", reason="MuJoCo extra not installed")
    pytest.importorskip("imageio_ffmpeg", reason="--video needs imageio-ffmpeg")
    proc = run("train.py", "--algo", "dualclip", "--env", "HalfCheetah-v4", "-f", tmp_path / "logs", "-n", "128",
               "--seed", "0", "--verbose", "0", "-params", "n_steps:64", "batch_size:64")
    assert proc.returncode == 0, proc.stderr
    (folder,) = (tmp_path / "logs").iterdir()
    proc = run("evaluate.py", folder, "--episodes", "1", "--seed", "0", "--video", tmp_path / "videos")
    if proc.returncode == 2 and "cannot render" in proc.stderr:
        pytest.skip(f"rendering unavailable here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    (video,) = (tmp_path / "videos").glob("*.mp4")
    assert video.stat().st_size > 10_000
