"""The node: what the daemon knows and does, independent of how it is asked (HTTP, tests).

It owns the store, the job runner, the hardware inventory, the profile decision and, from
start() to stop(), the trust root: the HSM session and the TPM context, each driven from its
own single thread (the keystore's owner thread, the trust root's TPM thread).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import accel.backends
from appliance import __version__
from appliance.accounts.users import Users
from appliance.errors import ApplianceError
from appliance.federation import identity as federation_identity
from appliance.federation.card import make_card
from appliance.federation.grade_policy import GradePolicy
from appliance.federation.mpjobs import Datasets, MultiParty
from appliance.federation.online_predict import OnlinePredict
from appliance.federation.peers import PeerError, Peers
from appliance.federation.private_query import (
    BUDGET_SETTING,
    DEFAULT_KEY_BUDGET,
    PrivateQuery,
)
from appliance.federation.service import Federation, Identity
from appliance.host import live
from appliance.host.inventory import Inventory, detect
from appliance.host.profile import (
    ProfileError,
    ProfileMatch,
    load_profiles,
    match,
    parse_override,
    profile_names,
)
from appliance.jobs.registry import all_kinds
from appliance.jobs.runner import JobRunner, describe_error
from appliance.state.statedir import StateDir
from appliance.state.store import Store, utc_now
from appliance.trust import TrustRoot, audit
from appliance.trust.layout import TrustLayout
from appliance.trust.ledger import Ledger, read_head

log = logging.getLogger("pec.node")

DEFAULT_SETTINGS = {"session_timeout_s": 900}
GRADE_POLICY_SETTING = "grade_policy"  # the node's overrides of the default grade policy
SETTING_LIMITS = {"session_timeout_s": (60, 86400)}


class SettingsError(ApplianceError, ValueError):
    """A settings change names an unknown setting or a value out of range."""


class StateBusy(RuntimeError):
    """The state directory is locked by a daemon, so it cannot be changed from outside."""


def node_identity(state: StateDir, configured: str) -> tuple[str, str | None]:
    """The node's id and, when config.toml disagrees with it, a warning.

    The id the trust root was provisioned with wins: it is in every attestation bundle and the
    ledger, and peers pin it; config.toml's copy is only a copy an edit can change.
    """
    path = TrustLayout(state.path).trust_json
    try:
        provisioned = json.loads(path.read_text()).get("node_id")
    except FileNotFoundError:
        return configured, None
    except (OSError, ValueError, AttributeError) as exc:
        return configured, f"cannot read the provisioned node id from {path}: {exc}"
    if not isinstance(provisioned, str) or not provisioned or provisioned == configured:
        return configured, None
    return provisioned, (
        f"config.toml says node_id {configured!r} but the trust root was provisioned as "
        f"{provisioned!r}, the id attestation carries: this node is {provisioned!r}; put it "
        "back in config.toml")


class Node:
    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.config = state.config()
        self.node_id, self.identity_warning = node_identity(state, self.config.node_id)
        self.profiles = load_profiles(self.config.profiles_dir)
        self.store = Store(state.db_path)
        audit.bind(self.store)
        self.users = Users(self.store)
        self.runner = JobRunner(self.store, all_kinds(), max_jobs=self.config.max_jobs)
        self.trust: TrustRoot | None = None
        self.ledger: Ledger | None = None
        # federation: peers and data sets always; the interconnect and multi-party jobs only
        # with an open trust root (the TLS key is sealed by the HSM's KEK)
        self.peers = Peers(self.store)
        self.datasets = Datasets(str(state.db_path))
        self.federation: Federation | None = None
        self.multiparty: MultiParty | None = None
        self.pir: PrivateQuery | None = None
        self.online: OnlinePredict | None = None
        self.federation_error: str | None = None
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.inventory: Inventory = detect(self.config.root, survey=False)
        self.backends: list[accel.backends.BackendStatus] = []
        self.profile: ProfileMatch = self._decide()

    # lifecycle
    def start(self) -> list[int]:
        """Open the trust root, survey the accelerators, apply the profile, recover and start
        the job worker."""
        live.prime()
        self.open_trust()
        # route by the table the last calibrate job stored (PEC_ACCEL_CACHE, which the daemon
        # points into its state directory), not by whatever this process held before
        accel.backends.reload_calibration()
        self.refresh()
        self.start_federation()
        interrupted = self.runner.recover()
        self.runner.start()
        return interrupted

    def start_federation(self) -> None:
        """Unseal the interconnect identity, start the listener, accept multi-party jobs. A
        failure leaves the node serving, degraded with the reason."""
        trust = self.trust
        if trust is None or not trust.provisioned or trust.signer is None:
            self.federation_error = ("federation off: the trust root's keys are not open "
                                     "(the interconnect key is sealed by the HSM)")
            return
        try:
            key, cert = federation_identity.load_or_create(trust, self.node_id,
                                                           self.config.organisation)
            fed = Federation(
                Identity(self.node_id, self.config.organisation, self.config.endpoint or "",
                         key, cert),
                self.peers, listen=self.config.interconnect_listen, attest=trust.attest)
            fed.start()
        except Exception as exc:  # a port in use, a key that will not unseal: say so, go on
            self.federation_error = f"federation off: {describe_error(exc)}"
            log.error("%s", self.federation_error)
            return
        signer = trust.signer
        self.federation = fed
        self.multiparty = MultiParty(
            fed, self.store, self.datasets, self.grade_policy,
            submit=self.submit_job, cancel=self.runner.cancel, job=self.runner.get,
            sign=signer.sign, output_root=self.state.path / "outputs", secrets=trust)
        self.runner.multiparty = self.multiparty
        self.pir = PrivateQuery(
            fed, self.datasets, self.grade_policy, self.state.path, trust,
            budget=lambda: self.store.get_setting(BUDGET_SETTING, DEFAULT_KEY_BUDGET))
        self.online = OnlinePredict(fed, self.datasets, self.grade_policy,
                                    self.state.path / "outputs")
        self.federation_error = None

    def grade_policy(self) -> GradePolicy:
        """The data classification policy: the default table with this node's overrides."""
        return GradePolicy(self.store.get_setting(GRADE_POLICY_SETTING, None))

    def set_grade_policy(self, overrides: dict[str, Any] | None, actor: str) -> dict[str, Any]:
        policy = GradePolicy(overrides)  # refuses a malformed override, naming the rule
        self.store.set_setting(GRADE_POLICY_SETTING, overrides)
        audit.record(actor, "federation.grade_policy", "grade-policy", {"overrides": overrides})
        return policy.to_dict()

    def node_card(self) -> dict[str, Any]:
        """This node's card: what `peers invite` prints for a peer to enrol."""
        if self.federation is None or self.trust is None or self.trust.signer is None:
            raise PeerError(self.federation_error or "federation off", 503)
        if not self.config.endpoint:
            raise PeerError("this node has no interconnect endpoint: init "
                            "--interconnect-listen HOST:PORT first", 409)
        signer = self.trust.signer
        head = read_head(self.state.db_path).to_json()
        return make_card(
            node_id=self.node_id, organisation=self.config.organisation,
            endpoint=self.config.endpoint,
            certificate_pem=self.federation.ident.cert_pem.decode(),
            ledger_head=head, node_public_pem=self.trust.signing_public_pem or "",
            attest=self.trust.attest, sign=signer.sign)

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
        if self.federation is not None:
            self.federation.stop()
            self.federation = self.multiparty = self.runner.multiparty = self.pir = None
            self.online = None
        self.datasets.close()
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
        # read raw: a corrupt row is ignored with a reason, never a crash at start
        rows = self.store.query("SELECT value FROM settings WHERE key='profile_override'")
        override, error = parse_override(rows[0][0] if rows else None,
                                         profile_names(self.profiles))
        if error:
            error += (": ignored, the hardware decides; clear it with: pec-appliance profile "
                      f"--clear-override --state-dir {self.state.path}")
            log.error("%s", error)
        decided = match(self.inventory, self.profiles, choice=self.config.mini_capability,
                        override=override)
        decided.override_error = error
        return decided

    def _apply_router_policy(self) -> None:
        policy = self.profile.router_policy
        self.store.set_meta("router_policy", policy)
        try:
            accel.backends.set_policy(policy)
        except Exception as exc:  # the daemon still runs, on the policy the router keeps
            log.warning("the accel router refused policy %s: %s", policy, describe_error(exc))

    def set_override(self, profile: Any, actor: str, *, apply: bool = True) -> dict[str, Any]:
        """Override the hardware's profile (None: let the hardware decide again), audited.

        ``apply=False`` leaves the accel router alone: for a change made with the daemon
        stopped, which applies it at its next start."""
        names = profile_names(self.profiles)
        if profile is not None and profile not in names:
            raise ProfileError(f"profile must be one of {', '.join(names)} or null")
        before = self.profile.profile
        override = None if profile is None else {"profile": profile, "by": actor, "at": utc_now()}
        self.store.set_setting("profile_override", override)
        self.profile = self._decide()
        if apply:
            self._apply_router_policy()
        audit.record(actor, "profile.override", f"node:{self.node_id}",
                     {"from": before, "to": self.profile.profile, "override": profile})
        return self.profile_view()

    # views served by the API
    def degraded_reasons(self) -> list[str]:
        # a backend whose runtime is absent (no CUDA on a box without NVIDIA) is expected;
        # one that loads and computes wrong, a missing CPU path, or accelerator hardware that
        # no backend drives is not
        reasons = [f"backend {b['name']} unhealthy: {b['reason']}" for b in self.backends
                   if not b["healthy"] and (b["loaded"] or b["name"] == "cpu")]
        device_backends = [b for b in self.backends if b["name"] != "cpu" and b["healthy"]]
        if self.inventory.accelerators and self.backends and not device_backends:
            kinds = sorted({a.kind for a in self.inventory.accelerators})
            reasons.append(f"accelerator hardware ({', '.join(kinds)}) present but no healthy "
                           "device backend drives it")
        reasons += [f"network port {n.name} link down" for n in self.inventory.nics if not n.up]
        reasons += self.profile.notes
        if self.profile.override_error:
            reasons.append(self.profile.override_error)
        if self.identity_warning:
            reasons.append(self.identity_warning)
        reasons += self._trust_reasons()
        if self.federation_error and self.config.interconnect_listen:
            reasons.append(self.federation_error)
        reasons += audit.problems()  # a broken audit chain found at start
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
        # the calibration the router routes by (installed by the last calibrate job)
        calibration = accel.backends.calibration()
        out = []
        for b in self.backends:
            entry: dict[str, Any] = {**b, "calibration": None}
            if b["name"] in calibration.timings:
                entry["calibration"] = {
                    "ops_per_s": calibration.ops_per_s(b["name"]),
                    "crossover": calibration.thresholds.get(b["name"], {}),
                    "time": calibration.measured_at,
                }
            out.append(entry)
        return out

    def status(self) -> dict[str, Any]:
        reasons = self.degraded_reasons()
        return {
            "node_id": self.node_id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "profile": self.profile.profile,
            "hardware_profile": self.profile.hardware_profile,
            "override": self.profile.override,
            "capabilities": self.profile.capabilities,
            "router_policy": self.profile.router_policy,
            "degraded": bool(reasons),
            "degraded_reasons": reasons,
            "health": {
                **(self.trust.health() if self.trust is not None else {
                    "hsm": {"ok": None, "detail": "not configured"},
                    "tpm": {"ok": None, "detail": "not configured"}}),
                "backends": [dict(b) for b in self.backends],
            },
            # what the ledger does, whatever the profile offers: records are signed whenever
            # the trust root's signing key is unlocked
            "ledger_signed": audit.signing(),
            "federation": {
                "listening": self.federation.port if self.federation else None,
                "endpoint": self.config.endpoint, "organisation": self.config.organisation,
                "peers": len(self.peers.list()), "error": self.federation_error},
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

    def submit_job(self, kind: Any, params: Any, actor: str,
                   hold: str | None = None) -> dict[str, Any]:
        return self.runner.submit(kind, params, actor, self.profile.capabilities,
                                  self.profile.profile, hold)


@contextmanager
def offline_node(state: StateDir) -> Iterator[Node]:
    """The node of a stopped daemon, to read or repair its store (no trust root, no jobs).

    Holds the daemon's state lock meanwhile, so a daemon cannot start and write beside it;
    audit records go to the unsigned trail and are signed into the ledger at the next start.
    """
    state.check()
    state.run_dir.mkdir(exist_ok=True)
    path = state.run_dir / "noded.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateBusy(
                f"a daemon holds {path} but does not answer on its socket; wait until it is "
                "ready, or stop it first") from None
        node = Node(state)
        try:
            yield node
        finally:
            node.stop()
    finally:
        os.close(fd)
