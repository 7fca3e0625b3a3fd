"""MinAtar (Young & Tian 2019, arXiv 1903.03176) as gymnasium environments: ``MinAtar/<Game>-v0`` and ``-v1``.

MinAtar re-implements five Atari games (Asterix, Breakout, Freeway, Seaquest, SpaceInvaders) on a 10x10 grid whose
state is a stack of binary channels, one per kind of object (4 to 10 of them). The ``minatar`` package (1.0.15)
ships a gymnasium module, but importing it does not register the ids, its frames are ``bool`` and channel-last, and
it imports seaborn and matplotlib at once. We register the ids ourselves with this module's :class:`MinAtarEnv`:

- ``MinAtar/<Game>-v1``: the game's minimal action set (Breakout 3 actions, Freeway 3, SpaceInvaders 4, Asterix 5,
  Seaquest 6);
- ``MinAtar/<Game>-v0``: MinAtar's full action set, which has **6** actions (no-op, left, up, right, down, fire)
  for every game, not Atari's 18 (``minatar.Environment.num_actions``).

These are the ids and action sets of ``minatar.gym.register_envs``. Everything else is MinAtar's default protocol:
sticky actions with probability 0.1 (the previous action repeats), difficulty ramping on, no reward clipping (every
reward is the game's own +1 or 0, so a ``Monitor``'s episode return is the game score). One addition: episodes are
truncated after :data:`MAX_EPISODE_STEPS` steps (gymnasium's ``TimeLimit``; SB3 bootstraps the value there). MinAtar
itself has no limit but Freeway's own 2,500 frames, and some episodes never end: in Seaquest the submarine starts at
the surface, and a policy that never dives (any constant action but "down": measured, 20,000 steps without an end
for five seeds) plays forever, so an evaluation of such a policy would never return. The cap is far above the
scores' usual episode lengths (gymnax's MinAtar caps at 1,000); pass ``max_episode_steps`` in ``env_kwargs`` to
change it, and ``sticky_action_prob`` or ``difficulty_ramping`` to change MinAtar's settings.

Observations are ``uint8`` in {0, 1}, **channel-first** ``(C, 10, 10)``, the layout torch's ``Conv2d`` reads, as a
``Box(0, 1)``: SB3 does not take that for an image (an image is ``Box(0, 255)``), so it feeds the frame to the
network as 0.0/1.0 floats, without dividing by 255 and without transposing it again.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Dict, List, Optional, Tuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

#: the MinAtar game module of each id's ``<Game>`` part
GAMES: Dict[str, str] = {
    "Asterix": "asterix",
    "Breakout": "breakout",
    "Freeway": "freeway",
    "Seaquest": "seaquest",
    "SpaceInvaders": "space_invaders",
}
PREFIX = "MinAtar/"
MAX_EPISODE_STEPS = 10_000  #: truncation of every MinAtar episode (see the module docstring)
HAS_MINATAR = importlib.util.find_spec("minatar") is not None  # (importing it costs ~3 s: matplotlib and seaborn)


def is_minatar(env_id: str) -> bool:
    """True for ``MinAtar/*`` ids."""
    return env_id.startswith(PREFIX)


def minatar_ids() -> List[str]:
    """Every id we register: each game with ``-v0`` (6 actions) and ``-v1`` (minimal action set)."""
    return [f"{PREFIX}{game}-{v}" for game in GAMES for v in ("v0", "v1")]


def register_minatar() -> bool:
    """Register :func:`minatar_ids` with gymnasium (once; the package is imported only when an env is made).
    False, and nothing registered, when ``minatar`` is not installed."""
    if not HAS_MINATAR:
        return False
    for game, module in GAMES.items():
        for version, minimal in (("v0", False), ("v1", True)):
            env_id = f"{PREFIX}{game}-{version}"
            if env_id not in gym.registry:
                gym.register(id=env_id, entry_point="envs.minatar:MinAtarEnv", max_episode_steps=MAX_EPISODE_STEPS,
                             kwargs={"game": module, "use_minimal_action_set": minimal})
    return True


class MinAtarEnv(gym.Env):
    """One MinAtar game as a gymnasium environment (see the module docstring for the protocol).

    :param game: MinAtar's module name of the game (``breakout``, ``space_invaders``, ...)
    :param use_minimal_action_set: True: the game's minimal action set; False: all 6 MinAtar actions
    :param sticky_action_prob: probability that the previous action is repeated instead (MinAtar's default 0.1)
    :param difficulty_ramping: whether the game speeds up over time (MinAtar's default True)
    :param render_mode: None or ``"rgb_array"`` (the 10x10 frame, each object kind in its own colour, scaled x16)
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}
    SCALE = 16  #: pixels per grid cell in rendered frames

    def __init__(self, game: str, use_minimal_action_set: bool = True, *, sticky_action_prob: float = 0.1,
                 difficulty_ramping: bool = True, render_mode: Optional[str] = None) -> None:
        from minatar import Environment  # imports matplotlib and seaborn (for MinAtar's own display)

        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: MinAtar envs render only 'rgb_array' (or None)")
        self.render_mode = render_mode
        self.game = Environment(env_name=game, sticky_action_prob=sticky_action_prob,
                                difficulty_ramping=difficulty_ramping)
        self.action_set = (list(self.game.minimal_action_set()) if use_minimal_action_set
                           else list(range(self.game.num_actions())))
        self.action_space = spaces.Discrete(len(self.action_set))
        height, width, channels = self.game.state_shape()
        self.observation_space = spaces.Box(0, 1, shape=(channels, height, width), dtype=np.uint8)

    def _observation(self) -> np.ndarray:
        """MinAtar's (10, 10, C) bool state as a contiguous (C, 10, 10) uint8 array."""
        return np.ascontiguousarray(self.game.state().transpose(2, 0, 1), dtype=np.uint8)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> Tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:
            # MinAtar draws everything (sticky actions, spawns) from one RandomState, which seed() replaces; without
            # a seed the stream continues, so a seeded first reset makes every later episode reproducible
            self.game.seed(seed)
        self.game.reset()
        return self._observation(), {}

    def step(self, action: Any) -> Tuple[np.ndarray, float, bool, bool, dict]:
        reward, terminal = self.game.act(self.action_set[int(action)])
        return self._observation(), float(reward), bool(terminal), False, {}

    def render(self) -> Optional[np.ndarray]:
        if self.render_mode != "rgb_array":
            return None
        state = self.game.state()  # (10, 10, C) bool
        n = state.shape[-1]
        # background black, channel k in a fixed hue; where objects overlap the highest channel is shown, as MinAtar
        palette = np.zeros((n + 1, 3), dtype=np.uint8)
        hues = np.linspace(0.0, 1.0, n, endpoint=False)
        palette[1:] = (255 * (0.55 + 0.45 * np.stack([np.cos(2 * np.pi * (hues + k / 3)) for k in range(3)], 1))
                       ).clip(0, 255).astype(np.uint8)
        index = np.amax(state * np.arange(1, n + 1), axis=2)
        frame = palette[index]
        return np.repeat(np.repeat(frame, self.SCALE, axis=0), self.SCALE, axis=1)
