"""``python -m bench [SUITE ...] [--option value ...]``: run benchmark suites (all by default).

Each suite is a function taking the remaining command-line arguments and returning an exit
code; add a suite by adding it to :data:`SUITES`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from bench import currents, delivery, firehose, system

SUITES: dict[str, Callable[[Sequence[str]], int]] = {
    "firehose": firehose.main,
    "delivery": delivery.main,
    "currents": currents.main,
    "system": system.main,
}
FAULT_SUITES = ("currents",)
"""Suites that take ``--faults``: ``scripts/bench --faults`` runs these (add yours here)."""


def main(argv: Sequence[str]) -> int:
    """Run the suites named first (all when none), passing them the options that follow."""
    args = list(argv)
    if args[:1] in (["-h"], ["--help"]):
        sys.stdout.write(f"usage: scripts/bench [{' '.join(SUITES)}] [suite options]\n")
        return 0
    names = []
    while args and not args[0].startswith("-"):
        names.append(args.pop(0))
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        sys.stderr.write(f"unknown suite {unknown[0]!r}; known: {', '.join(SUITES)}\n")
        return 2
    status = 0
    if not names and "--faults" in args:
        names = list(FAULT_SUITES)
    for name in names or list(SUITES):
        status = max(status, SUITES[name](args))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
