"""Where sealed blobs live, so that KEK rotation can find and re-seal every one of them."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BlobStore(Protocol):
    """A set of named sealed blobs."""

    def names(self) -> list[str]: ...

    def read(self, name: str) -> bytes: ...

    def replace(self, blobs: dict[str, bytes]) -> None:
        """Store each blob under its name.

        Each single replacement must be atomic: after a crash every name holds either its old
        or its new bytes, never a mix.
        """
        ...


class DirBlobStore:
    """Blobs as files NAME.sealed in one directory, written via temporary file and rename."""

    SUFFIX = ".sealed"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"blob name {name!r} must be 1..128 of A-Z a-z 0-9 . _ -")
        return self.directory / (name + self.SUFFIX)

    def names(self) -> list[str]:
        return sorted(p.name[: -len(self.SUFFIX)] for p in self.directory.glob("*" + self.SUFFIX))

    def read(self, name: str) -> bytes:
        path = self.path(name)
        if not path.is_file():
            raise KeyError(f"no sealed blob named {name!r} in {self.directory}")
        return path.read_bytes()

    def write(self, name: str, data: bytes) -> None:
        self.replace({name: data})

    def replace(self, blobs: dict[str, bytes]) -> None:
        # Write and sync every new file first, then rename them in: a crash before the renames
        # leaves only stray temporaries, one during them leaves each blob old or new.
        staged = []
        for name, data in blobs.items():
            final = self.path(name)
            tmp = final.with_name(final.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            staged.append((tmp, final))
        for tmp, final in staged:
            os.replace(tmp, final)
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def discard_temporaries(self) -> None:
        for tmp in self.directory.glob("*" + self.SUFFIX + ".tmp"):
            tmp.unlink()
