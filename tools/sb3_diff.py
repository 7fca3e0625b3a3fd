"""Show how our copies of SB3's methods differ from the installed stable-baselines3.

    python tools/sb3_diff.py            # unified diffs, then a count of unmarked differing lines per method

``LaggedPPO.collect_rollouts`` is SB3's ``OnPolicyAlgorithm.collect_rollouts`` and ``LaggedPPO.train`` (with the
minibatch body and the logging it calls, ``_minibatch_loss`` and ``_record_update``) is SB3's ``PPO.train``, each with its differing lines marked
``# LAG`` or ``# OURS`` (on the line; on a comment line that opens a changed block, which runs to the next line
that is SB3's verbatim; or on a line that opens an ``if`` or ``for`` block, for its body). Run this after upgrading
stable-baselines3 to see what moved upstream. tests/test_sb3_diff.py runs it: a differing line that is
neither marked nor inside a marked block fails there.
"""

from __future__ import annotations

import difflib
import inspect
import sys
import textwrap
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MARKERS = ("# LAG", "# OURS")


def _body(func) -> List[str]:
    """The source lines of ``func`` without its signature and docstring, dedented, blank lines dropped."""
    source = textwrap.dedent(inspect.getsource(func))
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith(":") and "def " in lines[0]) + 1
    body = lines[start:]
    if body and body[0].strip().startswith(('"""', "'''")):
        quote = body[0].strip()[:3]
        end = 0 if body[0].strip().count(quote) >= 2 and len(body[0].strip()) > 3 else next(
            i for i, line in enumerate(body[1:], 1) if quote in line)
        body = body[end + 1 :]
    return [line for line in body if line.strip()]


def pairs() -> List[Tuple[str, List[str], List[str]]]:
    """(name, SB3's lines, our lines) for each copied method."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    from agents.lagged import LaggedPPO

    ours_train = _body(LaggedPPO.train) + _body(LaggedPPO._minibatch_loss) + _body(LaggedPPO._record_update)
    return [
        ("collect_rollouts", _body(OnPolicyAlgorithm.collect_rollouts), _body(LaggedPPO.collect_rollouts)),
        ("train", _body(PPO.train), ours_train),
    ]


def _code(line: str) -> str:
    """A line without its trailing comment and surrounding blanks."""
    return line.split("  #", 1)[0].strip()


def unmarked(sb3: List[str], ours: List[str]) -> List[str]:
    """Our lines that SB3's method does not have and that no marker covers. A marker covers its own line; on a
    comment line it also covers the changed lines below it, up to the next line that is SB3's verbatim; on a line
    that opens a block (``if ...:``) it also covers the block's body. Trailing comments and lines of brackets alone
    do not count as differences."""
    theirs = {_code(line) for line in sb3}
    out: List[str] = []
    after_comment, body_indent = False, None
    for line in ours:
        indent = len(line) - len(line.lstrip())
        code = _code(line)
        if body_indent is not None and indent <= body_indent:
            body_indent = None
        marked = any(m in line for m in MARKERS)
        if line.strip().startswith("#"):  # a comment line: it opens a changed block when it is marked
            after_comment = after_comment or marked
            continue
        if marked and code.endswith(":"):
            body_indent = indent
        if code in theirs:
            after_comment = False
            continue
        if marked or after_comment or body_indent is not None or not code.strip(")]}"):
            continue
        out.append(line.strip())
    return out


def main() -> int:
    import stable_baselines3

    print(f"stable-baselines3 {stable_baselines3.__version__}")
    for name, sb3, ours in pairs():
        diff = list(difflib.unified_diff(sb3, ours, f"SB3 {name}", f"ours {name}", lineterm="", n=1))
        same = len(set(map(str.strip, sb3)) & set(map(str.strip, ours)))
        print(f"\n=== {name}: {len(ours)} lines of ours, {same} of them SB3's verbatim ===")
        print("\n".join(diff))
        missing = unmarked(sb3, ours)
        print(f"--- {name}: {len(missing)} differing line(s) without a marker" + ("" if not missing else ":"))
        for line in missing:
            print(f"    {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
