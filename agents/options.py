"""The names of every option the arms take, without importing torch or SB3 (``train.py --help`` and the sweep's
grid checks read them; the modules that implement the options import them from here)."""

#: ``--algo`` ids, in the order tables list them (``agents.ALGOS`` maps them to classes)
ALGO_IDS = ("ppo", "dualclip", "decoupled")
#: how the lag is spread over rollouts and environments (agents/behavior.py); ``empirical`` draws it from given
#: weights (agents/lag_weights.py)
LAG_MODES = ("fixed", "uniform", "per-env", "empirical")
#: how a per-step loss is aggregated (agents/losses.py, verl's modes)
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
#: what happens to decoupled steps whose weight pi_prox / mu exceeds w_max: ``truncate`` (openai/ppo-ewma: the
#: weight becomes w_max) or ``filter`` (AReaL's behav_imp_weight_cap: the weight becomes 0, the step drops out)
IS_WEIGHT_MODES = ("truncate", "filter")
#: how the behaviour temperature is spread over environments (agents/behavior.py)
TEMPERATURE_MODES = ("fixed", "per-env")
#: the decoupled arm's proximal policy pi_prox: ``start`` (the learner at the start of each update) or ``ewma``
#: (PPO-EWMA: a moving average of the learner's parameters, read in every minibatch; agents/ewma.py)
PROX_MODES = ("start", "ewma")
