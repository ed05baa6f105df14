"""Compare the Debian packages an image build installed with images/packages.lock.

What the lock guarantees: the image's package set and its release (Debian 12, bookworm).
Versions in the lock are floors, not exact pins: the build takes what bookworm, -updates and
-security serve today, so a security update (a new kernel, a new OpenSSL) goes into the image on
the day it lands instead of stopping every build. Each package whose version moved past the lock
is recorded in the image manifest. What fails the build:

- a package in the lock that is not installed, or an installed package that is not in the lock
  (the package set changed: a dependency appeared or went away);
- a version older than the lock's (a mirror went back in time, or the wrong release).

Kernel packages carry their ABI in the name (linux-image-6.1.0-56-amd64); a security update may
move the ABI, so those names are compared with the ABI number left out.

    check_packages.py LOCK INSTALLED [--updates OUT.json] [--exact]

INSTALLED holds `name=version` lines. `--exact` asks for exactly the lock's versions (used to
reproduce an old build from a snapshot mirror). Exit status 1 with the differences on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

_ABI_NAME = re.compile(r"^(linux-(?:image|headers|kbuild|modules)-)\d+\.\d+\.\d+-\d+(-.*)?$")


class PackageDrift(Exception):
    """The installed package set breaks what the lock guarantees."""


def read_pins(text: str) -> dict[str, str]:
    pins = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("=")
        if not sep or not name or not version:
            raise PackageDrift(f"line {n}: expected name=version, got {raw!r}")
        pins[name] = version
    return pins


def family(name: str) -> str:
    """The package's name with a kernel ABI number replaced, so ABI bumps compare equal."""
    return _ABI_NAME.sub(r"\1ABI\2", name)


def version_compare(a: str, b: str) -> int:
    """Debian version order (dpkg's own rules): -1, 0 or 1."""
    for op, result in (("lt", -1), ("gt", 1)):
        if subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0:
            return result
    return 0


def compare(locked: dict[str, str], installed: dict[str, str], exact: bool = False) -> list[dict]:
    """The updates taken (name, locked, installed); raises PackageDrift on a broken guarantee."""
    by_family_lock = {family(n): (n, v) for n, v in locked.items()}
    by_family_inst = {family(n): (n, v) for n, v in installed.items()}
    problems = []
    missing = sorted(by_family_lock.keys() - by_family_inst.keys())
    extra = sorted(by_family_inst.keys() - by_family_lock.keys())
    problems += [f"{by_family_lock[f][0]}: in the lock, not installed" for f in missing]
    problems += [f"{by_family_inst[f][0]}: installed, not in the lock" for f in extra]
    updates = []
    for fam in sorted(by_family_lock.keys() & by_family_inst.keys()):
        lock_name, lock_version = by_family_lock[fam]
        inst_name, inst_version = by_family_inst[fam]
        order = version_compare(inst_version, lock_version)
        if order == 0 and lock_name == inst_name:
            continue
        if order < 0:
            problems.append(f"{inst_name}: installed {inst_version} is older than the lock's "
                            f"{lock_version}")
        elif exact:
            problems.append(f"{inst_name}: installed {inst_version}, the lock pins {lock_name} "
                            f"{lock_version} exactly")
        else:
            updates.append({"package": inst_name, "locked": f"{lock_name}={lock_version}",
                            "installed": inst_version})
    if problems:
        raise PackageDrift("\n".join(problems))
    return updates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("installed", type=Path)
    parser.add_argument("--updates", type=Path, help="write the updates taken here (JSON)")
    parser.add_argument("--exact", action="store_true", help="every version as locked")
    args = parser.parse_args(argv)
    try:
        updates = compare(read_pins(args.lock.read_text()), read_pins(args.installed.read_text()),
                          args.exact)
    except PackageDrift as e:
        print(f"check_packages: the installed packages break images/packages.lock:\n{e}",
              file=sys.stderr)
        return 1
    if args.updates:
        args.updates.write_text(json.dumps(updates, indent=1) + "\n")
    for u in updates:
        print(f"check_packages: update taken: {u['package']} {u['installed']} "
              f"(lock: {u['locked']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
