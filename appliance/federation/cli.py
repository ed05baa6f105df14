"""`pec-appliance peers ...` and `pec-appliance datasets ...`: the federation's commands, all
through the running daemon's local API (the daemon owns the HSM, the channel and the store)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance.client import DaemonClient
from appliance.federation.pir_client import PirClient
from appliance.state.statedir import default_state_dir

_STATE_HELP = "state directory (default $PEC_STATE_DIR or /var/lib/pec)"


def _client(args: argparse.Namespace) -> DaemonClient:
    return DaemonClient(getattr(args, "state_dir", None) or default_state_dir())


def _emit(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c) if r.get(c) is not None else "-"))
                               for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(str(r.get(c) if r.get(c) is not None else "-").ljust(widths[c])
                        for c in columns).rstrip())


# peers -------------------------------------------------------------------------------------

def cmd_invite(args: argparse.Namespace) -> int:
    _emit(_client(args).get("/v1/federation/card"))
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.card == "-" else Path(args.card).read_text()
    try:
        card = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{args.card} is not a JSON card: {exc}") from None
    body: dict[str, Any] = {"name": args.name, "card": card}
    if args.policy:
        body["policy"] = json.loads(Path(args.policy).read_text())
    peer = _client(args).post("/v1/peers", body)
    if args.json:
        _emit(peer)
    else:
        print(f"peer {peer['name']} enrolled: node {peer['node_id']} of "
              f"{peer['organisation'] or '-'} at {peer['endpoint']}; certificate "
              f"sha256 {peer['certificate_sha256'][:16]}... pinned")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    peers = _client(args).get("/v1/peers")["peers"]
    if args.json:
        _emit(peers)
    else:
        _table(peers, ["name", "node_id", "endpoint", "state", "auto_accept", "last_attested",
                       "last_verdict"])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    peer = _client(args).get(f"/v1/peers/{args.name}")
    if args.json:
        _emit(peer)
        return 0
    for key in ("name", "node_id", "organisation", "endpoint", "state", "state_reason",
                "auto_accept", "last_attested", "last_verdict", "certificate_sha256",
                "added_by", "added"):
        print(f"{key + ':':<20} {peer.get(key) if peer.get(key) not in (None, '') else '-'}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    peer = _client(args).delete(f"/v1/peers/{args.name}")
    print(f"peer {peer['name']} removed; its certificate is no longer accepted")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    peer = _client(args).post(f"/v1/peers/{args.name}/approve", {"accept": not args.revoke})
    print(f"jobs from {peer['name']}: "
          + ("accepted without asking" if peer["auto_accept"] else "refused"))
    return 0


def cmd_attest(args: argparse.Namespace) -> int:
    out = _client(args).post(f"/v1/peers/{args.name}/attest", {})
    if args.json:
        _emit(out)
    else:
        v = out["verdict"]
        print(f"{args.name}: {'OK' if v['ok'] else 'FAILED'}: {v['reason']} "
              f"(state {out['peer']['state']})")
    return 0 if out["verdict"]["ok"] else 1


def cmd_reinstate(args: argparse.Namespace) -> int:
    card = json.loads(Path(args.card).read_text())
    peer = _client(args).post(f"/v1/peers/{args.name}/reinstate", {"card": card})
    print(f"peer {peer['name']} active again; pinned anew from the card")
    return 0


# data sets ---------------------------------------------------------------------------------

def cmd_ds_add(args: argparse.Namespace) -> int:
    # the daemon reads the file, and its working directory is not ours
    path = str(Path(args.file).resolve())
    ds = _client(args).post("/v1/datasets", {"name": args.name, "path": path,
                                             "id_column": args.id_column, "grade": args.grade})
    if args.json:
        _emit(ds)
    else:
        print(f"data set {ds['name']}: {ds['row_count']} rows, grade {ds['grade']}, "
              f"fingerprint {ds['fingerprint'][:16]}...")
    return 0


def cmd_ds_list(args: argparse.Namespace) -> int:
    sets = _client(args).get("/v1/datasets")["datasets"]
    if args.json:
        _emit(sets)
    else:
        _table(sets, ["name", "grade", "format", "row_count", "id_column", "path"])
    return 0


def cmd_ds_show(args: argparse.Namespace) -> int:
    _emit(_client(args).get(f"/v1/datasets/{args.name}"))
    return 0


def cmd_ds_remove(args: argparse.Namespace) -> int:
    ds = _client(args).delete(f"/v1/datasets/{args.name}")
    print(f"data set {ds['name']} removed (the file {ds['path']} is kept)")
    return 0


# private query ----------------------------------------------------------------------------

def _pir(args: argparse.Namespace) -> PirClient:
    return PirClient(getattr(args, "state_dir", None))


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def cmd_pir_publish(args: argparse.Namespace) -> int:
    labels = [c.strip() for c in args.label_columns.split(",") if c.strip()]
    info = _pir(args).publish(args.name, args.dataset, args.key_column, labels,
                              args.rotate_key)
    if args.json:
        _emit(info)
        return 0
    cost = info["cost"]
    print(f"service {info['name']} version {info['version']} published: {info['records']} "
          f"records, labels {', '.join(info['label_columns'])}; encoded in "
          f"{cost['setup_seconds']} s; a client downloads {_mib(cost['hint_bytes'])} once, "
          f"then sends {_mib(cost['query_bytes'])} and receives {_mib(cost['answer_bytes'])} "
          "per key")
    return 0


def cmd_pir_list(args: argparse.Namespace) -> int:
    client = _pir(args)
    services = client.peer_services(args.peer) if args.peer else client.services()
    if args.json:
        _emit({"services": services})
        return 0
    rows = [{"name": s["name"], "version": s["version"], "records": s["records"],
             "labels": ",".join(s["label_columns"]),
             "setup_s": s["cost"]["setup_seconds"], "hint": _mib(s["cost"]["hint_bytes"]),
             "per_key": f"{_mib(s['cost']['query_bytes'])} up / "
                        f"{_mib(s['cost']['answer_bytes'])} down",
             "served": s.get("queries_served", "-")} for s in services]
    _table(rows, ["name", "version", "records", "labels", "setup_s", "hint", "per_key",
                  "served"])
    return 0


def cmd_pir_query(args: argparse.Namespace) -> int:
    keys = list(args.keys)
    if args.keys_file:
        text = sys.stdin.read() if args.keys_file == "-" else Path(args.keys_file).read_text()
        keys += [line.strip() for line in text.splitlines() if line.strip()]
    if not keys:
        raise ValueError("give keys on the command line or with --keys-file")
    answer = _pir(args).query_with_cost(args.peer, args.service, keys)
    if args.json:
        _emit({"results": answer["results"]})
        return 0
    for r in answer["results"]:
        labels = ", ".join(f"{k}={v}" for k, v in r["labels"].items())
        print(f"{r['key']}: {labels if r['found'] else 'not found'}")
    cost = answer["cost"]
    print(f"({len(keys)} keys in {cost['seconds']} s; sent {_mib(cost['bytes_sent'])}, "
          f"received {_mib(cost['bytes_received'])}; {args.peer} learnt neither the keys nor "
          "the records read)", file=sys.stderr)
    return 0


def cmd_pir_unpublish(args: argparse.Namespace) -> int:
    info = _pir(args).unpublish(args.name)
    print(f"service {info['name']} removed; peers' queries to it are refused from now on")
    return 0


# models ---------------------------------------------------------------------------------------

def cmd_models_list(args: argparse.Namespace) -> int:
    models = _client(args).get("/v1/models")["models"]
    if args.json:
        _emit({"models": models})
        return 0
    _table([{**m, "parties": ",".join(m.get("parties") or []),
             "classes": ",".join(str(c) for c in m.get("classes") or []) or None}
            for m in models], ["model", "kind", "role", "features", "classes", "parties"])
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    doc = _client(args).get(f"/v1/models/{args.model}")
    if args.json:
        _emit(doc)
        return 0
    print(f"model {doc['model']}: {doc['algorithm']} ({doc['kind']}"
          + (f", this node is the {doc['role']}" if doc.get("role") else "") + ")")
    print(f"parties: {', '.join(doc.get('parties') or [])}")
    print(f"features here: {doc['features']}")
    for k, v in (doc.get("final") or {}).items():
        print(f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}")
    imp = doc.get("importance") or {}
    if imp:
        print("importance (|weight| on standardised features, this node's features):")
        for f, v in sorted(imp.items(), key=lambda kv: -kv[1])[:20]:
            print(f"  {f}: {v:.4g}")
    return 0


def cmd_models_delete(args: argparse.Namespace) -> int:
    doc = _client(args).delete(f"/v1/models/{args.model}")
    print(f"model {doc['model']} deleted from this node (a vertical model's other parts stay "
          "with their parties)")
    return 0


def register(subparsers: Any) -> None:
    peers = subparsers.add_parser("peers", help="enrol, list, attest and remove peer nodes")
    sub = peers.add_subparsers(dest="peers_command", metavar="ACTION", required=True)
    p = sub.add_parser("invite", help="print this node's card (JSON) for a peer to add")
    p.set_defaults(func=cmd_invite)
    p = sub.add_parser("add", help="verify a peer's card and pin the peer")
    p.add_argument("card", help="the peer's card file, or - for standard input")
    p.add_argument("--name", required=True, help="what this node calls the peer")
    p.add_argument("--policy", default=None, metavar="GOLDEN.json",
                   help="the peer's golden PCR file, when its organisation published one: the "
                        "card's quote must match it (otherwise its values are pinned as seen)")
    p.set_defaults(func=cmd_add)
    p = sub.add_parser("list", help="peers with their state and last attestation")
    p.set_defaults(func=cmd_list)
    for action, func, text in (("show", cmd_show, "one peer"),
                               ("remove", cmd_remove, "forget a peer (unpins its certificate)"),
                               ("attest", cmd_attest, "attest a peer now with a fresh nonce")):
        p = sub.add_parser(action, help=text)
        p.add_argument("name")
        p.set_defaults(func=func)
    p = sub.add_parser("approve", help="accept jobs this peer initiates (an admin's approval)")
    p.add_argument("name")
    p.add_argument("--revoke", action="store_true", help="refuse its jobs again")
    p.set_defaults(func=cmd_approve)
    p = sub.add_parser("reinstate", help="lift a quarantine by pinning the peer's fresh card")
    p.add_argument("name")
    p.add_argument("card", help="the peer's new card file")
    p.set_defaults(func=cmd_reinstate)
    for action in sub.choices.values():
        action.add_argument("--state-dir", default=None, help=_STATE_HELP)
        action.add_argument("--json", action="store_true")

    ds = subparsers.add_parser("datasets", help="register the files jobs may read")
    sub = ds.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)
    p = sub.add_parser("add", help="register a CSV or Parquet file (read in batches)")
    p.add_argument("name")
    p.add_argument("file")
    p.add_argument("--id-column", required=True, help="the column of unique ids")
    p.add_argument("--grade", choices=("L1", "L2", "L3", "L4"), default="L2",
                   help="data classification (default L2); see docs/datasets.md")
    p.set_defaults(func=cmd_ds_add)
    p = sub.add_parser("list", help="registered data sets")
    p.set_defaults(func=cmd_ds_list)
    for action, func, text in (("show", cmd_ds_show, "one data set with its schema"),
                               ("remove", cmd_ds_remove, "unregister (the file is kept)")):
        p = sub.add_parser(action, help=text)
        p.add_argument("name")
        p.set_defaults(func=func)
    for action in sub.choices.values():
        action.add_argument("--state-dir", default=None, help=_STATE_HELP)
        action.add_argument("--json", action="store_true")

    models = subparsers.add_parser("models", help="the federated models this node holds")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="every model (or part of a vertical one) on this node")
    p.set_defaults(func=cmd_models_list)
    p = sub.add_parser("show", help="a model's features, final metrics and importance")
    p.add_argument("model")
    p.set_defaults(func=cmd_models_show)
    p = sub.add_parser("delete", help="delete this node's model (or its part)")
    p.add_argument("model")
    p.set_defaults(func=cmd_models_delete)
    for action in sub.choices.values():
        action.add_argument("--state-dir", default=None, help=_STATE_HELP)
        action.add_argument("--json", action="store_true")

    pir = subparsers.add_parser("pir", help="private query: publish services, query peers' "
                                "without revealing the key")
    sub = pir.add_subparsers(dest="pir_command", metavar="ACTION", required=True)
    p = sub.add_parser("publish", help="encode a data set's key and label columns as a "
                       "service peers may query (again: re-encode it)")
    p.add_argument("name")
    p.add_argument("--dataset", required=True)
    p.add_argument("--key-column", required=True)
    p.add_argument("--label-columns", required=True, metavar="A,B",
                   help="the columns a query returns")
    p.add_argument("--rotate-key", action="store_true",
                   help="replace the service's OPRF key (what clients learnt stops working)")
    p.set_defaults(func=cmd_pir_publish)
    p = sub.add_parser("list", help="this node's services (or a peer's, with --peer)")
    p.add_argument("--peer", default=None)
    p.set_defaults(func=cmd_pir_list)
    p = sub.add_parser("query", help="look keys up at a peer's service privately")
    p.add_argument("--peer", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--keys-file", default=None, metavar="FILE",
                   help="one key per line (- for standard input)")
    p.add_argument("keys", nargs="*", metavar="KEY")
    p.set_defaults(func=cmd_pir_query)
    p = sub.add_parser("unpublish", help="stop serving a service and delete its encoding")
    p.add_argument("name")
    p.set_defaults(func=cmd_pir_unpublish)
    for action in sub.choices.values():
        action.add_argument("--state-dir", default=None, help=_STATE_HELP)
        action.add_argument("--json", action="store_true")
