"""Studies: grid files (:mod:`studies.grid`), running them (:mod:`studies.execute`), per-run records
(:mod:`studies.records`) and reports with figures (:mod:`studies.report`). CLI-side code: ``agents`` never imports it."""
