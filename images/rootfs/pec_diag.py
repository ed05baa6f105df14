#!/opt/pec/venv/bin/python3
"""Diagnostics port of the appliance: a fixed set of read-only questions over virtio-serial.

A hypervisor that offers the port org.pec.diag.0 (the image's boot test does) can ask, one
line per request, for what any peer may already see: the daemon's status, an attestation
bundle over a nonce it chooses, the ledger's verdict, the golden PCRs, the first-boot record,
the image manifest, and the state and log of the appliance's own units. Each answer is one JSON line
{"command", "ok", "rc", "stdout", "stderr"}. Nothing here changes state, and nothing takes
arbitrary arguments: a nonce must be hex, a unit one of the appliance's.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

STATE = Path("/var/lib/pec")
CLI = "/opt/pec/venv/bin/pec-appliance"
UNITS = ("pec-firstboot.service", "pec-noded.service", "pec-panel.service")
MAX_LINE = 4096
MAX_NONCE_HEX = 128


def run(argv: list[str]) -> dict[str, object]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"ok": False, "rc": None, "stdout": "", "stderr": str(e)}
    return {
        "ok": proc.returncode == 0,
        "rc": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }


def read(path: Path) -> dict[str, object]:
    try:
        return {"ok": True, "rc": 0, "stdout": path.read_text(), "stderr": ""}
    except OSError as e:
        return {"ok": False, "rc": None, "stdout": "", "stderr": str(e)}


def refuse(reason: str) -> dict[str, object]:
    return {"ok": False, "rc": None, "stdout": "", "stderr": reason}


def answer(line: str) -> dict[str, object]:
    words = line.split()
    if not words:
        return refuse("empty request")
    command, args = words[0], words[1:]
    if command == "status" and not args:
        return run([CLI, "status", "--json"])
    if command == "attest" and len(args) == 1:
        nonce = args[0]
        if not (0 < len(nonce) <= MAX_NONCE_HEX and all(c in "0123456789abcdef" for c in nonce)):
            return refuse(f"nonce must be 1-{MAX_NONCE_HEX} lower-case hex digits")
        return run([CLI, "attest", "--nonce", nonce, "--state-dir", str(STATE)])
    if command == "audit-verify" and not args:
        return run([CLI, "audit", "verify", "--state-dir", str(STATE), "--json"])
    if command == "golden" and not args:
        return read(STATE / "golden-pcrs.json")
    if command == "firstboot" and not args:
        return read(STATE / "firstboot.json")
    if command == "manifest" and not args:
        return read(Path("/usr/share/pec/manifest.json"))
    if command == "units" and not args:
        return run(["systemctl", "--no-pager", "status", *UNITS])
    if command == "journal" and len(args) == 1:
        if args[0] not in UNITS:
            return refuse(f"journal is kept only for {', '.join(UNITS)}")
        return run(["journalctl", "--no-pager", "-o", "short-precise", "-n", "300", "-u", args[0]])
    return refuse(
        f"unknown request {line.strip()[:60]!r}: status | attest HEX | audit-verify | "
        "golden | firstboot | manifest | units | journal UNIT"
    )


def serve(port: str) -> None:
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    pending = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 5.0)
        if not ready:
            continue
        chunk = os.read(fd, MAX_LINE)
        if not chunk:
            # No host on the other end: poll again later instead of spinning.
            time.sleep(0.5)
            continue
        pending += chunk
        while b"\n" in pending:
            raw, pending = pending.split(b"\n", 1)
            request = raw.decode("utf-8", "replace")
            reply = {"command": request.strip()[:60], **answer(request)}
            os.write(fd, json.dumps(reply).encode() + b"\n")
        if len(pending) > MAX_LINE:
            pending = b""
            os.write(fd, json.dumps(refuse("request longer than 4096 bytes")).encode() + b"\n")


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: pec-diag PORT_DEVICE", file=sys.stderr)
        return 2
    serve(sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
