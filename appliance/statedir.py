"""The state directory: config.toml, the SQLite store, the socket and the log.

    DIR/config.toml       node settings (see ``Config``)
    DIR/pec.db            jobs, job logs, events, users, settings (SQLite, WAL)
    DIR/run/noded.sock    the local API (mode 0660)
    DIR/log/noded.log     the daemon's log
    DIR/trust.json, hsm/, tpm/, keys/   the trust root (see docs/trust.md)
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance import audit
from appliance.atomicfile import write_atomic
from appliance.client import SOCKET_PATH
from appliance.store import Store
from appliance.tomlfile import TomlDocument
from appliance.users import Users, check_password

DEFAULT_STATE_DIR = "/var/lib/pec"
LOG_LEVELS = ("debug", "info", "warning", "error")
MINI_CHOICES = ("mpc", "fl")
# "dev": SoftHSM2 token and swtpm under the state directory, provisioned by init.
# "hardware": the vendor PKCS#11 module and the TPM device, provisioned with the token's PIN.
TRUST_MODES = ("dev", "hardware")
DEVICE_TCTI = "device:/dev/tpmrm0"


class StateDirError(RuntimeError):
    """The state directory is missing, incomplete or would be clobbered."""


def default_state_dir() -> str:
    return os.environ.get("PEC_STATE_DIR", DEFAULT_STATE_DIR)


@dataclass(frozen=True)
class Config:
    node_id: str
    root: str = "/"
    mini_capability: str = "mpc"
    profiles_dir: str | None = None
    log_level: str = "info"
    trust: str = "dev"
    pkcs11_module: str | None = None
    tpm_tcti: str = DEVICE_TCTI

    def to_toml(self) -> str:
        lines = [
            "# PEC node daemon configuration (written by `pec-appliance init`).",
            f'node_id = "{self.node_id}"',
            "# where hardware is read from: /proc, /sys and /dev under this directory",
            f"root = {_toml_str(self.root)}",
            "# a Mini box carries one privacy-computing capability: \"mpc\" or \"fl\"",
            f'mini_capability = "{self.mini_capability}"',
            f'log_level = "{self.log_level}"',
        ]
        if self.profiles_dir:
            lines.append(f"profiles_dir = {_toml_str(self.profiles_dir)}")
        lines += [
            "# trust root: \"dev\" (SoftHSM2 token and swtpm under this directory) or",
            "# \"hardware\" (pkcs11_module's token and the TPM at tpm_tcti)",
            f'trust = "{self.trust}"',
            f"tpm_tcti = {_toml_str(self.tpm_tcti)}",
        ]
        if self.pkcs11_module:
            lines.append(f"pkcs11_module = {_toml_str(self.pkcs11_module)}")
        return "\n".join(lines) + "\n"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def default_trust_mode(state_dir: str | os.PathLike[str]) -> str:
    """The production state directory gets the hardware trust root, any other the dev one."""
    return "hardware" if Path(state_dir).absolute() == Path(DEFAULT_STATE_DIR) else "dev"


def read_config(path: str | Path) -> Config:
    doc = TomlDocument.load(path)
    data = doc.data
    doc.check_keys(data, {"node_id", "root", "mini_capability", "profiles_dir", "log_level",
                          "trust", "pkcs11_module", "tpm_tcti"})
    cfg = Config(
        node_id=doc.get(data, "node_id", str),
        root=doc.get(data, "root", str, default="/"),
        mini_capability=doc.get(data, "mini_capability", str, default="mpc"),
        profiles_dir=doc.get(data, "profiles_dir", str, default=None),
        log_level=doc.get(data, "log_level", str, default="info"),
        trust=doc.get(data, "trust", str, default=default_trust_mode(Path(path).parent)),
        pkcs11_module=doc.get(data, "pkcs11_module", str, default=None),
        tpm_tcti=doc.get(data, "tpm_tcti", str, default=DEVICE_TCTI),
    )
    if cfg.mini_capability not in MINI_CHOICES:
        raise doc.error("mini_capability", f"must be one of {', '.join(MINI_CHOICES)}")
    if cfg.log_level not in LOG_LEVELS:
        raise doc.error("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    if cfg.trust not in TRUST_MODES:
        raise doc.error("trust", f"must be one of {', '.join(TRUST_MODES)}")
    return cfg


class StateDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()

    config_path = property(lambda self: self.path / "config.toml")
    db_path = property(lambda self: self.path / "pec.db")
    run_dir = property(lambda self: self.path / "run")
    socket_path = property(lambda self: self.path / SOCKET_PATH)
    log_dir = property(lambda self: self.path / "log")

    def check(self) -> None:
        """Refuse to run on a directory ``init`` did not prepare."""
        if not self.config_path.is_file():
            raise StateDirError(
                f"{self.path} is not an initialised state directory (no config.toml); "
                f"run: pec-appliance init --state-dir {self.path}"
            )

    def config(self) -> Config:
        self.check()
        return read_config(self.config_path)

    def init(self, *, root: str = "/", admin_password: str | None = None,
             force: bool = False, mini_capability: str | None = None,
             trust: str | None = None, hsm_pin: str | None = None) -> dict:
        """Create or complete the state directory. Idempotent: an existing config and store
        are kept, and so is an existing admin (given the same password again, nothing
        changes; another password is refused unless ``force``), and so is a provisioned
        trust root.

        ``trust`` picks the trust-root mode of a new config (default: see
        ``default_trust_mode``); "hardware" is provisioned only when ``hsm_pin`` is given and
        config.toml names the ``pkcs11_module``."""
        if admin_password is not None:
            check_password(admin_password)
        if mini_capability is not None and mini_capability not in MINI_CHOICES:
            raise StateDirError(f"mini capability must be one of {', '.join(MINI_CHOICES)}")
        if trust is not None and trust not in TRUST_MODES:
            raise StateDirError(f"trust mode must be one of {', '.join(TRUST_MODES)}")
        if not Path(root).is_dir():
            raise StateDirError(f"root directory {root!r} does not exist")
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o750)
        for sub in (self.run_dir, self.log_dir):
            sub.mkdir(exist_ok=True)
            os.chmod(sub, 0o750)
        created_config = False
        if not self.config_path.exists() or force:
            cfg = Config(node_id=str(uuid.uuid4()), root=str(Path(root).absolute()),
                         mini_capability=mini_capability or "mpc",
                         trust=trust or default_trust_mode(self.path))
            if self.config_path.exists():
                old = read_config(self.config_path)
                cfg = Config(node_id=old.node_id, root=cfg.root,
                             mini_capability=mini_capability or old.mini_capability,
                             profiles_dir=old.profiles_dir, log_level=old.log_level,
                             trust=trust or old.trust, pkcs11_module=old.pkcs11_module,
                             tpm_tcti=old.tpm_tcti)
            write_atomic(self.config_path, cfg.to_toml().encode(), mode=0o640)
            created_config = True
        cfg = read_config(self.config_path)
        store = Store(self.db_path)
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
            trust_result = self._provision_trust(cfg, hsm_pin)
            if trust_result.get("created"):
                audit.record("cli", "trust.provision", f"node:{cfg.node_id}",
                             {k: trust_result[k] for k in
                              ("dev", "token_label", "ak_fingerprint", "signing_fingerprint")})
            return {"state_dir": str(self.path), "node_id": cfg.node_id,
                    "config_created": created_config, "admin_set": admin_set,
                    "users": [u["username"] for u in users.list()], "trust": trust_result}
        finally:
            audit.bind(None)
            store.close()

    def _provision_trust(self, cfg: Config, hsm_pin: str | None) -> dict:
        """Provision the trust root the config asks for (nothing when already provisioned)."""
        from appliance.trust import TrustError, provision
        from appliance.trust.layout import TrustLayout
        from hsm import HsmError
        from tee import TeeError

        provisioned = TrustLayout(self.path).trust_json.exists()
        if cfg.trust == "hardware" and not provisioned and (
            hsm_pin is None or not cfg.pkcs11_module
        ):
            return {"provisioned": False, "reason": (
                "hardware trust root not provisioned: set pkcs11_module in config.toml and "
                "pass the token's user PIN (--hsm-pin-file)")}
        try:
            if cfg.trust == "dev" or provisioned:
                result = provision(self.path, dev=True, node_id=cfg.node_id)
            else:
                result = provision(self.path, dev=False, node_id=cfg.node_id,
                                   module=cfg.pkcs11_module, pin=hsm_pin, tcti=cfg.tpm_tcti)
        except (TrustError, HsmError, TeeError, OSError) as exc:
            raise StateDirError(f"trust root provisioning failed: {exc}") from exc
        return {"provisioned": True, **result}
