"""Where the trust root keeps its files under the state directory.

    STATE/trust.json         what provisioning set up: modes, module, token, public keys, node id
    STATE/golden-pcrs.json   PCR values recorded at provisioning, with the keys a peer should pin
    STATE/hsm/               SoftHSM2 configuration and tokens (development)
    STATE/hsm/pin.sealed     the HSM user PIN, sealed by the TPM to the PCR policy
    STATE/hsm/so-pin.sealed  the HSM security officer PIN, sealed the same way
    STATE/tpm/               swtpm state (development)
    STATE/keys/ID.sealed     Paillier private keys sealed by the HSM KEK
    STATE/keys/ID.json       their public half and metadata
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TOKEN_LABEL = "pec"
SEALED_PIN_PCRS = (7, 14)
QUOTE_PCRS = (0, 1, 2, 3, 4, 5, 7, 14)


class TrustLayout:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir).absolute()

    trust_json = property(lambda self: self.root / "trust.json")
    golden_pcrs = property(lambda self: self.root / "golden-pcrs.json")
    hsm_dir = property(lambda self: self.root / "hsm")
    pin_sealed = property(lambda self: self.root / "hsm" / "pin.sealed")
    so_pin_sealed = property(lambda self: self.root / "hsm" / "so-pin.sealed")
    tpm_dir = property(lambda self: self.root / "tpm")
    keys_dir = property(lambda self: self.root / "keys")
    db_path = property(lambda self: self.root / "pec.db")
    socket_path = property(lambda self: self.root / "run" / "noded.sock")


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write via a synced temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any, mode: int = 0o600) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode)
