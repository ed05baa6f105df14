"""Create or complete a state directory: what ``pec-appliance init`` does.

It sits above state/, accounts/ and trust/ (it writes the config, the admin account, the first
audit records and provisions the trust root), which is why it is not a StateDir method: state/
stays a lower layer that trust.layout can build on without an import loop.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path

from appliance.accounts.users import Users, check_password
from appliance.federation.channel.identity import check_node_id
from appliance.state.atomicfile import write_atomic
from appliance.state.statedir import (
    MINI_CHOICES,
    TRUST_MODES,
    Config,
    StateDir,
    StateDirError,
    default_trust_mode,
    read_config,
)
from appliance.state.store import Store
from appliance.trust import audit


def init_state_dir(state: StateDir, *, root: str = "/", admin_password: str | None = None,
                   force: bool = False, mini_capability: str | None = None,
                   trust: str | None = None, hsm_pin: str | None = None,
                   federation: dict[str, str] | None = None,
                   node_id: str | None = None) -> dict:
    """Create or complete the state directory. Idempotent: an existing config and store
    are kept, and so is an existing admin (given the same password again, nothing
    changes; another password is refused unless ``force``), and so is a provisioned
    trust root.

    ``trust`` picks the trust-root mode of a new config (default: see
    ``default_trust_mode``); "hardware" is provisioned only when ``hsm_pin`` is given and
    config.toml names the ``pkcs11_module``. ``federation`` sets any of ``organisation``,
    ``interconnect_listen`` and ``interconnect_endpoint`` in config.toml, new or kept."""
    if admin_password is not None:
        check_password(admin_password)
    if mini_capability is not None and mini_capability not in MINI_CHOICES:
        raise StateDirError(f"mini capability must be one of {', '.join(MINI_CHOICES)}")
    if trust is not None and trust not in TRUST_MODES:
        raise StateDirError(f"trust mode must be one of {', '.join(TRUST_MODES)}")
    if node_id is not None:
        try:
            check_node_id(node_id)  # it is the CN and DNS name of the interconnect certificate
        except ValueError as exc:
            raise StateDirError(str(exc)) from None
    if not Path(root).is_dir():
        raise StateDirError(f"root directory {root!r} does not exist")
    state.path.mkdir(parents=True, exist_ok=True)
    os.chmod(state.path, 0o750)
    for sub in (state.run_dir, state.log_dir):
        sub.mkdir(exist_ok=True)
        os.chmod(sub, 0o750)
    created_config = False
    if not state.config_path.exists() or force:
        cfg = Config(node_id=node_id or str(uuid.uuid4()), root=str(Path(root).absolute()),
                     mini_capability=mini_capability or "mpc",
                     trust=trust or default_trust_mode(state.path))
        if state.config_path.exists():
            old = read_config(state.config_path)
            cfg = dataclasses.replace(old, root=cfg.root,
                                      mini_capability=mini_capability or old.mini_capability,
                                      trust=trust or old.trust)
        write_atomic(state.config_path, cfg.to_toml().encode(), mode=0o640)
        created_config = True
    cfg = read_config(state.config_path)
    if node_id is not None and node_id != cfg.node_id:
        raise StateDirError(f"this state directory is node {cfg.node_id!r}; a node's id does "
                            "not change (peers pinned it): make a new state directory")
    changes = {k: v for k, v in (federation or {}).items() if v is not None}
    if changes and any(getattr(cfg, k) != v for k, v in changes.items()):
        cfg = dataclasses.replace(cfg, **changes)
        write_atomic(state.config_path, cfg.to_toml().encode(), mode=0o640)
        cfg = read_config(state.config_path)  # the same checks as at every start
    store = Store(state.db_path)
    audit.bind(store)
    try:
        users = Users(store)
        admin_set = False
        if admin_password is not None:
            exists = users.get("admin") is not None
            if exists and not force and not users.password_matches("admin", admin_password):
                raise StateDirError(
                    "user 'admin' already exists with another password; pass --force to "
                    "replace it"
                )
            if not exists or force:
                users.create("admin", admin_password, "admin", "cli", replace=force)
                admin_set = True
        if created_config:
            audit.record("cli", "node.init", f"node:{cfg.node_id}", {"root": cfg.root})
        if changes:
            audit.record("cli", "node.federation_settings", f"node:{cfg.node_id}", changes)
        trust_result = _provision_trust(state, cfg, hsm_pin)
        if trust_result.get("created"):
            audit.record("cli", "trust.provision", f"node:{cfg.node_id}",
                         {k: trust_result[k] for k in
                          ("dev", "token_label", "ak_fingerprint", "signing_fingerprint")})
        return {"state_dir": str(state.path), "node_id": cfg.node_id,
                "config_created": created_config, "admin_set": admin_set,
                "users": [u["username"] for u in users.list()], "trust": trust_result}
    finally:
        audit.bind(None)
        store.close()

def _provision_trust(state: StateDir, cfg: Config, hsm_pin: str | None) -> dict:
    """Provision the trust root the config asks for (nothing when already provisioned)."""
    from appliance.trust import TrustError, provision
    from appliance.trust.layout import TrustLayout
    from hsm import HsmError
    from tee import TeeError

    provisioned = TrustLayout(state.path).trust_json.exists()
    if cfg.trust == "hardware" and not provisioned and (
        hsm_pin is None or not cfg.pkcs11_module
    ):
        return {"provisioned": False, "reason": (
            "hardware trust root not provisioned: set pkcs11_module in config.toml and "
            "pass the token's user PIN (--hsm-pin-file)")}
    try:
        if cfg.trust == "dev" or provisioned:
            result = provision(state.path, dev=True, node_id=cfg.node_id)
        else:
            result = provision(state.path, dev=False, node_id=cfg.node_id,
                               module=cfg.pkcs11_module, pin=hsm_pin, tcti=cfg.tpm_tcti)
    except (TrustError, HsmError, TeeError, OSError) as exc:
        raise StateDirError(f"trust root provisioning failed: {exc}") from exc
    return {"provisioned": True, **result}
