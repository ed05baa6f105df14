"""A party's session with one kind of message changed on its way out: how the operator tests
make a peer send garbage or vanish in the middle of a protocol."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.operators.base import OperatorError


class Faulty:
    """Forwards everything to ``real``; byte messages go through ``change(blob, count)``
    (count: how many were sent before), which returns the bytes to send instead."""

    def __init__(self, real: Any, change: Callable[[bytes, int], bytes]) -> None:
        self._real, self._change, self._sent = real, change, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def send_bytes(self, blob: bytes, *args: Any, **kw: Any) -> Any:
        self._sent += 1
        return self._real.send_bytes(self._change(blob, self._sent), *args, **kw)


def vanish_at(real: Any, who: str, count: int) -> Callable[[bytes, int], bytes]:
    """A change that aborts the session at the ``count``-th byte message (a party that
    loses power), leaving the others as they were."""
    def change(blob: bytes, sent: int) -> bytes:
        if sent == count:
            real.abort(f"{who} lost power")
            raise OperatorError(f"{who} lost power")
        return blob
    return change
