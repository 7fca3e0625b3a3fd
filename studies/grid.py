"""Grid files: which runs a study consists of.

A grid file (``ablations/*.yml``) names its study, the settings every run shares, the environments with their
budgets, and the axes to cross::

    study: mujoco_study                  # records go to results/<study>/runs/ (default: the file's stem)
    settings:                            # every run: train.py flags or hyperparameters
      conf_file: hyperparams/ppo_sb3_defaults.yml
      eval_freq: 25000
      eval_episodes: 5
    envs:                                # env id -> its own settings (at least its budget, n_timesteps)
      HalfCheetah-v4: {n_timesteps: 500000}
    grid:                                # axis -> list of values, crossed; or a list of such mappings (their union)
      algo: [ppo, dualclip, decoupled]
      policy_lag: [0, 1, 2, 4, 8, 16]
      seed: [1, 2, 3, 4, 5]

A key (in ``settings``, an env's mapping or ``grid``) named like a ``train.py`` flag (``policy_lag`` ->
``--policy-lag``, ``dual_clip`` -> ``--dual-clip``, ``n_timesteps`` -> ``-n``, ``conf_file`` -> ``-conf``) is
passed as that flag; any other key is a hyperparameter, passed as ``-params key:value``. ``algo`` and ``seed`` must
be axes. The run name encodes the env, the algorithm, the lag and every other axis of the run's part of the grid,
then the seed: ``HalfCheetah-v4_dualclip_lag4_c1.5_s2``. A measured lag distribution replayed (``lag_mode:
empirical`` with ``lag_weights: [12, 30, 8]``, the weights of lags 0..K, or ``lag_weights_from: PATH``, read when
the grid is loaded and passed as ``--lag-weights``; PATH may be a glob pattern, whose runs' lag counts are pooled)
names K from the weights, and an axis of weights, given or read, is named by them: ``..._lag2-empirical_w12-30-8_s1``.

Nothing here trains or writes: :func:`load_grid` returns :class:`RunSpec` objects, each with the exact
``train.py`` arguments of its run.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml


class GridError(ValueError):
    """A grid file that cannot be run: reported as one line before any run starts."""


#: train.py flags that the sweep sets itself (per run folder) and a grid may not
RESERVED = ("env", "resume", "log_folder", "run_name", "tensorboard_log", "save_freq", "verbose", "progress",
            "num_threads", "hyperparams", "seeds")
#: top-level keys of a grid file
FILE_KEYS = ("study", "title", "settings", "envs", "grid")
#: short labels of axes in run names (other axes use their own key)
LABELS = {"dual_clip": "c", "behavior_temperature": "t", "is_weight_max": "wmax", "is_weight_mode": "",
          "temperature_mode": "", "loss_agg_mode": "", "prox": "", "prox_ewma_beta": "beta", "lag_weights": "w"}


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: its name, the values of its axes and the exact train.py arguments (run folder aside)."""

    study: str
    name: str
    env: str
    seed: int
    axes: Dict[str, Any] = field(hash=False)
    argv: Tuple[str, ...]
    n_timesteps: int

    def train_argv(self, runs_dir: Path, save_freq: int) -> List[str]:
        """The full train.py command line of this run under ``runs_dir``."""
        return [*self.argv, "-f", str(runs_dir), "--run-name", self.name, "--verbose", "0",
                "--save-freq", str(save_freq)]

    @property
    def cell(self) -> Tuple[str, ...]:
        """The run's train.py arguments without its seed: runs with the same cell differ only by seed."""
        i = self.argv.index("--seed")
        return self.argv[:i] + self.argv[i + 2 :]


def batch_argv(runs: List[RunSpec], runs_dir: Path, save_freq: int) -> List[str]:
    """One train.py command line training the seeds of one cell (``runs``) as one seed batch, each in the folder
    its single run would have."""
    names = {r.name[: -len(f"s{r.seed}")] + "s{seed}" for r in runs}
    if len({r.cell for r in runs}) != 1 or len(names) != 1:
        raise ValueError("a seed batch holds the seeds of one grid cell")
    return [*runs[0].cell, "--seeds", *(str(r.seed) for r in runs), "-f", str(runs_dir), "--run-name", names.pop(),
            "--verbose", "0", "--save-freq", str(save_freq)]


