"""TOML files whose errors name the file, the line and the key.

``tomllib`` reports syntax errors with a line number; a value of the wrong type or an unknown
key is valid TOML, so its line is found here by scanning the text for the key under its table.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*=")
_AT_LINE = re.compile(r"\(at line (\d+), column \d+\)")


class TomlFileError(ValueError):
    """A TOML file is malformed or holds a wrong value; says where."""

    def __init__(self, path: str | Path, line: int | None, key: str | None, problem: str):
        self.path, self.line, self.key, self.problem = str(path), line, key, problem
        where = f"{self.path}:{line}" if line else self.path
        what = f"key {key!r}: " if key else ""
        super().__init__(f"{where}: {what}{problem}")


class TomlDocument:
    """A parsed TOML file that can point at the line of any of its keys."""

    def __init__(self, path: str | Path, text: str, data: dict[str, Any]) -> None:
        self.path, self.text, self.data = Path(path), text, data

    @classmethod
    def load(cls, path: str | Path) -> TomlDocument:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TomlFileError(path, None, None, "file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TomlFileError(path, None, None, f"cannot read: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            match = _AT_LINE.search(str(exc))
            problem = _AT_LINE.sub("", str(exc)).strip()
            raise TomlFileError(
                path, int(match.group(1)) if match else None, None, f"invalid TOML: {problem}"
            ) from None
        return cls(path, text, data)

    def line_of(self, dotted_key: str) -> int | None:
        """Line number (1-based) of ``table.key``, or of the table header for a table."""
        *tables, key = dotted_key.split(".")
        wanted = ".".join(tables)
        current = ""
        for number, line in enumerate(self.text.splitlines(), start=1):
            table = _TABLE.match(line)
            if table:
                current = table.group(1).replace('"', "").replace(" ", "")
                if current == dotted_key:
                    return number
                continue
            match = _KEY.match(line)
            if match and current == wanted and match.group(1) == key:
                return number
        return None

    def error(self, dotted_key: str, problem: str) -> TomlFileError:
        line = self.line_of(dotted_key)
        if line is None and "." in dotted_key:
            line = self.line_of(dotted_key.rsplit(".", 1)[0])
        return TomlFileError(self.path, line, dotted_key, problem)

    def check_keys(self, table: dict[str, Any], allowed: set[str], prefix: str = "") -> None:
        """Refuse any key of ``table`` not in ``allowed`` (a typo would otherwise be ignored)."""
        for key in table:
            if key not in allowed:
                dotted = f"{prefix}{key}"
                known = ", ".join(sorted(allowed))
                raise self.error(dotted, f"unknown key; expected one of {known}")

    def get(
        self,
        table: dict[str, Any],
        key: str,
        kind: type | tuple[type, ...],
        prefix: str = "",
        default: Any = ...,
        what: str = "",
    ) -> Any:
        """``table[key]`` checked to be of ``kind`` (bool is never accepted as a number)."""
        dotted = f"{prefix}{key}"
        if key not in table:
            if default is ...:
                # a missing key has no line of its own: point at its table's header
                line = self.line_of(prefix.rstrip(".")) if prefix else None
                raise TomlFileError(self.path, line, dotted, "missing")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        wrong_bool = isinstance(value, bool) and bool not in kinds
        if wrong_bool or not isinstance(value, kinds):
            expected = what or " or ".join(k.__name__ for k in kinds)
            raise self.error(dotted, f"expected {expected}, got {value!r}")
        return value
