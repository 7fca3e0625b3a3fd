"""PPO variants for off-policy-lagged rollouts, on stable-baselines3.

``ALGOS`` maps the ``--algo`` ids of ``train.py`` to classes, the registry of arms. All share the trainer
:class:`~agents.lagged.LaggedPPO`; only the objective (:mod:`agents.objectives`) differs:

- ``ppo``: stock SB3 PPO loss (``LaggedPPO``, objective ``ClippedSurrogate``);
- ``dualclip``: dual-clip PPO (``DualClipPPO``, objective ``DualClip``);
- ``decoupled``: decoupled PPO, clip against a proximal policy, importance weight against mu (``DecoupledPPO``,
  objective ``Decoupled``).

The classes load torch and SB3 on first use (``import agents.options`` alone stays light, so
``train.py --help`` answers at once).
"""

from typing import Any

from agents.options import ALGO_IDS, LAG_MODES

__all__ = ["ALGOS", "ALGO_IDS", "LAG_MODES", "DecoupledPPO", "DualClipPPO", "LaggedPPO"]


def __getattr__(name: str) -> Any:
    if name in ("ALGOS", "DecoupledPPO", "DualClipPPO", "LaggedPPO"):
        from agents.decoupled import DecoupledPPO
        from agents.dualclip import DualClipPPO
        from agents.lagged import LaggedPPO

        algos = {"ppo": LaggedPPO, "dualclip": DualClipPPO, "decoupled": DecoupledPPO}
        assert tuple(algos) == ALGO_IDS
        globals().update(ALGOS=algos, DecoupledPPO=DecoupledPPO, DualClipPPO=DualClipPPO, LaggedPPO=LaggedPPO)
        return globals()[name]
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