def flag_names() -> Dict[str, str]:
    """train.py's long options by their dest (``policy_lag`` -> ``--policy-lag``), read from its parser."""
    import train

    out = {}
    for action in train.build_parser()._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in ("help",):
            out[action.dest] = longs[0]
    return out


def _fmt(value: Any) -> str:
    """A value as it appears on a command line (YAML for hyperparameters: lists, dicts, null)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, float, list, dict)) or value is None:  # YAML, as -params reads it back (1e-05
        # would read as a string; YAML writes 1.0e-05)
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    return str(value)


def _label(key: str, value: Any) -> str:
    if isinstance(value, list):  # lag weights [0.2, 0.5, 0.3]: w0.2-0.5-0.3
        return LABELS.get(key, key) + "-".join(_label("", v) for v in value)
    text = _fmt(value).replace("/", "-").replace(" ", "").replace(":", "")
    for ch in "{}[],'\"":
        text = text.replace(ch, "")
    return f"{LABELS.get(key, key)}{text}"


def _policy_lag(axes: Dict[str, Any]) -> Any:
    """The run's K: ``policy_lag``, else with ``lag_mode: empirical`` the largest lag of its weights (``lag_weights``,
    given or read from ``lag_weights_from`` by :func:`_resolve_lag_weights_from`), as train.py implies it (the weights
    unreadable: 0, and the grid's check names the problem)."""
    if "policy_lag" in axes or axes.get("lag_mode") != "empirical":
        return axes.get("policy_lag", 0)
    from cli.lag_weights import parse_lag_weights

    try:
        if axes.get("lag_weights") is not None:
            return len(parse_lag_weights(_fmt(axes["lag_weights"]))) - 1
    except ValueError:
        pass
    return 0


def _resolve_lag_weights_from(merged: Dict[str, Any], where: str) -> Dict[str, Any]:
    """``lag_weights_from: PATH`` replaced by ``lag_weights``, the counts read from PATH now: a run's train.py
    arguments then carry the weights themselves, so its record says what it replayed, a changed file changes the
    arguments (and the sweep refuses the old record instead of reusing it), and a Ray worker, which gets no logs/ or
    results/, needs no file."""
    if merged.get("lag_weights_from") is None:
        return merged
    from cli.lag_weights import read_pooled_lag_counts

    source = merged.pop("lag_weights_from")
    try:
        merged["lag_weights"] = [int(c) if float(c).is_integer() else c for c in read_pooled_lag_counts(str(source))]
    except ValueError as exc:
        raise GridError(f"{where}: lag_weights_from {source}: {exc}") from exc
    return merged


def run_name(env: str, axes: Dict[str, Any], axis_keys: List[str]) -> str:
    """``<env>_<algo>_lag<K>[-<mode>]_<other axes>_s<seed>``; ``axis_keys``: the axes of the run's part of the grid."""
    mode = axes.get("lag_mode", "fixed")
    parts = [env.replace("/", "-"), str(axes["algo"]), f"lag{_policy_lag(axes)}"
             + ("" if mode == "fixed" else f"-{mode}")]
    for key in axis_keys:
        if key not in ("algo", "policy_lag", "lag_mode", "seed", "env"):
            parts.append(_label(key, axes[key]))
    return "_".join(parts + [f"s{axes['seed']}"])


def _mapping(value: Any, where: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridError(f"{where} must be a mapping of key: value, got {value!r}")
    return value


def load_grid(path: Path, study: Optional[str] = None) -> Tuple[str, List[RunSpec]]:
    """The study name and every run of the grid file ``path`` (seed-major: all of seed 1's runs come first, so a
    study cut short has every cell for its first seeds). ``study`` replaces the file's study name. Raises
    :class:`GridError` with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} not found: pass an existing ablations/*.yml")
    try:
        table = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise GridError(f"grid file {path} is not valid YAML ({str(exc).splitlines()[0]}): fix the file") from exc
    if not isinstance(table, dict):
        raise GridError(f"grid file {path} must be a mapping with keys {', '.join(FILE_KEYS)}")
    unknown = sorted(set(table) - set(FILE_KEYS))
    if unknown:
        raise GridError(f"{path}: unknown key {unknown[0]!r}: a grid file has {', '.join(FILE_KEYS)}")
    study = str(study or table.get("study") or path.stem)
    settings = _mapping(table.get("settings"), f"{path}: settings")
    envs = table.get("envs")
    if isinstance(envs, list):
        envs = {e: {} for e in envs}
    envs = _mapping(envs, f"{path}: envs")
    if not envs:
        raise GridError(f"{path}: envs is empty: name at least one env, e.g. envs: {{HalfCheetah-v4: "
                        "{n_timesteps: 500000}}")
    parts = table.get("grid")
    parts = [parts] if isinstance(parts, dict) else parts
    if not isinstance(parts, list) or not parts:
        raise GridError(f"{path}: grid must be a mapping of axis: [values] (or a list of such mappings)")
    flags = flag_names()
    runs: List[RunSpec] = []
    for env, env_settings in envs.items():
        env_settings = _mapping(env_settings, f"{path}: envs.{env}")
        for i, part in enumerate(parts):
            where = f"{path}: grid" + (f"[{i}]" if len(parts) > 1 else "")
            part = _mapping(part, where)
            for key, values in part.items():
                if not isinstance(values, list) or not values:
                    raise GridError(f"{where}: axis {key}={values!r} must be a non-empty list, e.g. {key}: [1, 2]")
            for key in ("algo", "seed"):
                if key not in part:
                    raise GridError(f"{where}: no {key} axis: every grid lists its {key}s, e.g. {key}: "
                                    + ("[ppo, dualclip]" if key == "algo" else "[1, 2, 3]"))
            for key in list(part) + list(settings) + list(env_settings):
                if key in RESERVED:
                    raise GridError(f"{where}: {key!r} cannot be set in a grid (the sweep sets it; envs come from "
                                    "the envs mapping)")
            keys = list(part)
            for values in itertools.product(*(part[k] for k in keys)):
                axes = dict(zip(keys, values))
                merged = _resolve_lag_weights_from({**settings, **env_settings, **axes}, where)
                if "n_timesteps" not in merged:
                    raise GridError(f"{path}: no budget for {env}: set n_timesteps in settings or envs.{env}")
                argv = ["--env", env]
                params = []
                for key, value in merged.items():
                    if key in flags and value is not None:
                        argv += [flags[key], _fmt(value)]
                    elif key in flags and key not in axes:
                        continue  # a flag set to null in settings: its default
                    else:
                        params.append(f"{key}:{_fmt(value)}")
                if params:
                    argv += ["-params", *params]
                seed = axes["seed"]
                if isinstance(seed, bool) or not isinstance(seed, int):
                    raise GridError(f"{where}: seed {seed!r} must be an integer")
                # an axis lag_weights_from is the weights it read (in the run's name and record), not the path
                axes = {"lag_weights" if k == "lag_weights_from" else k:
                        merged["lag_weights"] if k == "lag_weights_from" else v for k, v in axes.items()}
                runs.append(RunSpec(study, run_name(env, {**merged, **axes}, list(axes)), env, seed,
                                    {"env": env, **axes}, tuple(argv), int(float(merged["n_timesteps"]))))
    names: Dict[str, RunSpec] = {}
    for run in runs:
        if run.name in names and names[run.name].argv != run.argv:
            raise GridError(f"{path}: two runs are both named {run.name}: make the differing key an axis")
        names[run.name] = run
    seeds = sorted({r.seed for r in runs})
    return study, sorted(names.values(), key=lambda r: seeds.index(r.seed))


def check_runs(runs: List[RunSpec], build_models: bool = True) -> Optional[str]:
    """The first problem train.py would meet in any run (unknown algo, env or hyperparameter, a value it or the
    algorithm rejects), as one line, or None. Each distinct configuration (seeds aside) is built once."""
    import contextlib
    import io

    import train

    seen = set()
    for run in runs:
        if run.cell in seen:
            continue
        seen.add(run.cell)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = train.parse_args([*run.argv, "--verbose", "0"])
            config = train.build_config(args)
            if build_models:
                model, env = train.make_model(args, config)
                env.close()
                del model
        except SystemExit:
            return f"run {run.name}: {err.getvalue().strip().removeprefix('train.py: error: ')}"
        except (train.UsageError, ValueError) as exc:
            return f"run {run.name}: {exc}"
    return None
