"""Reads of the host's /proc, /sys and /dev through a root prefix.

Every hardware read of the inventory goes through a ``HostFS`` so that the whole detector runs
on a fake tree built in a temporary directory (the same idea as node-feature-discovery).
"""

from __future__ import annotations

import os
from pathlib import Path


class HostFS:
    """The host's file system seen from ``root`` (``/`` on a real node)."""

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root directory {str(self.root)!r} does not exist")

    def path(self, absolute: str) -> Path:
        """The real path of the host path ``absolute`` (e.g. ``/proc/cpuinfo``)."""
        return self.root / absolute.lstrip("/")

    def read_text(self, absolute: str) -> str | None:
        """The file's text, or None when it is absent or cannot be read.

        sysfs answers some reads with an error instead of a value (a down NIC's ``speed``
        gives EINVAL), so any OSError means "unknown", never a crash.
        """
        try:
            return self.path(absolute).read_text(errors="replace")
        except (OSError, ValueError):
            return None

    def read_value(self, absolute: str) -> str | None:
        """The file's first line, stripped; None when absent, unreadable or empty."""
        text = self.read_text(absolute)
        if text is None:
            return None
        text = text.strip()
        return text.splitlines()[0].strip() if text else None

    def exists(self, absolute: str) -> bool:
        return os.path.lexists(self.path(absolute))

    def listdir(self, absolute: str) -> list[str]:
        """Sorted entry names, empty when the directory is absent."""
        try:
            return sorted(os.listdir(self.path(absolute)))
        except OSError:
            return []
