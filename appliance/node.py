"""The node: what the daemon knows and does, independent of how it is asked (HTTP, tests).

It owns the store, the job runner, the hardware inventory, the profile decision and, from
start() to stop(), the trust root: the HSM session and the TPM context, each driven from its
own single thread (the keystore's owner thread, the trust root's TPM thread).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import accel.backends
from appliance import __version__, audit, live
from appliance.backend_survey import BackendReport, describe_error
from appliance.inventory import Inventory, detect
from appliance.job_kinds import KINDS
from appliance.jobs import JobRunner
from appliance.ledger import Ledger
from appliance.profile import ProfileError, ProfileMatch, load_profiles, match, profile_names
from appliance.statedir import StateDir
from appliance.store import Store, utc_now
from appliance.trust import TrustRoot
from appliance.users import Users

log = logging.getLogger("pec.node")

DEFAULT_SETTINGS = {"session_timeout_s": 900}
SETTING_LIMITS = {"session_timeout_s": (60, 86400)}


class SettingsError(ValueError):
    """A settings change names an unknown setting or a value out of range."""


class Node:
    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.config = state.config()
        self.profiles = load_profiles(self.config.profiles_dir)
        self.store = Store(state.db_path)
        audit.bind(self.store)
        self.users = Users(self.store)
        self.runner = JobRunner(self.store, KINDS)
        self.trust: TrustRoot | None = None
        self.ledger: Ledger | None = None
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.inventory: Inventory = detect(self.config.root, survey=False)
        self.backends: list[BackendReport] = []
        self.profile: ProfileMatch = self._decide()

    # lifecycle
    def start(self) -> list[int]:
        """Open the trust root, survey the accelerators, apply the profile, recover and start
        the job worker."""
        live.prime()
        self.open_trust()
        self.refresh()
        interrupted = self.runner.recover()
        self.runner.start()
        return interrupted

    def open_trust(self) -> None:
        """Open the trust root (degraded, never raising, when HSM or TPM refuse) and point the
        audit trail at the signed ledger; records made while no signer existed are signed in."""
        self.trust = TrustRoot.open(self.state.path)
        self.runner.trust = self.trust
        if not self.trust.provisioned:
            log.warning("no trust root provisioned: audit records stay unsigned")
            return
        self.ledger = Ledger(self.state.db_path, signer=self.trust.signer)
        audit.bind(self.store, self.ledger, self.trust.signing_public_pem)
        if self.trust.degraded:
            log.warning("trust root degraded: %s", "; ".join(self.trust.degraded_reasons))
        carried = audit.carry_pending()
        if carried:
            log.info("signed %d audit records kept unsigned earlier into the ledger", carried)

    def stop(self) -> None:
        self.runner.stop()
        audit.bind(None)
        self.runner.trust = None
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None
        if self.trust is not None:
            self.trust.close()
            self.trust = None
        self.store.close()

    def refresh(self) -> None:
        inventory = detect(self.config.root, survey=True)
        with self._lock:
            self.inventory, self.backends = inventory, inventory.backends
        self.profile = self._decide()
        self._apply_router_policy()

    # profile
    def _decide(self) -> ProfileMatch:
        override = self.store.get_setting("profile_override")
        return match(self.inventory, self.profiles, choice=self.config.mini_capability,
                     override=override)

    def _apply_router_policy(self) -> None:
        policy = self.profile.router_policy
        self.store.set_meta("router_policy", policy)
        try:
            accel.backends.set_policy(policy)
        except Exception as exc:  # the daemon still runs, on the policy the router keeps
            log.warning("the accel router refused policy %s: %s", policy, describe_error(exc))

    def set_override(self, profile: Any, actor: str) -> dict[str, Any]:
        names = profile_names(self.profiles)
        if profile is not None and profile not in names:
            raise ProfileError(f"profile must be one of {', '.join(names)} or null")
        before = self.profile.profile
        override = None if profile is None else {"profile": profile, "by": actor, "at": utc_now()}
        self.store.set_setting("profile_override", override)
        self.profile = self._decide()
        self._apply_router_policy()
        audit.record(actor, "profile.override", f"node:{self.config.node_id}",
                     {"from": before, "to": self.profile.profile, "override": profile})
        return self.profile_view()

    # views served by the API
    def degraded_reasons(self) -> list[str]:
        # a backend whose runtime is absent (no CUDA on a box without NVIDIA) is expected;
        # one that loads and computes wrong, a missing CPU path, or accelerator hardware that
        # no backend drives is not
        reasons = [f"backend {b.name} unhealthy: {b.reason}" for b in self.backends
                   if not b.healthy and (b.loaded or b.name == "cpu")]
        device_backends = [b for b in self.backends if b.name != "cpu" and b.healthy]
        if self.inventory.accelerators and self.backends and not device_backends:
            kinds = sorted({a.kind for a in self.inventory.accelerators})
            reasons.append(f"accelerator hardware ({', '.join(kinds)}) present but no healthy "
                           "device backend drives it")
        reasons += [f"network port {n.name} link down" for n in self.inventory.nics if not n.up]
        reasons += self.profile.notes
        reasons += self._trust_reasons()
        return reasons

    def _trust_reasons(self) -> list[str]:
        if self.trust is None:
            return []
        if not self.trust.provisioned:
            return ["trust root not provisioned: no HSM keys, no attestation, audit records "
                    "unsigned (hash-chained only)"]
        reasons = [f"trust root: {r}" for r in self.trust.degraded_reasons]
        if not audit.signing():
            reasons.append(
                "audit ledger read-only (keys locked): records are kept in the unsigned "
                f"hash-chained trail ({audit.pending()} waiting) and signed in once the keys "
                "unlock")
        elif waiting := audit.pending():
            reasons.append(f"audit: {waiting} records could not be signed (HSM error) and "
                           "wait in the unsigned trail until the next start")
        return reasons

    def backends_view(self) -> list[dict[str, Any]]:
        calibration = self.store.get_setting("calibration")
        out = []
        for b in self.backends:
            entry = {"name": b.name, "healthy": b.healthy, "devices": b.devices,
                     "reason": b.reason, "calibration": None}
            if calibration and b.name in calibration.get("ops_per_s", {}):
                entry["calibration"] = {
                    "ops_per_s": calibration["ops_per_s"][b.name],
                    "crossover": calibration.get("crossover", {}).get(b.name),
                    "time": calibration.get("time"),
                }
            out.append(entry)
        return out

    def status(self) -> dict[str, Any]:
        reasons = self.degraded_reasons()
        return {
            "node_id": self.config.node_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "profile": self.profile.profile,
            "capabilities": self.profile.capabilities,
            "router_policy": self.profile.router_policy,
            "degraded": bool(reasons),
            "degraded_reasons": reasons,
            "health": {
                **(self.trust.health() if self.trust is not None else {
                    "hsm": {"ok": None, "detail": "not configured"},
                    "tpm": {"ok": None, "detail": "not configured"}}),
                "backends": [{"name": b.name, "healthy": b.healthy, "devices": b.devices}
                             for b in self.backends],
            },
            "jobs": {state: n for (_, state), n in self.runner.counts().items()},
        }

    def profile_view(self) -> dict[str, Any]:
        out = self.profile.to_dict()
        out["profiles"] = profile_names(self.profiles)
        out["matrix"] = {p.name: {"always": list(p.always), "choose_one": list(p.choose_one)}
                         for p in self.profiles}
        return out

    def need_trust(self) -> TrustRoot:
        """The open trust root, for the API's trust endpoints."""
        if self.trust is None:
            from appliance.trust import TrustNotProvisioned

            raise TrustNotProvisioned("the trust root is not open (the daemon is starting)")
        return self.trust

    def live(self) -> dict[str, Any]:
        return live.snapshot(str(self.state.path))

    def settings(self) -> dict[str, Any]:
        return {key: self.store.get_setting(key, default) for key, default in
                DEFAULT_SETTINGS.items()}

    def put_settings(self, changes: dict[str, Any], actor: str) -> dict[str, Any]:
        for key, value in changes.items():
            if key not in DEFAULT_SETTINGS:
                raise SettingsError(
                    f"unknown setting {key!r}; known: {', '.join(DEFAULT_SETTINGS)}"
                )
            lo, hi = SETTING_LIMITS[key]
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise SettingsError(f"{key} must be an integer between {lo} and {hi}")
        for key, value in changes.items():
            self.store.set_setting(key, value)
        if changes:
            audit.record(actor, "settings.change", "settings", changes)
        return self.settings()

    def submit_job(self, kind: Any, params: Any, actor: str) -> dict[str, Any]:
        return self.runner.submit(kind, params, actor, self.profile.capabilities,
                                  self.profile.profile)
