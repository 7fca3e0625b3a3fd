"""Train one run: ``python train.py --algo dualclip --env HalfCheetah-v4``.

Flags follow rl-zoo3 (``--algo --env -n --seed -tb -params -f``). Hyperparameters come from
``hyperparams/ppo.yml`` (shared by every algorithm, so only the loss differs), keyed by env id with ``atari`` and
``default`` fallbacks, then ``-params key:value`` overrides (values read with ``yaml.safe_load``).

Each run gets its own folder ``<log-folder>/<env>_<algo>_lag<K>_s<seed>[_N]`` (never overwritten; the order of
sweep.py's run names) holding the
TensorBoard events, ``config.yml`` (hyperparameters as used), ``args.yml``, ``command.txt``, ``model.zip`` and
``vecnormalize.pkl``. ``tensorboard --logdir <log-folder>`` overlays every run.

A checkpoint (``checkpoint.pkl``) is written atomically every ``--save-freq`` steps; ``--resume RUN_FOLDER``
continues a killed run to its requested total with the settings it was started with (see agents/checkpoint.py for
what is restored exactly): only ``--progress``, ``--verbose`` and ``--save-freq`` may be given with it, any other flag
is refused.

``--actors N`` trains asynchronously: N Ray actor processes act rollouts with the weights they hold while the learner
trains, and ``rollout/policy_lag`` is the lag they produced (agents/asynchronous.py, docs/async.md; the run folder is
``<env>_<algo>_actors<N>[-stale<K>]_s<seed>`` and holds ``async.json``, the measured lag of every update).

Bad input (unknown algo/env, ``--dual-clip 0.8``, malformed ``-params``, ...) prints one line and exits 2
before anything is written.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional

HERE = Path(__file__).resolve().parent
DEFAULT_CONF = HERE / "hyperparams" / "ppo.yml"


class UsageError(Exception):
    """Bad input: reported as one line, exit code 2, nothing written."""


def build_parser() -> argparse.ArgumentParser:
    """train.py's flags (sweep.py also reads them: a grid axis named like a flag is passed as that flag)."""
    from cli.common import OneLineParser, whole_number
    from agents.options import ALGO_IDS, IS_WEIGHT_MODES, LAG_MODES, LOSS_AGG_MODES, PROX_MODES, TEMPERATURE_MODES

    p = OneLineParser(prog="train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--algo", choices=sorted(ALGO_IDS),
                   help="which loss (required): ppo (SB3's own lines), dualclip (our loss module, log-ratio clamped "
                        "to +-10 as verl; -params dual_clip:null turns the bound off, a vanilla clip that differs "
                        "from ppo only where |log pi - log mu| > 10) or decoupled")
    p.add_argument("--env", help="gymnasium id, e.g. HalfCheetah-v4, CartPole-v1, ALE/Breakout-v5 (required)")
    p.add_argument("--resume", nargs="+", default=None, metavar="RUN_FOLDER",
                   help="continue a run from its checkpoint to its requested total steps, with its own settings "
                        "(only --progress, --verbose and --save-freq may be given with it); several folders of one "
                        "configuration resume as one seed batch")
    p.add_argument("--save-freq", type=int, default=50_000,
                   help="checkpoint every N env steps, at the next rollout boundary (0: only at the end)")
    p.add_argument("-n", "--n-timesteps", type=whole_number, default=None,
                   help="environment steps, a whole number: 100000 or 1e5 (default: from YAML)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: drawn and recorded in args.yml)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="train these seeds in one process, as one batched model (agents/seed_batch.py: MLP policies "
                        "on Box or Discrete spaces; equal in distribution to single runs, not bit for bit); each "
                        "seed gets its own run folder, and its result does not depend on the other seeds given "
                        "(--seeds 2 alone is a batch of one; --seed 2 is the single-run path)")
    p.add_argument("-f", "--log-folder", default="logs", help="parent folder of run folders (default: logs)")
    p.add_argument("-tb", "--tensorboard-log", default=None, help="write TensorBoard events to DIR/<run> instead")
    p.add_argument("-conf", "--conf-file", default=str(DEFAULT_CONF), help="hyperparameter YAML file")
    p.add_argument(
        "-params", "--hyperparams", nargs="+", default=[], metavar="KEY:VALUE", help="override hyperparameters"
    )
    p.add_argument(
        "--dual-clip",
        type=float,
        default=None,
        help="c > 1 of dual-clip: dualclip's bound (default 3); opt-in for decoupled; for ppo only the diagnostic",
    )
    p.add_argument("--is-weight-mode", default=None, choices=IS_WEIGHT_MODES,
                   help="decoupled only: weights pi_prox/mu above the cap are truncated to it (default, as "
                        "openai/ppo-ewma) or filtered out of the loss (AReaL)")
    p.add_argument("--is-weight-max", type=float, default=None,
                   help="decoupled only: the cap w_max on the importance weight pi_prox/mu (default 100)")
    p.add_argument("--prox", default=None, choices=PROX_MODES,
                   help="decoupled only: the proximal policy pi_prox: the learner at the start of each update (start, "
                        "default) or PPO-EWMA's moving average of the learner's parameters (ewma; docs/ppo_ewma.md)")
    p.add_argument("--prox-ewma-beta", type=float, default=None, metavar="BETA",
                   help="with --prox ewma: beta_prox in [0, 1), the average's decay per optimiser step (default "
                        "0.889, the paper's; mean age beta/(1-beta) steps)")
    p.add_argument("--behavior-temperature", type=float, default=None, metavar="TAU",
                   help="tau > 0: actors sample from their distribution tempered by tau (Gaussian std x tau, "
                        "logits / tau); default 1 (YAML key behavior_temperature)")
    p.add_argument("--temperature-mode", default=None, choices=TEMPERATURE_MODES,
                   help="fixed: every env tau (default); per-env: env i of n gets tau**(i/(n-1))")
    p.add_argument("--policy-lag", type=int, default=None,
                   help="K: behaviour policy is K updates old (default 0; with --lag-mode empirical the largest lag "
                        "of the weights)")
    p.add_argument("--lag-mode", default="fixed", choices=LAG_MODES,
                   help="how the lag is spread (default fixed): uniform draws each rollout's lag from 0..K, per-env "
                        "gives env i of n the lag round(i*K/(n-1)), empirical draws it from --lag-weights")
    p.add_argument("--lag-weights", default=None, metavar="WEIGHTS",
                   help="with --lag-mode empirical: the weights of lags 0..K, counts or probabilities (normalised), as "
                        "lag:weight pairs (0:12,1:30,2:8) or in lag order (12,30,8); K is the largest lag given")
    p.add_argument("--lag-weights-from", default=None, metavar="PATH",
                   help="with --lag-mode empirical: the weights are the measured lag counts of an asynchronous run "
                        "(its run folder, async.json or results record): a simulated run with its lag distribution")
    p.add_argument("--loss-agg-mode", default=None, choices=LOSS_AGG_MODES,
                   help="loss aggregation of dualclip/decoupled (default token-mean, SB3's)")
    p.add_argument("--actors", type=int, default=None, metavar="N",
                   help="asynchronous training: N Ray actor processes act rollouts while the learner trains; the lag "
                        "is measured, not simulated (docs/async.md; needs the [cluster] extra)")
    p.add_argument("--max-staleness", type=int, default=None, metavar="K",
                   help="with --actors: no rollout is trained more than K versions after the weights that acted it "
                        "(an actor waits for new weights; AReaL's eta); default: no bound")
    p.add_argument("--address", default=None,
                   help="with --actors: the Ray cluster to join (e.g. auto, ray://head:10001); default: a local "
                        "instance")
    p.add_argument("--actor-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slows the last actor
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda (default auto)")
    p.add_argument("--num-threads", type=int, default=1,
                   help="torch CPU threads (default 1: fastest for these small nets on 2 cores; -1: torch's default)")
    p.add_argument("--eval-freq", type=int, default=-1,
                   help="evaluate the learner (deterministic) every N env steps into eval/evaluations.npz "
                        "(default: never)")
    p.add_argument("--eval-episodes", type=int, default=5, help="episodes per evaluation (default 5)")
    p.add_argument("--run-name", default=None,
                   help="run folder name (default: <env>_<algo>_lag<K>_s<seed>); with --seeds it must contain {seed}")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument("--verbose", type=int, default=1,
                   help=f"0: quiet; 1: SB3's table of the latest values every {TABLE_EVERY} updates (default); "
                        "2: the table after every update (CSV and TensorBoard get every update either way)")
    return p


#: SB3's stdout table at --verbose 1: once every this many updates (a 90 s HalfCheetah run printed 5,000 lines)
TABLE_EVERY = 10
#: flags --resume honours: they change what is shown and how often a checkpoint is written, not what is learnt
RESUME_OVERRIDES = ("progress", "verbose", "save_freq")


def given_flags(parser: argparse.ArgumentParser, argv: Optional[List[str]]) -> Dict[str, str]:
    """The flags on the command line (dest -> the option as typed), defaults aside: ``argv`` parsed again with
    every default suppressed, so that a flag given with its default value counts as given too."""
    argv = sys.argv[1:] if argv is None else list(argv)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
    typed = {token.split("=", 1)[0] for token in argv if token.startswith("-")}
    out = {}
    for action in parser._actions:
        if action.dest in given:
            out[action.dest] = next((o for o in action.option_strings if o in typed), action.option_strings[-1])
    return out


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.resume is not None:
        refused = [option for dest, option in given_flags(build_parser(), argv).items()
                   if dest not in ("resume", *RESUME_OVERRIDES)]
        if refused:
            p.error(f"{' '.join(refused)} with --resume: a run continues with the settings it was started with (only "
                    "--progress, --verbose and --save-freq may change); drop it, or start a new run")
    elif args.algo is None or args.env is None:
        p.error("--algo and --env are required (or --resume RUN_FOLDER)")
    if args.seeds is not None:
        if args.seed is not None:
            p.error(f"--seed {args.seed} and --seeds: give one of them (--seeds 1 2 3 trains several seeds at once)")
        if len(set(args.seeds)) != len(args.seeds):
            p.error(f"--seeds {' '.join(map(str, args.seeds))}: a seed is repeated; give each seed once")
        if args.run_name is not None and "{seed}" not in args.run_name:
            p.error(f"--run-name {args.run_name}: with --seeds the name must contain {{seed}}, e.g. cheetah_s{{seed}}")
    if args.save_freq < 0:
        p.error(f"--save-freq {args.save_freq}: use a number of steps >= 0, e.g. --save-freq 50000")
    if args.resume is not None:
        return args  # the run's own flags are checked when it was started
    if args.n_timesteps is not None and args.n_timesteps <= 0:
        p.error(f"-n {args.n_timesteps}: the number of timesteps must be a positive integer, e.g. -n 100000")
    if args.policy_lag is not None and args.policy_lag < 0:
        p.error(f"--policy-lag {args.policy_lag}: the lag must be a non-negative integer, e.g. --policy-lag 4")
    resolve_lag_weights(p, args)
    if args.dual_clip is not None and not args.dual_clip > 1:
        p.error(f"--dual-clip {args.dual_clip}: c must be > 1 (the paper uses 3)")
    tau = args.behavior_temperature
    if tau is not None and not (tau > 0 and tau < float("inf")):
        p.error(f"--behavior-temperature {tau}: the temperature must be a number > 0, e.g. 1.5 (1 = no tempering)")
    if args.is_weight_max is not None and not args.is_weight_max > 0:
        p.error(f"--is-weight-max {args.is_weight_max}: the cap must be > 0, e.g. 100 (truncate) or 5 (AReaL's filter)")
    beta = args.prox_ewma_beta
    if beta is not None and not 0 <= beta < 1:
        p.error(f"--prox-ewma-beta {beta}: beta must be in [0, 1), e.g. 0.889 (the paper's)")
    check_async_args(p, args)
    if args.device != "auto":
        import torch

        try:
            torch.device(args.device)
        except RuntimeError:
            p.error(f"--device {args.device}: not a torch device; use auto, cpu or cuda")
    return args


def resolve_lag_weights(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--lag-mode empirical``: its weights from ``--lag-weights`` or ``--lag-weights-from`` (one of them), checked
    (agents/lag_weights.py) and normalised into ``args.lag_weights``, and ``args.policy_lag`` := K, the largest lag
    they reach (``--policy-lag``, if given, must say the same). Other modes: no weights, ``args.policy_lag`` 0 unless
    given. One-line errors naming the flag and the fix."""
    given = [flag for flag, value in (("--lag-weights", args.lag_weights),
                                      ("--lag-weights-from", args.lag_weights_from)) if value is not None]
    if args.lag_mode != "empirical":
        if given:
            p.error(f"{given[0]} needs --lag-mode empirical (each rollout's lag drawn from the weights): add it, or "
                    f"drop {given[0]}")
        args.policy_lag = 0 if args.policy_lag is None else args.policy_lag
        return
    if len(given) != 1:
        p.error("--lag-weights and --lag-weights-from: give one of them" if given else
                "--lag-mode empirical needs the weights of lags 0..K: --lag-weights 0:12,1:30,2:8 (counts or "
                "probabilities) or --lag-weights-from RUN_FOLDER (an asynchronous run's measured lags)")
    from agents.lag_weights import check_lag_weights, lag_probabilities
    from cli.lag_weights import parse_lag_weights, read_lag_counts

    from_run = args.lag_weights_from is not None  # an asynchronous run's measured lag counts
    source = f"--lag-weights-from {args.lag_weights_from}" if from_run else f"--lag-weights {args.lag_weights}"
    try:
        weights = read_lag_counts(Path(args.lag_weights_from)) if from_run else parse_lag_weights(args.lag_weights)
    except ValueError as exc:
        p.error(f"{source}: {exc}")
    k = len(weights) - 1
    if args.policy_lag is not None and args.policy_lag != k:
        p.error(f"--policy-lag {args.policy_lag} with {source}: K is the weights' largest lag, {k}; drop "
                f"--policy-lag (the weights imply it) or give weights up to lag {args.policy_lag}")
    try:
        check_lag_weights(weights, k)
    except ValueError as exc:
        p.error(f"{source}: {exc}")
    args.policy_lag, args.lag_weights = k, lag_probabilities(weights).tolist()


def check_async_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line errors for the asynchronous flags: a value out of range, a flag that needs --actors, a combination
    that makes no sense with real actors (they produce their own lag), or a missing Ray."""
    n = args.actors
    if n is None:
        for flag, value in (("--max-staleness", args.max_staleness), ("--address", args.address)):
            if value is not None and not (flag == "--address" and args.resume is not None):
                p.error(f"{flag} {value} needs asynchronous actors: add --actors N (e.g. --actors 2)")
        if args.actor_delay:
            p.error(f"--actor-delay {args.actor_delay} needs asynchronous actors: add --actors N")
        return
    if n < 1:
        p.error(f"--actors {n}: the number of actors must be a positive integer, e.g. --actors 2")
    if args.max_staleness is not None and args.max_staleness < 0:
        p.error(f"--max-staleness {args.max_staleness}: use a number of versions >= 0, e.g. --max-staleness 4")
    if args.actor_delay < 0:
        p.error(f"--actor-delay {args.actor_delay}: use seconds >= 0")
    if args.policy_lag != 0 or args.lag_mode != "fixed":
        given = f"--lag-mode {args.lag_mode}" if args.lag_mode != "fixed" else f"--policy-lag {args.policy_lag}"
        p.error(f"--actors {n} with {given}: real actors produce their own lag (measured); drop {given.split()[0]} "
                "or --actors")
    if args.seeds is not None:
        p.error(f"--actors {n} with --seeds: an asynchronous run trains one seed; use --seed S (one run per seed)")
    if args.resume is not None:
        p.error(f"--actors {n} with --resume: a run resumes as it was started (asynchronous runs with their actors)")
    from cli.ray_session import MISSING, ray_available

    if not ray_available():
        p.error(f"--actors {n} {MISSING}")


def build_config(args: argparse.Namespace) -> Dict[str, Any]:
    """The run's hyperparameters (YAML-typed): file entry, then -params, then the dedicated flags."""
    from agents import ALGOS
    from agents.behavior import check_temperature_args
    from cli.hyperparams import check_env_values, check_keys, constructor_defaults, load_hyperparams, parse_override
    from envs import check_env_id, is_atari

    check_env_id(args.env)
    conf_path = Path(args.conf_file)
    if not conf_path.is_file():
        raise UsageError(f"hyperparameter file {conf_path} not found: pass -conf PATH to an existing YAML file")
    config = load_hyperparams(conf_path, args.env, is_atari(args.env))
    for item in args.hyperparams:
        key, value = parse_override(item)
        config[key] = value
    for key, flag in (("policy_lag", "--policy-lag"), ("lag_mode", "--lag-mode"), ("lag_weights", "--lag-weights")):
        if key in config:  # the flags are the only way to set these: the run name and config.yml follow them
            raise UsageError(f"{key} in {conf_path.name} or -params: set it with {flag} (the run name and config.yml "
                             "take the lag from the flags)")
    config["policy_lag"] = args.policy_lag
    config["lag_mode"] = args.lag_mode
    if args.lag_mode == "empirical":  # the weights, normalised, recorded explicitly (whichever flag gave them)
        config["lag_weights"] = list(args.lag_weights)
    # The arm's flags map to the keyword arguments its class accepts; a flag that is given wins over the file and
    # -params, one that is not leaves their value, else the class's default (recorded in config.yml).
    # --dual-clip is the bound c of an arm that takes dual_clip (dualclip: default 3; decoupled: off unless given)
    # and, for an arm without one (ppo), the c of its train/dual_clip_would_bound diagnostic.
    accepted = constructor_defaults(ALGOS[args.algo])
    flags = {"dual_clip" if "dual_clip" in accepted else "would_bound_c": args.dual_clip,
             "loss_agg_mode": args.loss_agg_mode, "is_weight_mode": args.is_weight_mode,
             "is_weight_max": args.is_weight_max, "prox": args.prox, "prox_ewma_beta": args.prox_ewma_beta,
             "behavior_temperature": args.behavior_temperature,
             "temperature_mode": args.temperature_mode}
    for key, value in flags.items():
        if key not in accepted:  # refused unless it changes nothing (the default of every arm that has it)
            defaults = {algo: constructor_defaults(cls)[key] for algo, cls in ALGOS.items()
                        if key in constructor_defaults(cls)}
            if value is not None and any(value != default for default in defaults.values()):
                raise UsageError(f"--{key.replace('_', '-')} {value}: --algo {args.algo} has no {key}; "
                                 f"use an arm that has: {', '.join(defaults)}")
            continue
        if value is not None:
            config[key] = value
        if key not in ("is_weight_mode", "is_weight_max", "prox", "prox_ewma_beta"):  # recorded only when set:
            config.setdefault(key, accepted[key])  # the records of earlier runs read their absence as the default
    if config.get("prox") == "ewma":  # an EWMA run records its beta, default or not
        config.setdefault("prox_ewma_beta", accepted["prox_ewma_beta"])
    elif config.get("prox_ewma_beta") is not None:  # (after -params too: prox may come from YAML or -params)
        raise UsageError(f"--prox-ewma-beta {config['prox_ewma_beta']} has no effect without prox ewma: add --prox "
                         "ewma (or -params prox:ewma) or drop it")
    check_temperature_args(config["behavior_temperature"], config["temperature_mode"])  # names the bad value
    if args.n_timesteps is not None:
        config["n_timesteps"] = args.n_timesteps
    config["n_timesteps"] = whole_steps(config.get("n_timesteps"), conf_path)
    check_keys(config, ALGOS[args.algo])
    check_env_values(config)
    return config


def whole_steps(value: Any, conf_path: Path) -> int:
    """The budget as an int (YAML's ``!!float 1e6`` is read as a float); UsageError naming a non-whole one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() or value <= 0:
        raise UsageError(f"n_timesteps {value!r} in {conf_path.name} or -params: use a positive whole number of "
                         "steps, e.g. 1e6 or -n 100000")
    return int(value)


def run_folder(args: argparse.Namespace, config: Dict[str, Any]) -> Path:
    """A fresh run folder path (not created yet) whose TensorBoard folder is free as well (with ``-tb`` it lies
    elsewhere). An explicit --run-name that is taken is an error; a default name gets a ``_2``, ``_3`` ... suffix."""
    parent = Path(args.log_folder)

    def taken(path: Path) -> bool:
        return path.exists() or tensorboard_dir(path, args).exists()

    if args.run_name:
        path = parent / args.run_name.replace("{seed}", str(args.seed))
        if taken(path):
            raise UsageError(f"run folder {path} or its TensorBoard folder {tensorboard_dir(path, args)} exists: "
                             "choose another --run-name (nothing was overwritten)")
        return path
    mode = "" if args.lag_mode == "fixed" else f"-{args.lag_mode}"
    lag = f"lag{args.policy_lag}{mode}"
    if getattr(args, "actors", None):  # asynchronous: the lag is measured; the name says how it was produced
        lag = f"actors{args.actors}" + ("" if args.max_staleness is None else f"-stale{args.max_staleness}")
    tau, tau_mode = float(config["behavior_temperature"]), config["temperature_mode"]
    temperature = "" if tau == 1 else f"_t{tau:g}" + ("" if tau_mode == "fixed" else f"-{tau_mode}")
    # <env>_<algo>_..., the order of sweep.py's run names (studies/grid.py), so both sort by env first
    base = f"{args.env.replace('/', '-')}_{args.algo}_{lag}{temperature}_s{args.seed}"
    path, n = parent / base, 1
    while taken(path):
        n += 1
        path = parent / f"{base}_{n}"
    return path


def make_run_env(args: argparse.Namespace, config: Dict[str, Any], *, evaluation: bool = False,
                 normalize: bool = True):
    """The run's training environments (``n_envs`` copies, the run's seed), or with ``evaluation`` one copy seeded
    apart (seed + 10000) whose normalisation statistics are not updated. ``normalize=False`` leaves VecNormalize
    off (a resumed run restores its own)."""
    from cli.hyperparams import normalize_kwargs
    from envs import make_env

    seed = args.seed + 10_000 if evaluation and args.seed is not None else args.seed
    return make_env(
        args.env,
        n_envs=1 if evaluation else config.get("n_envs", 1),
        seed=seed,
        normalize=normalize_kwargs(config) if normalize else False,  # VecNormalize's gamma = the algorithm's
        frame_stack=config.get("frame_stack"),
        env_kwargs=config.get("env_kwargs"),
        training=not evaluation,
    )


def make_model(args: argparse.Namespace, config: Dict[str, Any]):
    """Environment and algorithm from the config; raises ValueError on bad values, writes nothing."""
    from agents import ALGOS
    from cli.hyperparams import to_constructor_kwargs

    kwargs = to_constructor_kwargs(config)
    env = make_run_env(args, config)
    try:
        model = ALGOS[args.algo](
            config.get("policy", "MlpPolicy"), env, seed=args.seed, device=args.device, verbose=args.verbose, **kwargs
        )
    except (TypeError, AssertionError) as exc:  # SB3 checks its arguments with assert; a wrong type raises TypeError
        env.close()
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{args.algo} rejected the hyperparameters ({reason}): "
                         f"check the values in {args.conf_file} and -params") from exc
    return model, env


def tensorboard_dir(run_dir: Path, args: argparse.Namespace) -> Path:
    return Path(args.tensorboard_log) / run_dir.name if args.tensorboard_log else run_dir


def make_logger(run_dir: Path, args: argparse.Namespace, csv_suffix: str = ""):
    """CSV (``progress<suffix>.csv``: a resumed part gets its own file) and TensorBoard, every update; stdout's
    table every :data:`TABLE_EVERY` updates at verbose 1, every update at verbose 2, never at 0."""
    from stable_baselines3.common.logger import Logger, make_output_format

    from cli.console import EveryNth

    outputs = [make_output_format("csv", str(run_dir), log_suffix=csv_suffix)]
    if args.verbose >= 1:
        outputs.append(EveryNth(make_output_format("stdout", str(run_dir)), 1 if args.verbose >= 2 else TABLE_EVERY))
    outputs.append(make_output_format("tensorboard", str(tensorboard_dir(run_dir, args))))
    return Logger(folder=str(run_dir), output_formats=outputs)


def callbacks(args: argparse.Namespace, config: Dict[str, Any], run_dir: Path,
              before_checkpoint: Optional[Callable[[], None]] = None) -> list:
    """The run's callbacks: its hyperparameters to TensorBoard, checkpoints (``before_checkpoint`` runs right before
    each is written) and, with ``--eval-freq``, the learner's evaluations."""
    from agents.callbacks import HParamCallback, LearnerEvalCallback
    from agents.checkpoint import CheckpointCallback
    from cli.common import CHECKPOINT

    out: list = [HParamCallback(args.algo, config),
                 CheckpointCallback(run_dir / CHECKPOINT, args.save_freq, before_save=before_checkpoint)]
    if args.eval_freq > 0:  # the learner itself, deterministic, every eval_freq env steps (and at start and end)
        out.append(LearnerEvalCallback(make_run_env(args, config, evaluation=True), eval_freq=args.eval_freq,
                                       n_eval_episodes=args.eval_episodes, log_path=str(run_dir / "eval"),
                                       seed=args.seed + 10_000))
    return out


def write_run_files(run_dir: Path, args: argparse.Namespace, config: Dict[str, Any]) -> None:
    from cli import run_files
    from cli.common import code_version, machine_info

    run_files.write(run_dir, args, config, code_version(), machine_info())


class Run(NamedTuple):
    """One run: its model and environment, its folder, its flags and its hyperparameters."""

    model: Any
    env: Any
    run_dir: Path
    args: argparse.Namespace
    config: Dict[str, Any]


def train(runs: List[Run], on_hard_stop: Optional[Callable[[], None]] = None,
          on_checkpoint: Optional[Callable[[Run], None]] = None) -> int:
    """Learn up to the requested total steps, then save each model, its statistics and a final checkpoint. A run
    started with ``--seed`` learns on the single-run path (bit-identical to stock SB3 at lag 0); runs started with
    ``--seeds`` (one seed or several) and several resumed together learn in lockstep as one batched model
    (agents/seed_batch.py), each writing what a single run writes into its own folder.

    Ctrl-C (SIGINT) or SIGTERM stops at the next rollout boundary: checkpoint, ``model.zip`` and
    ``vecnormalize.pkl`` are written (each atomically), one line gives the ``--resume`` command, and the exit code is
    130 or 143. A second signal stops at once; the last checkpoint stays intact (it is only ever replaced whole).
    ``on_hard_stop`` runs just before that immediate exit (asynchronous runs stop Ray there); ``on_checkpoint(run)``
    right before each checkpoint of ``run`` is written, the final one too (asynchronous runs write their lag history
    there).
    """
    from functools import partial

    from agents.checkpoint import CheckpointCallback, NonFiniteError, StopRequested, check_finite
    from agents.checkpoint import divergence_message
    from cli.common import CHECKPOINT, INTERRUPTED

    for run in runs:
        print(f"run folder: {run.run_dir}", flush=True)
    first = runs[0].model
    start, start_steps = time.time(), first.num_timesteps
    run_callbacks = [callbacks(run.args, run.config, run.run_dir,
                               None if on_checkpoint is None else partial(on_checkpoint, run)) for run in runs]
    checkpoints = [next(c for c in cbs if isinstance(c, CheckpointCallback)) for cbs in run_callbacks]
    stop_at_boundary(checkpoints, on_hard_stop)
    todo = int(runs[0].config["n_timesteps"]) - first.num_timesteps
    try:
        if len(runs) == 1 and not getattr(runs[0].args, "seeds", None):
            first.learn(total_timesteps=todo, callback=run_callbacks[0], progress_bar=runs[0].args.progress,
                        reset_num_timesteps=first.num_timesteps == 0)
        else:
            from agents.seed_batch import SeedBatch

            SeedBatch([run.model for run in runs]).learn(todo, run_callbacks, reset_num_timesteps=first.num_timesteps == 0)
        for run in runs:
            check_finite(run.model)
    except StopRequested as stop:
        for run in runs:
            # the marker first: a model.zip without it would read as a finished run
            (run.run_dir / INTERRUPTED).write_text(f"stopped by signal {stop.args[0]} at step {run.model.num_timesteps}\n")
            save_outputs(run.model, run.env, run.run_dir)
        name = signal.Signals(stop.args[0]).name
        folders = " ".join(shlex.quote(str(run.run_dir)) for run in runs)
        print(f"train.py: stopped by {name} at step {first.num_timesteps} of {int(runs[0].config['n_timesteps'])} "
              f"(checkpoint and model.zip written); continue with: python train.py --resume {folders}", file=sys.stderr)
        return 128 + int(stop.args[0])
    except (NonFiniteError, ValueError) as exc:
        failed = next((run for run in runs if _diverged(run.model)), runs[0])
        message = divergence_message(failed.model, exc)
        if message is None:
            raise
        kept = failed.run_dir / CHECKPOINT
        where = f"the last good checkpoint is {kept}" if kept.is_file() else "no checkpoint had been written yet"
        print(f"train.py: training stopped: {message}; {where}", file=sys.stderr)
        return 1
    for run, checkpoint in zip(runs, checkpoints):
        save_outputs(run.model, run.env, run.run_dir)
        checkpoint.save()
        (run.run_dir / INTERRUPTED).unlink(missing_ok=True)
    elapsed = time.time() - start
    steps = sum(run.model.num_timesteps for run in runs) - len(runs) * start_steps
    print(f"done: {first.num_timesteps} steps x {len(runs)} run(s) ({steps} in {elapsed:.1f} s, "
          f"{steps / elapsed:.0f} steps/s)")
    print_next_steps(runs)
    return 0


def print_next_steps(runs: List[Run]) -> None:
    """The run folders again (the first line scrolled away long ago), with the commands to evaluate each and to
    open TensorBoard on them."""
    for run in runs:
        print(f"run folder: {run.run_dir}")
    for run in runs:
        print(f"  evaluate:    python evaluate.py {shlex.quote(str(run.run_dir))} --episodes 10")
    logdir = runs[0].args.tensorboard_log or runs[0].run_dir.parent
    print(f"  TensorBoard: tensorboard --logdir {shlex.quote(str(logdir))}")


def _diverged(model: Any) -> bool:
    """Whether ``model`` is the one whose parameters or last loss stopped being finite."""
    from agents.checkpoint import NonFiniteError, check_finite

    try:
        check_finite(model)
    except NonFiniteError:
        return True
    return False


def save_outputs(model: Any, env: Any, run_dir: Path) -> None:
    """``model.zip`` and (with VecNormalize) ``vecnormalize.pkl``, each written to a temporary file and renamed."""
    from stable_baselines3.common.vec_env import VecNormalize

    from cli.common import MODEL

    model.save(run_dir / ".model.tmp.zip")
    os.replace(run_dir / ".model.tmp.zip", run_dir / MODEL)
    if isinstance(env, VecNormalize):
        env.save(str(run_dir / ".vecnormalize.tmp.pkl"))
        os.replace(run_dir / ".vecnormalize.tmp.pkl", run_dir / "vecnormalize.pkl")


def stop_at_boundary(checkpoints: List[Any], on_hard_stop: Optional[Callable[[], None]] = None) -> None:
    """On the first SIGINT or SIGTERM ask ``checkpoints`` (each run's CheckpointCallback) to stop at the next rollout
    boundary; on a second, run ``on_hard_stop`` and exit at once (atomic writes keep the last checkpoint whole)."""

    def handler(signum: int, frame: Any) -> None:
        if checkpoints[0].stop_requested is not None:
            print(f"train.py: second {signal.Signals(signum).name}: stopping now; the last checkpoint is kept",
                  file=sys.stderr, flush=True)
            if on_hard_stop is not None:
                try:
                    on_hard_stop()
                finally:
                    os._exit(128 + signum)
            os._exit(128 + signum)
        for callback in checkpoints:
            callback.stop_requested = signum
        print(f"train.py: {signal.Signals(signum).name}: stopping at the end of this rollout's update (send it again "
              "to stop at once)", file=sys.stderr, flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


#: args.yml keys that --resume relies on
RESUME_KEYS = ("algo", "env", "seed", "device", "verbose", "tensorboard_log", "progress", "save_freq", "eval_freq",
               "eval_episodes")


def read_run_files(run_dir: Path) -> tuple:
    """``args.yml`` (as a Namespace) and ``config.yml`` of a run folder; UsageError when either is damaged."""
    from cli import run_files

    try:
        files = run_files.read(run_dir, args_keys=RESUME_KEYS, config_keys=("n_timesteps",))
        int(files.config["n_timesteps"])
    except (run_files.RunFilesError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"--resume {run_dir}: args.yml or config.yml is damaged ({reason}); "
                         "restore them from a copy or start a new run") from exc
    return files.namespace, files.config


class Resumed(NamedTuple):
    """A run read back from its folder by :func:`resume`, nothing in the folder touched yet: its :class:`Run`, the
    checkpoint's step and the logger values the checkpoint kept (:func:`continue_logs` writes them)."""

    run: Run
    step: int
    pending_logs: Any


def resume(folder: str, overrides: Optional[Dict[str, Any]] = None) -> Optional[Resumed]:
    """Read the run in ``folder`` back to continue from its checkpoint (None: it is already complete), with the flags
    it was started with except ``overrides`` (from :data:`RESUME_OVERRIDES`: what is shown, how often it
    checkpoints). Writes nothing: every refusal (here, or of the runs together in :func:`main`) comes before
    :func:`continue_logs` first touches the folder."""
    from agents import ALGOS
    from agents.checkpoint import read_checkpoint, restore_env, restore_model
    from cli.common import CHECKPOINT
    from stable_baselines3.common.vec_env import VecNormalize

    from envs import fast_statistics

    run_dir = Path(folder)
    needed = [run_dir / "args.yml", run_dir / "config.yml", run_dir / CHECKPOINT]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise UsageError(f"--resume {run_dir}: not a run folder with a checkpoint (missing {', '.join(missing)}); "
                         "pass a folder written by train.py")
    saved, config = read_run_files(run_dir)
    saved = argparse.Namespace(**{**vars(saved), **(overrides or {})})
    set_threads(getattr(saved, "num_threads", 1))
    state = read_checkpoint(needed[2])
    if state["num_timesteps"] >= int(config["n_timesteps"]):
        print(f"{run_dir} is complete ({state['num_timesteps']} of {int(config['n_timesteps'])} steps); nothing to do")
        return None
    fresh = None if state["env"] is not None else make_run_env(saved, config, normalize=False)
    env = restore_env(state, fresh)
    if isinstance(env, VecNormalize):
        fast_statistics(env)  # the pickled statistics come back as SB3's classes
    model = restore_model(ALGOS[saved.algo], state, env, saved.device)
    return Resumed(Run(model, env, run_dir, saved, config), int(state["num_timesteps"]), state["pending_logs"])


def continue_logs(resumed: Resumed) -> Run:
    """The first write into a resumed run's folder, once nothing can refuse it any more: TensorBoard events and CSV
    rows logged after the checkpoint are dropped, the logger continues (``progress_from<step>.csv``) with the values
    the checkpoint kept, and ``command.txt`` notes the resume."""
    from agents.checkpoint import restore_pending_logs
    from cli import run_files
    from cli.event_files import truncate_logs

    run, step = resumed.run, resumed.step
    truncate_logs(tensorboard_dir(run.run_dir, run.args), step)
    truncate_logs(run.run_dir, step)
    run.model.set_logger(make_logger(run.run_dir, run.args, csv_suffix=f"_from{step}"))
    restore_pending_logs(run.model, {"pending_logs": resumed.pending_logs})
    run_files.append_command(run.run_dir, f"resumed at step {step}")
    print(f"resuming {run.run_dir} at step {step} of {int(run.config['n_timesteps'])}", flush=True)
    return run


def set_threads(n: int) -> None:
    """torch's CPU threads (``n > 0``), and glibc's malloc set to keep freed memory for reuse (cli.common)."""
    from cli.common import keep_freed_memory

    keep_freed_memory()
    if n > 0:
        import torch

        torch.set_num_threads(n)


def new_runs(args: argparse.Namespace) -> List[Run]:
    """The runs ``args`` asks for (one per seed of ``--seeds``), their models built; nothing written yet. Raises
    UsageError or ValueError naming the bad value."""
    seeds = args.seeds or [args.seed]
    runs: List[Run] = []
    try:
        for seed in seeds:
            seed_args = argparse.Namespace(**{**vars(args), "seed": seed})
            config = build_config(seed_args)
            run_dir = run_folder(seed_args, config)
            if any(run.run_dir == run_dir for run in runs):
                raise UsageError(f"--run-name {args.run_name}: two seeds get the folder {run_dir}; put {{seed}} in it")
            model, env = make_model(seed_args, config)
            runs.append(Run(model, env, run_dir, seed_args, config))
        if args.seeds is not None:
            from agents.seed_batch import check_batchable

            check_batchable(runs[0].model)
    except (UsageError, ValueError):
        for run in runs:
            run.env.close()
        raise
    return runs


def async_rollouts(run: Run, history: Any = None) -> Any:
    """The asynchronous actors of ``run`` (``--actors``), not started yet (agents/asynchronous.py); ValueError names
    a setting they cannot serve. Actor j's environments get the seeds ``seed + j * n_envs + i`` (actor 0's are the
    synchronous run's); ``--actor-delay`` (tests only) slows the last actor."""
    from functools import partial

    from agents.asynchronous import AsyncRollouts
    from envs import make_env

    args, config = run.args, run.config
    factory = partial(make_env, args.env, n_envs=config.get("n_envs", 1), normalize=False,
                      frame_stack=config.get("frame_stack"), env_kwargs=config.get("env_kwargs"))
    delays = [0.0] * (args.actors - 1) + [float(getattr(args, "actor_delay", 0.0) or 0.0)]
    return AsyncRollouts(run.model, factory, int(args.actors), seed=args.seed,
                         max_staleness=getattr(args, "max_staleness", None), actor_delays=delays, history=history)


def read_lag_history(run: Run) -> Any:
    """The lag history of a resumed asynchronous run, cut at its checkpoint. UsageError when ``async.json`` is
    damaged, or holds fewer rollouts than the checkpoint trained (a run hard-killed before the file was written with
    every checkpoint): its history could not continue where training does."""
    import json

    from agents.asynchronous import LagHistory
    from cli.common import ASYNC_SUMMARY

    path = run.run_dir / ASYNC_SUMMARY
    trained = run.model.num_timesteps // (run.model.n_steps * run.model.n_envs)
    if not path.is_file() and trained == 0:
        return LagHistory()
    try:
        data = json.loads(path.read_text())
        lags, actors = [int(v) for v in data["lags"]], [int(v) for v in data["actors"]]
        waits = int(data.get("staleness_waits", 0))
    except (OSError, ValueError, KeyError, TypeError) as exc:  # missing, not JSON, a field missing or mistyped
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--resume {run.run_dir}: {ASYNC_SUMMARY} is missing or damaged ({type(exc).__name__}: "
                         f"{reason}); restore it from a copy or start a new run") from exc
    if min(len(lags), len(actors)) < trained:
        raise UsageError(f"--resume {run.run_dir}: {ASYNC_SUMMARY} holds the lags of {min(len(lags), len(actors))} "
                         f"rollouts, the checkpoint's {trained} (a run killed hard before train.py wrote it with every "
                         "checkpoint): its lag history cannot continue where training does; start a new run")
    return LagHistory(lags=lags[:trained], actors=actors[:trained], staleness_waits=waits)


def write_lag_history(run: Run, history: Any) -> None:
    """``async.json``: the run's asynchronous settings and its lag history (:class:`agents.asynchronous.LagHistory`)
    so far, replaced atomically (a temporary file renamed over it). Written right before every checkpoint, so that
    it always reaches at least as far as the checkpoint (a resume cuts it back there), and when the run ends."""
    import json

    from agents.files import atomic_write
    from cli.common import ASYNC_SUMMARY

    summary = {"n_actors": int(run.args.actors), "max_staleness": run.args.max_staleness,
               "address": run.args.address, **history.summary()}
    atomic_write(run.run_dir / ASYNC_SUMMARY, (json.dumps(summary) + "\n").encode())


def train_async(run: Run, rollouts: Any, open_folder: Callable[[], Any]) -> int:
    """:func:`train` of one run whose rollouts come from Ray actors: Ray joined (or started), then ``open_folder()``
    makes the first write into the run folder (a new run's files, or a resumed run's logs continued), the actors
    started, and after training (also after Ctrl-C or an error) the actors stopped and Ray shut down if this process
    started it. ``async.json`` is written before every checkpoint and at the end. When Ray does not start, the folder
    is left as it was."""
    from contextlib import ExitStack

    from cli.ray_session import kill_local_ray, ray_session

    with ExitStack() as stack:
        try:
            stack.enter_context(ray_session(run.args.address, int(run.args.actors)))
        except Exception as exc:  # a bad --address: Ray raises ConnectionError, ValueError, RuntimeError ...
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            where = f"--address {run.args.address}" if run.args.address else "a local Ray instance"
            print(f"train.py: error: {where}: Ray did not start ({reason}); check the address (ray status on the "
                  "head node) or drop --address for a local instance", file=sys.stderr)
            return 2
        open_folder()
        try:  # a second Ctrl-C stops Ray's processes; the lag history goes with every checkpoint
            rollouts.start()  # waits until every actor is up: an actor that fails to build raises here
            return train([run], on_hard_stop=kill_local_ray,
                         on_checkpoint=lambda checkpointed: write_lag_history(checkpointed, rollouts.history))
        finally:
            rollouts.close()
            write_lag_history(run, rollouts.history)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    set_threads(args.num_threads)
    if args.resume is not None:
        overrides = {dest: getattr(args, dest) for dest in given_flags(build_parser(), argv) if dest in RESUME_OVERRIDES}
        try:  # every refusal comes before the first write into a run folder (continue_logs)
            resumed = [r for r in (resume(folder, overrides) for folder in args.resume) if r is not None]
            if len(resumed) > 1:
                from agents.seed_batch import check_batch

                check_batch([r.run.model for r in resumed])
            asynchronous = [r for r in resumed if getattr(r.run.args, "actors", None)]
            if asynchronous:
                if len(args.resume) > 1:
                    raise UsageError(f"--resume {asynchronous[0].run.run_dir} is an asynchronous run (--actors): "
                                     "resume it alone")
                one = asynchronous[0]  # on the Ray address it was started with (--address is refused with --resume)
                rollouts = async_rollouts(one.run, read_lag_history(one.run))
                from cli.ray_session import MISSING, ray_available

                if not ray_available():
                    raise UsageError(f"--resume {one.run.run_dir} is an asynchronous run (--actors "
                                     f"{one.run.args.actors}): it {MISSING}")
        except (UsageError, ValueError) as exc:
            print(f"train.py: error: {exc}", file=sys.stderr)
            return 2
        if asynchronous:
            return train_async(one.run, rollouts, open_folder=lambda: continue_logs(one))
        return train([continue_logs(r) for r in resumed]) if resumed else 0
    if args.seed is None and args.seeds is None:
        from cli.common import draw_seed

        args.seed = draw_seed()
    try:
        runs = new_runs(args)
        rollouts = async_rollouts(runs[0]) if args.actors else None
    except (UsageError, ValueError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    if rollouts is not None:
        return train_async(runs[0], rollouts, open_folder=lambda: start_logs(runs[0]))
    for run in runs:
        start_logs(run)
    return train(runs)


def start_logs(run: Run) -> None:
    """The first write into a new run's folder: create it with its run files, and the model's logger."""
    write_run_files(run.run_dir, run.args, run.config)
    run.model.set_logger(make_logger(run.run_dir, run.args))


if __name__ == "__main__":
    sys.exit(main())
