"""Jinja filters that turn the daemon's raw figures into what a person reads."""

from __future__ import annotations

from typing import Any

from flask import Flask

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "—"
    size = float(value)
    for unit in _UNITS:
        if abs(size) < 1024 or unit == _UNITS[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} {_UNITS[-1]}"


def when(value: Any) -> str:
    """An ISO-8601 UTC timestamp shortened to the second; '—' when absent."""
    if not value:
        return "—"
    text = str(value).replace("T", " ")
    return text[:19]


def duration(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    seconds = int(value)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds} s"


def devices(value: Any) -> str:
    """A backend's device list, whether the daemon sends names or objects with a name."""
    if not value:
        return "no device"
    if not isinstance(value, list):
        value = [value]
    names = []
    for device in value:
        if isinstance(device, dict):
            names.append(str(device.get("name") or device.get("device") or device))
        else:
            names.append(str(device))
    return ", ".join(names)


def install(app: Flask) -> None:
    app.add_template_filter(human_bytes, "bytes")
    app.add_template_filter(when)
    app.add_template_filter(duration)
    app.add_template_filter(devices)
