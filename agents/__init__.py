"""PPO variants for off-policy-lagged rollouts, on stable-baselines3.

``ALGOS`` maps the ``--algo`` ids of ``train.py`` to classes. All share the lag machinery of
:class:`~agents.lagged.LaggedPPO`; only the policy loss differs:

- ``ppo``: stock SB3 PPO loss (``LaggedPPO``);
- ``dualclip``: dual-clip PPO (``DualClipPPO``);
- ``decoupled``: decoupled PPO, clip against a proximal policy, importance weight against mu (``DecoupledPPO``).

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
