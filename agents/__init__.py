"""PPO variants for off-policy-lagged rollouts, on stable-baselines3.

``ALGOS`` maps the ``--algo`` ids of ``train.py`` to classes. All share the lag machinery of
:class:`~agents.lagged.LaggedPPO`; only the policy loss differs:

- ``ppo``: stock SB3 PPO loss (``LaggedPPO``);
- ``dualclip``: dual-clip PPO (``DualClipPPO``);
- ``decoupled``: decoupled PPO, clip against a proximal policy, importance weight against mu (``DecoupledPPO``).
"""

from agents.decoupled import DecoupledPPO
from agents.dualclip import DualClipPPO
from agents.lagged import LAG_MODES, LaggedPPO

ALGOS = {"ppo": LaggedPPO, "dualclip": DualClipPPO, "decoupled": DecoupledPPO}

__all__ = ["ALGOS", "LAG_MODES", "DecoupledPPO", "DualClipPPO", "LaggedPPO"]
