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

from appliance.state.atomicfile import write_atomic
from appliance.state.statedir import default_state_dir
from appliance.trust.bundle import verify_bundle
from appliance.trust.errors import TrustError
from appliance.trust.layout import TrustLayout
from appliance.trust.ledger import Head, Ledger, LedgerError

# SUPPRESS: an unset option leaves any --state-dir the main parser set in place.
_STATE_HELP = "state directory (default: $PEC_STATE_DIR or /var/lib/pec)"


def _state_dir(args: argparse.Namespace) -> str:
    return getattr(args, "state_dir", None) or default_state_dir()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("attest", help="print a signed TPM attestation bundle (JSON)")
    p.add_argument("--nonce", required=True,
                   help="the verifier's challenge, 8..64 bytes in hex (16..128 hex digits), "
                        "e.g. $(openssl rand -hex 16)")
    p.add_argument("--out", "-o", default=None, metavar="FILE",
                   help="write the bundle to FILE (atomically, only on success) instead of "
                        "standard output")
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
    p = sub.add_parser("verify", help="check both audit trails: the signed ledger (chain, "
                       "signatures, key) and the unsigned trail (chain)")
    p.add_argument("--state-dir", default=argparse.SUPPRESS, help=_STATE_HELP)
    p.add_argument("--json", action="store_true",
                   help='print {"ok", "first_bad", "reason", "signed", "unsigned"} as JSON')
    p.add_argument("--pubkey", default=None, metavar="FILE",
                   help="verify with this PEM public key (e.g. the node_public_pem of an "
                        "attestation bundle you pinned) instead of the HSM token's key")
    p.add_argument("--expect-fingerprint", default=None, metavar="sha256:HEX",
                   help="fail unless the verification key has this fingerprint")
    p.add_argument("--expect-head", default=None, metavar="SEQ:HASH",
                   help="a ledger head seen earlier (an attestation bundle's ledger_head, an "
                        "earlier verify): fail if that record is gone or differs")
    p.set_defaults(func=cmd_audit_verify)
    p = sub.add_parser("acknowledge-break",
                       help="accept a broken audit chain so the daemon records changes again")
    p.add_argument("--state-dir", default=argparse.SUPPRESS, help=_STATE_HELP)
    p.add_argument("--reason", required=True,
                   help="what happened and who checked it (recorded in the ledger)")
    p.set_defaults(func=cmd_audit_acknowledge_break)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _hex(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise TrustError(f"{what} must be hex digits: {value!r}") from exc


def cmd_attest(args: argparse.Namespace) -> int:
    from appliance.trust.root import NONCE_MAX, NONCE_MIN

    state_dir = _state_dir(args)
    layout = TrustLayout(state_dir)
    try:
        nonce = _hex(args.nonce, "--nonce")
        if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
            # checked here too, so that the message names the option and says the minimum
            # before any daemon or TPM is asked
            raise TrustError(
                f"--nonce must be {NONCE_MIN} to {NONCE_MAX} bytes, that is {2 * NONCE_MIN} to "
                f"{2 * NONCE_MAX} hex digits; got {len(nonce)} bytes ({len(args.nonce)} hex "
                f"digits). Make one with: openssl rand -hex {2 * NONCE_MIN}")
        if layout.socket_path.exists():
            from appliance.client import DaemonClient, DaemonError

            try:
                bundle = DaemonClient(state_dir).post(
                    "/v1/attestation/quote", {"nonce": nonce.hex()})
            except DaemonError as exc:
                return _fail(f"daemon: {exc}")
        else:
            from appliance.trust.root import TrustRoot

            with TrustRoot.open(state_dir) as root:
                bundle = root.attest(nonce)
    except TrustError as exc:
        return _fail(str(exc))
    text = json.dumps(bundle, indent=2, sort_keys=True) + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        # a bundle is public (it carries no secret): readable like any exported file
        write_atomic(Path(args.out), text.encode(), mode=0o644)
    except OSError as exc:
        return _fail(f"cannot write {args.out}: {exc.strerror}")
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
    from appliance.state.store import Store
    from appliance.trust import audit
    from appliance.trust.anchor import choose_key

    layout = TrustLayout(_state_dir(args))
    if not layout.db_path.is_file():
        return _fail(f"{layout.path} has no database {layout.db_path.name}")
    try:
        head = None if args.expect_head is None else Head.parse(args.expect_head)
        pubkey = None
        if args.pubkey is not None:
            pubkey = Path(args.pubkey).read_text()
    except ValueError as exc:
        return _fail(f"--expect-head: {exc}")
    except OSError as exc:
        return _fail(f"cannot read --pubkey {args.pubkey}: {exc.strerror}")
    has_ledger = layout.trust_json.is_file() or pubkey is not None
    key = choose_key(layout, pubkey_pem=pubkey, pubkey_source=f"--pubkey {args.pubkey}",
                     expect_fingerprint=args.expect_fingerprint) if has_ledger else None
    try:
        store = Store(layout.db_path)
        try:
            if has_ledger:
                with Ledger(layout.db_path) as ledger:
                    result = audit.check(store, ledger, key, head)
            else:
                result = audit.check(store, None)
        finally:
            store.close()
    except (LedgerError, audit.AuditError, ValueError) as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(result))
    else:
        _print_verdict(result)
    return 0 if result["ok"] else 1


def _print_verdict(result: dict[str, Any]) -> None:
    signed, unsigned = result["signed"], result["unsigned"]
    if signed is None:
        print("signed ledger: none (no trust root provisioned: nothing signs records)")
    else:
        key = signed["key"]
        print(f"verification key: {key['fingerprint'] or 'none'} from {key['source']}"
              + ("" if key["anchored"] else " (NOT anchored: trust.json can be rewritten by "
                 "whoever writes the state directory; pass --pubkey or --expect-fingerprint)"))
        if key.get("note"):
            print(f"  note: {key['note']}")
        if signed["ok"]:
            head = signed["head"]
            tail = f"head {head['seq']}:{head['hash']}" if head else "no records yet"
            print(f"signed ledger OK: {signed['records']} records, chain and signatures hold; "
                  f"{tail}")
        else:
            where = f" at record {signed['first_bad']}" if signed["first_bad"] else ""
            print(f"signed ledger BROKEN{where}: {signed['reason']}")
    pending = unsigned.get("pending")
    waiting = f", {pending} waiting to be signed in" if pending else ""
    if unsigned["ok"]:
        print(f"unsigned trail OK: {unsigned['records']} records, chain holds (unsigned: it "
              f"shows edits only by someone who cannot recompute SHA-256){waiting}")
    else:
        print(f"unsigned trail BROKEN at record {unsigned['first_bad']}: {unsigned['reason']}")
    print("audit trails OK" if result["ok"] else f"audit trails BROKEN: {result['reason']}")


def cmd_audit_acknowledge_break(args: argparse.Namespace) -> int:
    from appliance.client import DaemonClient, DaemonError

    # Through the daemon only: it is the one writer of both trails, and it names the caller
    # from the socket's peer credentials.
    try:
        rec = DaemonClient(_state_dir(args)).post("/v1/audit/acknowledge-break",
                                                   {"reason": args.reason})
    except DaemonError as exc:
        return _fail(f"daemon: {exc}")
    print(f"break acknowledged in record {rec['seq']} by {rec['actor']}; the daemon records "
          "changes again (verification keeps reporting the break)")
    return 0
