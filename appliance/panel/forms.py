"""Checks of submitted form fields; each failure is a FormError with a line for the page."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any


class FormError(ValueError):
    """A submitted field is missing, too long or of the wrong kind."""


def text_field(
    form: Mapping[str, Any], name: str, *, max_len: int, min_len: int = 1, strip: bool = True
) -> str:
    value = form.get(name)
    if value is None:
        raise FormError(f"{name} is missing")
    if not isinstance(value, str):
        raise FormError(f"{name} must be text")
    if strip:
        value = value.strip()
    if len(value) > max_len:
        raise FormError(f"{name} is too long (at most {max_len} characters)")
    if len(value) < min_len:
        raise FormError(
            f"{name} is required" if min_len == 1 else f"{name} needs at least {min_len} characters"
        )
    return value


def choice_field(form: Mapping[str, Any], name: str, choices: Collection[str]) -> str:
    value = text_field(form, name, max_len=64)
    if value not in choices:
        raise FormError(f"{name} must be one of {', '.join(sorted(choices))}, not {value!r}")
    return value


def int_field(
    form: Mapping[str, Any],
    name: str,
    *,
    minimum: int,
    maximum: int,
    choices: Collection[int] | None = None,
) -> int:
    raw = text_field(form, name, max_len=12)
    try:
        value = int(raw)
    except ValueError:
        raise FormError(f"{name} must be a whole number, not {raw!r}") from None
    if choices is not None and value not in choices:
        allowed = ", ".join(str(c) for c in sorted(choices))
        raise FormError(f"{name} must be one of {allowed}, not {value}")
    if not minimum <= value <= maximum:
        raise FormError(f"{name} must be between {minimum} and {maximum}, not {value}")
    return value


def flag_field(form: Mapping[str, Any], name: str) -> bool:
    """A checkbox: present and one of the usual 'on' values means True."""
    value = form.get(name)
    if value is None:
        return False
    if value not in ("on", "true", "1", "yes"):
        raise FormError(f"{name} must be a checkbox value, not {value!r}")
    return True


def page_number(args: Mapping[str, Any]) -> int:
    """The 1-based page of a listing; anything but a positive number means the first page."""
    raw = args.get("page", "1")
    return int(raw) if isinstance(raw, str) and raw.isdigit() and 0 < int(raw) < 10**6 else 1
