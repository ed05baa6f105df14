"""Trust-root commands of `pec-appliance`: attest, verify-attestation, audit verify.

`register(subparsers)` adds them to the main parser; each sets `func(args) -> exit code`.

`attest` asks the running daemon (it owns the TPM and the HSM session, and swtpm's state
directory is locked while it runs); with no daemon it opens the trust root itself.
`verify-attestation` and `audit verify` need neither TPM nor HSM: they use the public keys
recorded at provisioning.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance.ledger import Ledger, LedgerError
from appliance.statedir import default_state_dir
from appliance.trust.bundle import verify_bundle
from appliance.trust.errors import TrustError
from appliance.trust.layout import TrustLayout

# SUPPRESS: an unset option leaves any --state-dir the main parser set in place.
_STATE_HELP = "state directory (default: $PEC_STATE_DIR or /var/lib/pec)"


def _state_dir(args: argparse.Namespace) -> str:
    return getattr(args, "state_dir", None) or default_state_dir()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("attest", help="print a signed TPM attestation bundle (JSON)")
    p.add_argument("--nonce", required=True, help="the verifier's challenge, 8..64 bytes in hex")
    p.add_argument("--state-dir", default=argparse.SUPPRESS, help=_STATE_HELP)
    p.set_defaults(func=cmd_attest)

    p = subparsers.add_parser(
        "verify-attestation", help="check an attestation bundle offline (no TPM, no HSM)")
    p.add_argument("bundle", help="bundle JSON file, or - for standard input")
    p.add_argument("--policy", required=True,
                   help="golden PCR file (golden-pcrs.json) or a JSON map of PCR index -> hex")
    p.add_argument("--nonce", default=None, help="require the bundle to answer this nonce (hex)")
    p.set_defaults(func=cmd_verify_attestation)

    audit = subparsers.add_parser("audit", help="audit ledger")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    p = sub.add_parser("verify", help="check the ledger's chain and signatures")
    p.add_argument("--state-dir", default=argparse.SUPPRESS, help=_STATE_HELP)
    p.add_argument("--json", action="store_true", help='print {"ok", "first_bad"} as JSON')
    p.set_defaults(func=cmd_audit_verify)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _hex(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise TrustError(f"{what} must be hex digits: {value!r}") from exc


def cmd_attest(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    layout = TrustLayout(state_dir)
    try:
        nonce = _hex(args.nonce, "--nonce")
        if layout.socket_path.exists():
            from appliance.client import DaemonClient, DaemonError

            try:
                bundle = DaemonClient(state_dir).post(
                    "/v1/attestation/quote", {"nonce": nonce.hex(), "actor": "cli"})
            except DaemonError as exc:
                return _fail(f"daemon: {exc}")
        else:
            from appliance.trust.root import TrustRoot

            with TrustRoot.open(state_dir) as root:
                bundle = root.attest(nonce)
    except TrustError as exc:
        return _fail(str(exc))
    print(json.dumps(bundle, indent=2, sort_keys=True))
    return 0


def _load_json(path: str, what: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        return json.loads(text)
    except OSError as exc:
        raise TrustError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise TrustError(f"{what} {path} is not JSON: {exc}") from exc


def cmd_verify_attestation(args: argparse.Namespace) -> int:
    try:
        bundle = _load_json(args.bundle, "bundle")
        policy = _load_json(args.policy, "policy")
        nonce = None if args.nonce is None else _hex(args.nonce, "--nonce")
    except TrustError as exc:
        return _fail(str(exc))
    verdict = verify_bundle(bundle, policy, nonce)
    print(json.dumps(verdict, indent=2))
    return 0 if verdict["ok"] else 1


def cmd_audit_verify(args: argparse.Namespace) -> int:
    layout = TrustLayout(_state_dir(args))
    if not layout.trust_json.is_file():
        return _fail(f"{layout.path} has no trust root (no trust.json): nothing signs its ledger")
    if not layout.db_path.is_file():
        return _fail(f"{layout.path} has no database {layout.db_path.name}")
    public_pem = json.loads(layout.trust_json.read_text())["signing_public_pem"]
    try:
        with Ledger(layout.db_path) as ledger:
            result = ledger.verify(public_pem)
    except LedgerError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"ok": result.ok, "first_bad": result.first_bad,
                          "reason": result.reason}))
    elif result.ok:
        print(f"audit ledger OK: {result.records} records, chain and signatures hold")
    else:
        print(f"audit ledger BROKEN at record {result.first_bad}: {result.reason}")
    return 0 if result.ok else 1
