"""Exceptions of the trust root glue."""

from appliance.errors import ApplianceError


class TrustError(ApplianceError):
    """A trust-root operation failed; the message says why. `status`: the HTTP status the
    daemon's API answers with."""

    status = 400


class TrustNotProvisioned(TrustError):
    """The state directory has no trust root yet (run provisioning first)."""

    status = 503


class TrustLocked(TrustError):
    """The keys are locked: the trust root opened degraded."""

    status = 503
