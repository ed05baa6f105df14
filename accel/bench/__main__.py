"""``python -m accel.bench {paillier,ntt} ...``: dispatch to one benchmark's own parser."""

from __future__ import annotations

import importlib
import sys

SUITES = {"paillier": "accel.bench.paillier", "ntt": "accel.bench.ntt"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUITES:
        print(f"usage: python -m accel.bench {{{','.join(SUITES)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(SUITES[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
