"""Evaluate a trained run: ``python evaluate.py logs/CartPole-v1_dualclip_lag2_s1 --episodes 10``.

Reads the run folder that ``train.py`` wrote (or the folder of a given ``.zip``: ``model.zip`` or
``best/best_model.zip``) for the algorithm, env id and env settings, rebuilds one environment the way training
built it (Atari preprocessing and frame stack, ``vecnormalize.pkl`` frozen with raw rewards), plays whole
episodes and reports the mean +- std and every episode's return. For Atari the return is the game score of
whole games (the ``Monitor`` sits under the ``AtariWrapper``: unclipped rewards, all lives) and the length is
counted in emulator frames. The figures go to ``<model folder>/eval_<episodes>ep_<time>.json`` (never
overwritten); ``--video DIR`` also writes one MP4 per episode (needs imageio + imageio-ffmpeg, and pygame for
classic control; MuJoCo renders headless through EGL).

Only the model given on the command line (and the run's ``vecnormalize.pkl``) is loaded; both are pickles, so
load models from trusted sources only. Bad input prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

#: Keys of model.zip's ``data`` that are pickled callables and not needed to act: replaced instead of unpickled
#: (as rl-zoo3's enjoy.py does), so loading does not depend on the training code's schedule classes.
CUSTOM_OBJECTS = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0}


class EvalError(Exception):
    """Bad input: reported as one line on stderr, exit code 2."""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from cli.common import OneLineParser

    p = OneLineParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="run folder written by train.py, or a model .zip inside one")
    p.add_argument("--episodes", type=int, default=10, help="whole episodes to play (default 10)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--deterministic", dest="deterministic", action="store_true", default=None,
        help="greedy actions (default, except Atari: stochastic, as rl-zoo3)",
    )
    mode.add_argument("--stochastic", dest="deterministic", action="store_false", help="sample actions")
    p.add_argument("--seed", type=int, default=None, help="seed of env and sampling (default: drawn, recorded)")
    p.add_argument("--video", metavar="DIR", default=None, help="write one MP4 per episode into DIR")
    p.add_argument("--env", default=None, help="evaluate on this env id instead of the training one")
    args = p.parse_args(argv)
    if args.episodes <= 0:
        p.error(f"--episodes {args.episodes}: the number of episodes must be a positive integer, e.g. --episodes 10")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        p.error(f"--seed {args.seed}: the seed must be an integer in [0, 2**32), e.g. --seed 0")
    return args


# ------------------------------------------------------------------------------------------------ the run
def locate(path_arg: str) -> Tuple[Path, Path]:
    """(model zip, run folder holding config.yml/args.yml) for a run folder or a model file."""
    path = Path(path_arg)
    if not path.exists():
        raise EvalError(f"{path_arg}: no such file or folder: pass a run folder written by train.py or its model.zip")
    if path.is_dir():
        model = path / "model.zip"
        if not model.is_file():
            raise EvalError(f"{path_arg}: no model.zip in this folder: pass a finished run folder or a model .zip")
        candidates = [path]
    else:
        model = path
        candidates = [path.parent, path.parent.parent]  # run/model.zip or run/best/best_model.zip
    for folder in candidates:
        if (folder / "config.yml").is_file() and (folder / "args.yml").is_file():
            return model, folder
    raise EvalError(
        f"{path_arg}: no config.yml and args.yml next to the model: evaluate a run folder written by train.py"
    )


def read_run(run_dir: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(config.yml, args.yml) of a run folder, checked for what evaluation needs."""
    from cli import run_files

    try:
        files = run_files.read(run_dir)
    except run_files.RunFilesError as exc:
        raise EvalError(f"{exc}: re-create the run with train.py") from exc
    for key in ("algo", "env"):
        if not isinstance(files.args.get(key), str):
            raise EvalError(f"{run_dir / run_files.ARGS}: no {key!r} entry: re-create the run with train.py")
    return files.config, files.args


