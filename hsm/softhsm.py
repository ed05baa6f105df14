"""SoftHSM2 tokens kept under a directory: the development and test stand-in for a vendor HSM.

PINs reach softhsm2-util through a pseudo-terminal, never its command line, so they do not show
in the process list; the configuration file holds only paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from hsm.errors import HsmError, ModuleNotFound

SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
CONFIG_NAME = "softhsm2.conf"


def softhsm_config(directory: str | os.PathLike[str]) -> Path:
    """Path of the SoftHSM2 configuration that keeps its tokens under `directory`."""
    return Path(directory) / CONFIG_NAME


def create_softhsm_token(
    directory: str | os.PathLike[str], label: str, so_pin: str, user_pin: str
) -> Path:
    """Create and initialise a token called `label` under `directory`; return the config path.

    Raises HsmError if a token with that label already exists there or the tool fails.
    """
    if not label or len(label) > 32:
        raise ValueError(f"token label must be 1..32 characters, got {label!r}")
    for name, pin in (("SO PIN", so_pin), ("user PIN", user_pin)):
        if not 4 <= len(pin) <= 255 or "\n" in pin:
            raise ValueError(f"{name} must be 4..255 characters on one line")
    tool = shutil.which("softhsm2-util")
    if tool is None:
        raise ModuleNotFound("softhsm2-util not found: install the Debian package softhsm2")
    root = Path(directory)
    tokens = root / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    os.chmod(tokens, 0o700)
    config = softhsm_config(root)
    config.write_text(
        f"directories.tokendir = {tokens.resolve()}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    env = dict(os.environ, SOFTHSM2_CONF=str(config))
    if _token_labels(tool, env).count(label):
        raise HsmError(f"a token labelled {label!r} already exists under {tokens}")
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [tool, "--init-token", "--free", "--label", label],
            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )
        os.close(slave)
        slave = -1
        # The tool asks for each PIN twice; the pty buffers the answers until it reads them.
        for pin in (so_pin, so_pin, user_pin, user_pin):
            os.write(master, pin.encode() + b"\n")
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    if proc.returncode != 0:
        text = out.decode(errors="replace").replace(so_pin, "***").replace(user_pin, "***")
        raise HsmError(f"softhsm2-util could not initialise token {label!r}: {text.strip()}")
    return config


def _token_labels(tool: str, env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [tool, "--show-slots"], env=env, capture_output=True, text=True, timeout=30
    ).stdout
    return [
        line.split(":", 1)[1].strip()
        for line in out.splitlines()
        if line.strip().startswith("Label:") and line.split(":", 1)[1].strip()
    ]
