"""Hyperparameters from ``hyperparams/*.yml`` (rl-zoo3 layout) without ``eval``.

A file maps env ids to entries, with ``atari``, ``minatar`` and ``default`` fallbacks. Entries hold constructor
keyword arguments of the algorithm plus a few keys for the environment (``ENV_KEYS``). Strings of the form
``lin_<float>`` are linear schedules; ``policy_kwargs.activation_fn`` is a name (``relu``, ``tanh`` ...), and so is
``policy_kwargs.features_extractor_class`` (a key of ``agents.networks.FEATURES_EXTRACTORS``, e.g. ``MinAtarCNN``).
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Set

import yaml
from torch import nn

#: Keys consumed by train.py / envs.make_env, not passed to the algorithm.
ENV_KEYS = ("n_envs", "n_timesteps", "policy", "normalize", "frame_stack", "env_kwargs")
ACTIVATIONS: Dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}
SCHEDULE_KEYS = ("learning_rate", "clip_range", "clip_range_vf")


class HyperparamError(ValueError):
    """A user-facing problem with hyperparameters (unknown key, malformed value)."""


class LinearSchedule:
    """rl-zoo3's ``lin_<value>``: ``progress_remaining * initial_value`` (1 at the start, 0 at the end)."""

    def __init__(self, initial_value: float) -> None:
        self.initial_value = float(initial_value)

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.initial_value

    def __repr__(self) -> str:
        return f"lin_{self.initial_value:g}"


def parse_schedule(key: str, value: Any) -> Any:
    """``lin_2.5e-4`` -> LinearSchedule(2.5e-4); numbers (also ``"1e-3"``, which YAML 1.1 reads as a string) pass
    through as floats; anything else is an error."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        if not value.startswith("lin_"):
            raise HyperparamError(f"{key}={value!r} is not a number or a schedule: use e.g. 3e-4 or lin_3e-4")
        try:
            return LinearSchedule(float(value[len("lin_") :]))
        except ValueError as exc:
            raise HyperparamError(f"{key}={value!r}: the schedule needs a number after lin_, e.g. lin_3e-4") from exc
    return value


def load_hyperparams(path: Path, env_id: str, atari: bool) -> Dict[str, Any]:
    """The entry for ``env_id``, else ``atari`` (for Atari ids) or ``minatar`` (for ``MinAtar/*`` ids), else
    ``default``; a copy, YAML-typed."""
    from envs.minatar import is_minatar

    try:
        with open(path) as f:
            table = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise HyperparamError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}): fix the file") from exc
    if not isinstance(table, dict):
        raise HyperparamError(f"{path} must map env ids to entries (got {type(table).__name__}): see hyperparams/ppo.yml")
    family = "atari" if atari else "minatar" if is_minatar(env_id) else None
    for key in (env_id, family, "default"):
        if key is not None and key in table:
            return dict(table[key] or {})
    raise HyperparamError(f"{path} has no entry for {env_id!r} and no 'default' entry: add one")


def parse_override(item: str) -> tuple:
    """One ``-params`` item ``key:value``; the value is read with ``yaml.safe_load`` (never ``eval``)."""
    key, sep, raw = item.partition(":")
    if not sep or not key.strip() or not raw.strip():
        raise HyperparamError(f"malformed -params entry {item!r}: write key:value, e.g. learning_rate:3e-4")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise HyperparamError(f"malformed -params value in {item!r}: {str(exc).splitlines()[0]}") from exc


def constructor_defaults(cls: type) -> Dict[str, Any]:
    """Keyword arguments accepted by ``cls`` and its bases' ``__init__``, with their defaults (the most derived
    class's default wins; ``inspect.Parameter.empty`` for a required one)."""
    defaults: Dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for name, param in inspect.signature(init).parameters.items():
            if name != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                defaults.setdefault(name, param.default)
    for name in ("policy", "env", "_init_setup_model"):
        defaults.pop(name, None)
    return defaults


def constructor_keys(cls: type) -> Set[str]:
    """Keyword arguments accepted by ``cls`` and its bases' ``__init__``."""
    return set(constructor_defaults(cls))


def check_keys(keys: Iterable[str], cls: type) -> None:
    """Raise for keys that neither the algorithm nor train.py understands, with close matches."""
    allowed = constructor_keys(cls) | set(ENV_KEYS)
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"known keys: {', '.join(sorted(allowed))}"
            raise HyperparamError(f"unknown hyperparameter {key!r}: {hint}")


def check_env_values(hyperparams: Dict[str, Any]) -> None:
    """Raise for environment keys (``ENV_KEYS``) with impossible values, before anything is built."""
    n_envs = hyperparams.get("n_envs", 1)
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise HyperparamError(f"n_envs={n_envs!r}: use a positive integer, e.g. n_envs:8")
    n = hyperparams.get("n_timesteps", 1)
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n < 1:
        raise HyperparamError(f"n_timesteps={n!r}: use a positive number of steps, e.g. n_timesteps:1e6")
    stack = hyperparams.get("frame_stack")
    if stack is not None and (isinstance(stack, bool) or not isinstance(stack, int) or stack < 1):
        raise HyperparamError(f"frame_stack={stack!r}: use a positive integer, e.g. frame_stack:4")


def to_constructor_kwargs(hyperparams: Dict[str, Any]) -> Dict[str, Any]:
    """Algorithm keyword arguments from a YAML-typed entry: schedules and activation names converted."""
    kwargs = {k: v for k, v in hyperparams.items() if k not in ENV_KEYS}
    for key in SCHEDULE_KEYS:
        if key in kwargs:
            kwargs[key] = parse_schedule(key, kwargs[key])
    policy_kwargs = dict(kwargs.get("policy_kwargs") or {})
    act = policy_kwargs.get("activation_fn")
    if isinstance(act, str):
        if act.lower() not in ACTIVATIONS:
            raise HyperparamError(f"activation_fn={act!r} is unknown: choose one of {', '.join(ACTIVATIONS)}")
        policy_kwargs["activation_fn"] = ACTIVATIONS[act.lower()]
    extractor = policy_kwargs.get("features_extractor_class")
    if isinstance(extractor, str):
        from agents.networks import FEATURES_EXTRACTORS

        if extractor not in FEATURES_EXTRACTORS:
            raise HyperparamError(f"features_extractor_class={extractor!r} is unknown: choose one of "
                                  f"{', '.join(FEATURES_EXTRACTORS)}")
        policy_kwargs["features_extractor_class"] = FEATURES_EXTRACTORS[extractor]
    if policy_kwargs:
        kwargs["policy_kwargs"] = policy_kwargs
    return kwargs


def normalize_kwargs(config: Dict[str, Any]) -> Any:
    """The ``normalize`` entry as ``envs.make_env`` takes it (False, or VecNormalize keyword arguments), with the
    reward normalisation's discount set to the algorithm's ``gamma`` (0.99, SB3 PPO's default, when the entry sets
    none), as rl-zoo3 does ("use the same discount factor as for the algorithm"). A ``gamma`` given inside
    ``normalize`` itself wins."""
    normalize = config.get("normalize", False)
    if not normalize:
        return False
    given = dict(normalize) if isinstance(normalize, dict) else {}
    return {"gamma": config.get("gamma", 0.99), **given}
