"""The one base of the appliance's own errors: each carries the HTTP status the local API
answers with, so the dispatcher maps every wing's refusals in one place instead of listing
each wing's exception classes."""

from __future__ import annotations


class ApplianceError(Exception):
    """A refusal or failure whose message is fit to show; ``status``: the HTTP status.

    Subclasses set a class default (400 unless they say otherwise); one instance may carry
    another (``DatasetError("...", 404)``)."""

    status: int = 400

    def __init__(self, message: str = "", status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
