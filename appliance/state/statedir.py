"""The state directory: config.toml, the SQLite store, the socket and the log.

    DIR/config.toml       node settings (see ``Config``)
    DIR/pec.db            jobs, job logs, events, users, settings (SQLite, WAL)
    DIR/run/noded.sock    the local API (mode 0660)
    DIR/log/noded.log     the daemon's log
    DIR/trust.json, hsm/, tpm/, keys/   the trust root (see docs/trust.md)

Only paths and the config live here: creating a state directory (admin account, audit record,
trust root) is ``appliance.provision``, so that state/ imports neither trust/ nor accounts/
(trust.layout builds on StateDir; the old lazy import back into trust was a loop).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from appliance.client import SOCKET_PATH
from appliance.state.tomlfile import TomlDocument

DEFAULT_STATE_DIR = "/var/lib/pec"
LOG_LEVELS = ("debug", "info", "warning", "error")
MINI_CHOICES = ("mpc", "fl")
# "dev": SoftHSM2 token and swtpm under the state directory, provisioned by init.
# "hardware": the vendor PKCS#11 module and the TPM device, provisioned with the token's PIN.
TRUST_MODES = ("dev", "hardware")
DEVICE_TCTI = "device:/dev/tpmrm0"
# the job runner's default concurrency (appliance.jobs.runner.DEFAULT_MAX_JOBS, repeated here
# because state/ sits below jobs/)
DEFAULT_MAX_JOBS = 4
MAX_JOBS_LIMIT = 64


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
    # how many jobs the runner runs at once (exclusive kinds still run alone)
    max_jobs: int = DEFAULT_MAX_JOBS
    # federation: who this node is to its peers, and where they reach it
    organisation: str = ""
    interconnect_listen: str | None = None  # HOST:PORT the mTLS listener binds
    interconnect_endpoint: str | None = None  # HOST:PORT peers dial (default: the listen one)

    @property
    def endpoint(self) -> str | None:
        return self.interconnect_endpoint or self.interconnect_listen

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
        if self.organisation:
            lines += ["# the organisation this node speaks for, as its peers see it",
                      f"organisation = {_toml_str(self.organisation)}"]
        if self.interconnect_listen:
            lines += ["# the federation's mTLS listener (peers pinned, see docs/federation.md)",
                      f"interconnect_listen = {_toml_str(self.interconnect_listen)}"]
        if self.interconnect_endpoint:
            lines.append(f"interconnect_endpoint = {_toml_str(self.interconnect_endpoint)}")
        if self.max_jobs != DEFAULT_MAX_JOBS:
            lines += ["# jobs run at once by the daemon (benchmark, calibrate, burnin run alone)",
                      f"max_jobs = {self.max_jobs}"]
        return "\n".join(lines) + "\n"


def _host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def default_trust_mode(state_dir: str | os.PathLike[str]) -> str:
    """The production state directory gets the hardware trust root, any other the dev one."""
    return "hardware" if Path(state_dir).absolute() == Path(DEFAULT_STATE_DIR) else "dev"


def read_config(path: str | Path) -> Config:
    doc = TomlDocument.load(path)
    data = doc.data
    doc.check_keys(data, {"node_id", "root", "mini_capability", "profiles_dir", "log_level",
                          "trust", "pkcs11_module", "tpm_tcti", "max_jobs", "organisation",
                          "interconnect_listen", "interconnect_endpoint"})
    cfg = Config(
        node_id=doc.get(data, "node_id", str),
        root=doc.get(data, "root", str, default="/"),
        mini_capability=doc.get(data, "mini_capability", str, default="mpc"),
        profiles_dir=doc.get(data, "profiles_dir", str, default=None),
        log_level=doc.get(data, "log_level", str, default="info"),
        trust=doc.get(data, "trust", str, default=default_trust_mode(Path(path).parent)),
        pkcs11_module=doc.get(data, "pkcs11_module", str, default=None),
        tpm_tcti=doc.get(data, "tpm_tcti", str, default=DEVICE_TCTI),
        max_jobs=doc.get(data, "max_jobs", int, default=DEFAULT_MAX_JOBS),
        organisation=doc.get(data, "organisation", str, default=""),
        interconnect_listen=doc.get(data, "interconnect_listen", str, default=None),
        interconnect_endpoint=doc.get(data, "interconnect_endpoint", str, default=None),
    )
    for key in ("interconnect_listen", "interconnect_endpoint"):
        value = getattr(cfg, key)
        if value is not None and not _host_port(value):
            raise doc.error(key, f"must be HOST:PORT with a port of 1-65535, got {value!r}")
    if cfg.mini_capability not in MINI_CHOICES:
        raise doc.error("mini_capability", f"must be one of {', '.join(MINI_CHOICES)}")
    if cfg.log_level not in LOG_LEVELS:
        raise doc.error("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    if not 1 <= cfg.max_jobs <= MAX_JOBS_LIMIT:
        raise doc.error("max_jobs", f"must be between 1 and {MAX_JOBS_LIMIT}")
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
