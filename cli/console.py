"""What train.py prints while it trains: SB3's table of the latest values, thinned out."""

from __future__ import annotations

from typing import Any, Dict, List

from stable_baselines3.common.logger import KVWriter, SeqWriter


class EveryNth(KVWriter, SeqWriter):
    """An SB3 logger output that passes on the first of every ``n`` tables (one per logger dump, i.e. per update)
    and every text line to ``inner``.

    SB3 writes the same dump to every output, so thinning the dump itself (``log_interval``) would thin the CSV and
    TensorBoard too, which the records read update by update; this thins the console only.
    """

    def __init__(self, inner: Any, n: int) -> None:
        if n < 1:
            raise ValueError(f"n={n}: pass on every n-th table with n >= 1")
        self.inner, self.n, self.dumps = inner, n, 0

    def write(self, key_values: Dict[str, Any], key_excluded: Dict[str, Any], step: int = 0) -> None:
        if self.dumps % self.n == 0:
            self.inner.write(key_values, key_excluded, step)
        self.dumps += 1

    def write_sequence(self, sequence: List[str]) -> None:
        self.inner.write_sequence(sequence)

    def close(self) -> None:
        self.inner.close()
