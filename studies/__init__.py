"""Studies: grid files (:mod:`studies.grid`), running them (:mod:`studies.execute`), per-run records
(:mod:`studies.records`) and reports with figures (:mod:`studies.report`).

CLI-side code for ``sweep.py``: ``agents`` and ``envs`` never import it."""
