"""What the entry points (train.py, evaluate.py, sweep.py, bench/) share and the library does not need: argument
parsing that answers in one line, provenance (code version, library versions, machine), run-folder file names,
hyperparameter YAML, and trimming a resumed run's event files. ``agents/`` and ``envs/`` import nothing from here."""