def check_zip(model_path: Path) -> None:
    """A readable SB3 archive: a zip whose members pass their CRC check and hold ``data``."""
    try:
        with zipfile.ZipFile(model_path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise EvalError(
            f"{model_path}: not a complete zip file ({exc}; truncated copy?): point at the model.zip train.py saved"
        ) from exc
    if bad is not None:
        raise EvalError(f"{model_path}: member {bad!r} is corrupt (truncated or damaged copy?): copy the model again")
    if "data" not in names:
        raise EvalError(f"{model_path}: a zip but not a stable-baselines3 model (no 'data'): point at model.zip")


def load_model(cls: Any, model_path: Path) -> Any:
    try:
        return cls.load(model_path, device="cpu", custom_objects=CUSTOM_OBJECTS)
    except Exception as exc:  # noqa: BLE001 - any failure to read the archive is the user's file, not a bug here
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise EvalError(f"{model_path}: cannot load the {cls.__name__} model ({first}): re-train or copy it again")


def space_str(space: Any) -> str:
    shape = getattr(space, "shape", None)
    n = getattr(space, "n", None)
    if n is not None:
        return f"{type(space).__name__}({n})"
    return f"{type(space).__name__}(shape={shape}, dtype={getattr(space, 'dtype', None)})"


def check_spaces(model: Any, venv: Any, env_id: str, trained_on: str) -> None:
    for what, mine, theirs in (
        ("observation", model.observation_space, venv.observation_space),
        ("action", model.action_space, venv.action_space),
    ):
        if mine != theirs:
            raise EvalError(
                f"--env {env_id}: its {what} space {space_str(theirs)} does not match the model's {space_str(mine)}"
                f": evaluate on {trained_on} (omit --env) or on an env with the same spaces"
            )


# ------------------------------------------------------------------------------------------------- video
def episode_video_class() -> Any:
    """The recorder class; defined lazily so that ``--help`` and input errors need no SB3 import."""
    from stable_baselines3.common.vec_env import VecEnvWrapper

    class VecEpisodeVideo(VecEnvWrapper):
        """Records env 0 of a 1-env VecEnv into one MP4 per *whole* episode (ended by Monitor's ``episode`` info,
        so an Atari video is a whole game, not one life), for the first ``episodes`` episodes. Frames stream to
        the encoder, not into memory. The last frame of an episode is not shown: the VecEnv has already reset
        when ``step`` returns.
        """

        def __init__(self, venv: Any, folder: Path, prefix: str, fps: float, episodes: int) -> None:
            import imageio.v2 as imageio

            super().__init__(venv)
            self.folder, self.prefix, self.fps, self.episodes = folder, prefix, fps, episodes
            self._imageio = imageio
            self._writer: Any = None
            self.files: List[str] = []

        def _capture(self) -> None:
            if self._writer is None:
                if len(self.files) >= self.episodes:
                    return
                path = self.folder / f"{self.prefix}_ep{len(self.files) + 1:03d}.mp4"
                # even frame sizes for yuv420p; ffmpeg quiet unless it fails
                self._writer = self._imageio.get_writer(
                    path, fps=self.fps, macro_block_size=2, ffmpeg_log_level="error"
                )
                self.files.append(str(path))
            self._writer.append_data(self.venv.get_images()[0])

        def _finish(self) -> None:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

        def reset(self) -> Any:
            obs = self.venv.reset()
            self._finish()  # a reset mid-episode ends that video (evaluate_policy resets once, at the start)
            self._capture()
            return obs

        def step_wait(self) -> Any:
            obs, rewards, dones, infos = self.venv.step_wait()
            if dones[0] and "episode" in infos[0]:
                self._finish()
            self._capture()
            return obs, rewards, dones, infos

        def close(self) -> None:
            self._finish()
            self.venv.close()

    return VecEpisodeVideo


def video_support() -> None:
    """Raise EvalError naming the package to install when MP4s cannot be written."""
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError as exc:
        raise EvalError(f"--video needs imageio and imageio-ffmpeg: pip install imageio imageio-ffmpeg ({exc})")


def video_fps(venv: Any, atari: bool) -> float:
    if atari:
        return 60.0 / 4  # the console runs at 60 Hz; one frame is rendered per agent step of 4 frames
    metadata = venv.get_attr("metadata", indices=0)[0] or {}
    return float(metadata.get("render_fps") or 30)


def probe_render(venv: Any, env_id: str, seed: int) -> None:
    """Render once so that a missing renderer (pygame, EGL) is one line, not a traceback mid-evaluation."""
    try:
        venv.reset()
        frame = venv.get_images()[0]
    except Exception as exc:  # noqa: BLE001 - renderers fail with many exception types
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        hint = "pip install pygame" if "pygame" in first else "MUJOCO_GL=egl (or osmesa) for MuJoCo"
        raise EvalError(f"--video: {env_id} cannot render an rgb_array frame ({first}): {hint}") from exc
    if frame is None:
        raise EvalError(f"--video: {env_id} returned no frame in rgb_array mode: this env cannot be recorded")
    venv.seed(seed)  # the probe consumed the seeded reset: seed the next one, so results match a run without video


# -------------------------------------------------------------------------------------------------- output
def versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("stable-baselines3", "torch", "gymnasium", "numpy", "ale-py", "mujoco", "minatar"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def write_json(folder: Path, episodes: int, record: Dict[str, Any]) -> Path:
    """``eval_<episodes>ep_<time>[_<n>].json`` in ``folder``, created exclusively (never overwrites)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"eval_{episodes}ep_{stamp}"
    for n in range(1, 1000):
        path = folder / (f"{base}.json" if n == 1 else f"{base}_{n}.json")
        try:
            with open(path, "x") as f:
                json.dump(record, f, indent=2)
                f.write("\n")
            return path
        except FileExistsError:
            continue
    raise EvalError(f"{folder}: too many evaluation files named {base}_*.json: move some away")


# ---------------------------------------------------------------------------------------------------- main
def evaluate(args: argparse.Namespace) -> Dict[str, Any]:
    model_path, run_dir = locate(args.path)
    config, run_args = read_run(run_dir)
    check_zip(model_path)  # before the slow imports: a bad file is reported at once

    if args.video and not os.environ.get("DISPLAY"):  # headless: render off-screen, before any renderer loads
        os.environ.setdefault("MUJOCO_GL", "egl")  # MuJoCo through EGL; MUJOCO_GL=osmesa where EGL is missing
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame (classic control) without a window system
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    if args.video:
        video_support()

    import numpy as np
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.utils import set_random_seed
    from stable_baselines3.common.vec_env import VecNormalize

    from agents import ALGOS
    from envs import EnvError, check_env_id, is_atari, is_minatar, make_env

    if "OMP_NUM_THREADS" not in os.environ:
        # One observation at a time: intra-op threads only add overhead, and on a busy machine OpenMP's spinning
        # threads can slow a batch-1 forward pass down badly.
        import torch as th

        th.set_num_threads(1)

    algo, trained_on = run_args["algo"], run_args["env"]
    if algo not in ALGOS:
        raise EvalError(f"{run_dir / 'args.yml'}: algo {algo!r} is unknown here: choose one of {', '.join(ALGOS)}")
    env_id = args.env or trained_on
    try:
        check_env_id(env_id)
    except EnvError as exc:
        raise EvalError(f"--env {env_id}: {exc}" if args.env else str(exc)) from exc
    atari = is_atari(env_id)
    deterministic = (not atari) if args.deterministic is None else args.deterministic
    from cli.common import draw_seed

    seed = args.seed if args.seed is not None else draw_seed()

    model = load_model(ALGOS[algo], model_path)

    try:
        venv = make_env(
            env_id,
            n_envs=1,
            seed=seed,
            normalize=False,  # the training statistics are loaded below
            frame_stack=config.get("frame_stack"),
            env_kwargs=config.get("env_kwargs"),
            training=False,
            render_mode="rgb_array" if args.video else None,
        )
    except (EnvError, TypeError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise EvalError(f"{env_id}: cannot build the env with the run's env_kwargs ({first}): check config.yml")
    check_spaces(model, venv, env_id, trained_on)

    if config.get("normalize"):
        stats = run_dir / "vecnormalize.pkl"
        if not stats.is_file():
            raise EvalError(f"{run_dir}: normalize is on but vecnormalize.pkl is missing: copy it from the run")
        try:
            venv = VecNormalize.load(str(stats), venv)
        except Exception as exc:  # noqa: BLE001 - a damaged pickle fails in many ways
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise EvalError(f"{stats}: cannot load the normalisation statistics ({first}): copy it again") from exc
        venv.training = False
        venv.norm_reward = False

    stamp = time.strftime("%Y%m%d-%H%M%S")
    recorder = None
    if args.video:
        probe_render(venv, env_id, seed)
        folder = Path(args.video)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EvalError(f"--video {args.video}: cannot create the folder ({exc}): pick a writable path") from exc
        prefix = f"{algo}_{env_id.replace('/', '-')}_s{seed}_{stamp}"
        recorder = episode_video_class()(venv, folder, prefix, video_fps(venv, atari), args.episodes)
        venv = recorder

    set_random_seed(seed)
    start = time.time()
    returns, lengths = evaluate_policy(
        model, venv, n_eval_episodes=args.episodes, deterministic=deterministic, return_episode_rewards=True
    )
    elapsed = time.time() - start
    venv.close()

    returns = [float(r) for r in returns]
    lengths = [int(n) for n in lengths]
    return {
        "env_id": env_id,
        "trained_env_id": trained_on,
        "algo": algo,
        "model": str(model_path.resolve()),
        "run_dir": str(run_dir.resolve()),
        "model_timesteps": int(model.num_timesteps),
        "episodes": args.episodes,
        "seed": seed,
        "deterministic": deterministic,
        "returns": returns,
        "lengths": lengths,
        "length_unit": "emulator frames" if atari else "steps",
        "return_kind": ("game score of whole games (unclipped, all lives)" if atari
                        else "game score (MinAtar's rewards are unclipped)" if is_minatar(env_id) else "undiscounted return"),
        "mean": float(np.mean(returns)),
        "std": float(np.std(returns)),
        "min": float(np.min(returns)),
        "max": float(np.max(returns)),
        "mean_length": float(np.mean(lengths)),
        "normalize": bool(config.get("normalize")),
        "videos": recorder.files if recorder is not None else [],
        "eval_seconds": round(elapsed, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
    }


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        record = evaluate(args)
        out = write_json(Path(record["model"]).parent, args.episodes, record)
    except EvalError as exc:
        print(f"evaluate.py: error: {exc}", file=sys.stderr)
        return 2
    mode = "deterministic" if record["deterministic"] else "stochastic"
    print(
        f"{record['algo']} on {record['env_id']}: {record['mean']:.2f} +- {record['std']:.2f} "
        f"over {record['episodes']} episodes ({mode}, seed {record['seed']})"
    )
    print("returns: " + ", ".join(f"{r:g}" for r in record["returns"]))
    print(f"lengths ({record['length_unit']}): " + ", ".join(str(n) for n in record["lengths"]))
    for path in record["videos"]:
        print(f"video: {path}")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
