"""``pec-appliance``: the node's command line.

The panel and trust-root commands live beside their code; each of those modules adds its
commands with ``register(subparsers)``. Every error is one line on stderr and a non-zero exit
status.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from appliance.client import DaemonClient, DaemonError
from appliance.federation import cli as federation_cli
from appliance.panel import cli as panel_cli
from appliance.provision import init_state_dir
from appliance.state.statedir import StateDir, default_state_dir
from appliance.trust import audit
from appliance.trust import cli as trust_cli

EXIT_ERROR = 1
EXIT_JOB_FAILED = 3


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _state_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=None,
                        help="state directory (default $PEC_STATE_DIR or /var/lib/pec)")


def _client(args: argparse.Namespace) -> DaemonClient:
    return DaemonClient(args.state_dir or default_state_dir())


# inventory and profile --------------------------------------------------------------------

def cmd_inventory(args: argparse.Namespace) -> int:
    from appliance.host.inventory import detect

    inv = detect(args.root, survey=not args.no_accel)
    data = inv.to_dict()
    if args.json:
        _print_json(data)
        return 0
    cpu = data["cpu"]
    print(f"cpu:          {cpu['model']}, {cpu['cores']} cores / {cpu['threads']} threads"
          + (f", TEE flags {' '.join(cpu['flags_tee'])}" if cpu["flags_tee"] else ""))
    print(f"memory:       {data['memory_bytes'] / (1 << 30):.1f} GiB")
    for d in data["disks"]:
        print(f"disk:         {d['name']} {d['size_bytes'] / 1e12:.2f} TB")
    for n in data["nics"]:
        speed = f"{n['speed_mbps']} Mb/s" if n["speed_mbps"] else "speed unknown"
        print(f"nic:          {n['name']} {'up' if n['up'] else 'down'}, {speed}")
    for a in data["accelerators"]:
        print(f"accelerator:  {a['kind']} {a['vendor']} {a['device_id']} at {a['pci']}")
    print(f"tpm:          {data['tpm']['path'] or 'none'}")
    print(f"tee:          {', '.join(k for k, v in data['tee'].items() if v) or 'none'}")
    for b in inv.backends:
        state = "healthy" if b["healthy"] else (
            f"{'unhealthy' if b['loaded'] else 'not available'} ({b['reason']})")
        print(f"accel:        {b['name']} {state}: {', '.join(b['devices']) or 'no device'}")
    return 0


def _daemon_or_offline(args: argparse.Namespace, ask: Callable[[DaemonClient], Any],
                       offline: Callable[[Any], Any]) -> Any:
    """``ask`` the running daemon; with none running, do ``offline`` on its store directly
    (the state lock keeps a daemon from starting meanwhile)."""
    state_dir = args.state_dir or default_state_dir()
    try:
        return ask(DaemonClient(state_dir))
    except DaemonError as exc:
        if exc.status != 0:
            raise
    from appliance.node import offline_node  # the daemon's modules: only when needed

    with offline_node(StateDir(state_dir)) as node:
        return offline(node)


def _profile_line(view: dict[str, Any]) -> str:
    """The profile and where it comes from: ``profile`` and ``status`` say it the same way."""
    text = str(view["profile"])
    override = view.get("override")
    if override:
        text += (f" (override set by {override.get('by', '?')} at {override.get('at', '?')}; "
                 f"the hardware alone gives {view.get('hardware_profile', '?')})")
    return text


def cmd_profile(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or default_state_dir()
    local = args.root is not None or args.profiles_dir is not None \
        or args.mini_capability is not None
    if args.clear_override or args.override is not None:
        profile = None if args.clear_override else args.override
        data = _daemon_or_offline(
            args,
            lambda client: client.put("/v1/profile/override", {"profile": profile}),
            lambda node: node.set_override(profile, audit.local_actor(), apply=False))
    elif local or not StateDir(state_dir).config_path.is_file():
        # what the hardware alone gives (no node here, or a hypothetical root asked for)
        from appliance.host.inventory import detect
        from appliance.host.profile import load_profiles, match

        profiles = load_profiles(args.profiles_dir)
        data = match(detect(args.root or "/", survey=False), profiles,
                     choice=args.mini_capability).to_dict()
    else:
        data = _daemon_or_offline(args, lambda client: client.get("/v1/profile"),
                                  lambda node: node.profile_view())
    if args.json:
        _print_json(data)
        return 0
    print(f"profile:      {_profile_line(data)}")
    print(f"capabilities: {', '.join(data['capabilities']) or 'none'}")
    print(f"router:       {data['router_policy']}")
    for c in data["criteria"]:
        mark = "met   " if c["met"] else "MISSED"
        print(f"  {mark} {c['name']:<12} required {c['required']}; found {c['found']}")
    for note in data["notes"]:
        print(f"note: {note}")
    if data.get("override_error"):
        print(f"WARNING: {data['override_error']}")
    return 0


# state directory and daemon ---------------------------------------------------------------

def _read_password_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline().rstrip("\r\n")
    except OSError as exc:
        raise CliError(f"cannot read password file {path}: {exc.strerror}") from None
    if not first:
        raise CliError(f"password file {path} is empty: the password is its first line")
    return first


def cmd_init(args: argparse.Namespace) -> int:
    password = _read_password_file(args.admin_password_file) if args.admin_password_file \
        else None
    hsm_pin = _read_password_file(args.hsm_pin_file) if args.hsm_pin_file else None
    result = init_state_dir(StateDir(args.state_dir or default_state_dir()),
        root=args.root, admin_password=password, force=args.force,
        mini_capability=args.mini_capability, trust=args.trust, hsm_pin=hsm_pin,
        federation={"organisation": args.organisation,
                    "interconnect_listen": args.interconnect_listen,
                    "interconnect_endpoint": args.interconnect_endpoint},
        node_id=args.node_id,
    )
    if args.dev:
        result["development_override"] = _ensure_development(args)
    if not args.json:
        print(f"state directory {result['state_dir']} ready (node {result['node_id']})")
        if result["admin_set"]:
            print("administrator 'admin' set")
        elif not result["users"]:
            print("no user yet: pass --admin-password-file FILE to create 'admin'")
        trust = result["trust"]
        if trust["provisioned"]:
            mode = "development (SoftHSM2, swtpm)" if trust["dev"] else "hardware"
            print(f"trust root: {mode}, {'provisioned now' if trust['created'] else 'kept'}; "
                  f"golden PCRs in {trust['golden_pcrs']}")
        else:
            print(f"trust root: {trust['reason']}")
        if args.dev:
            print("profile: development override "
                  + ("set (every capability on; audited)" if result["development_override"]
                     else "kept"))
    else:
        _print_json(result)
    return 0


def _ensure_development(args: argparse.Namespace) -> bool:
    """Override the profile with ``development`` unless it already is; True when set now."""
    from appliance.host.profile import DEVELOPMENT

    view = _daemon_or_offline(args, lambda client: client.get("/v1/profile"),
                              lambda node: node.profile_view())
    if (view.get("override") or {}).get("profile") == DEVELOPMENT:
        return False
    _daemon_or_offline(
        args,
        lambda client: client.put("/v1/profile/override", {"profile": DEVELOPMENT}),
        lambda node: node.set_override(DEVELOPMENT, audit.local_actor(), apply=False))
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    # before the import: native thread pools started by imports then inherit the blocked
    # stop signals (see appliance.daemon.serve)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    from appliance.daemon import serve

    return serve(args.state_dir or default_state_dir())


def cmd_status(args: argparse.Namespace) -> int:
    status = _client(args).get("/v1/status")
    if args.json:
        _print_json(status)
        return 0
    print(f"node:         {status['node_id']} (version {status['version']}, "
          f"up {status['uptime_s']:.0f} s)")
    print(f"profile:      {_profile_line(status)}; capabilities: "
          f"{', '.join(status['capabilities']) or 'none'}; router {status['router_policy']}")
    for name in ("hsm", "tpm"):
        h = status["health"][name]
        state = {True: "ok", False: "FAILED", None: "not configured"}[h["ok"]]
        print(f"{name + ':':<14}{state} ({h['detail']})")
    for b in status["health"]["backends"]:
        if b["healthy"]:
            state = "healthy"
        elif b.get("loaded") is False:  # no runtime for it on this box: expected, not a fault
            state = f"not available ({b.get('reason') or 'no reason given'})"
        else:
            state = f"UNHEALTHY ({b.get('reason') or 'no reason given'})"
        devices = f" {', '.join(b['devices'])}" if b["devices"] else ""
        print(f"backend:      {b['name']} {state}{devices}")
    if status["degraded"]:
        print("DEGRADED:")
        for reason in status["degraded_reasons"]:
            print(f"  - {reason}")
    return 0


# jobs ------------------------------------------------------------------------------------

def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--param wants KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw  # a bare word is a string
    return params


def _progress_line(job: dict[str, Any], width: int = 30) -> str:
    filled = width * job["progress"] // 100
    return (f"job {job['id']} {job['kind']:<10} [{'#' * filled}{'.' * (width - filled)}] "
            f"{job['progress']:3d}% {job['state']}: {job['message']}")


def _watch(client: DaemonClient, job_id: int, quiet: bool) -> dict[str, Any]:
    """Poll until the job ends; a progress bar on a terminal, changes as lines otherwise."""
    tty = sys.stderr.isatty() and not quiet
    last = None
    while True:
        job = client.get(f"/v1/jobs/{job_id}")
        line = _progress_line(job)
        if tty:
            sys.stderr.write("\r\033[K" + line[: os.get_terminal_size(2).columns - 1])
            sys.stderr.flush()
        elif not quiet and line != last:
            print(line, file=sys.stderr)
        last = line
        if job["state"] not in ("queued", "running"):
            if tty:
                sys.stderr.write("\n")
            return job
        time.sleep(0.5)


def _job_outcome(job: dict[str, Any], as_json: bool) -> int:
    if as_json:
        _print_json(job)
    else:
        print(f"job {job['id']} ({job['kind']}): {job['state']}"
              + (f": {job['error']}" if job.get("error") else ""))
    return 0 if job["state"] in ("done", "queued", "running") else EXIT_JOB_FAILED


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    params = _parse_params(args.param)
    if args.bits is not None:
        params["bits"] = args.bits
    if args.quick:
        params["quick"] = True
    if args.peer:
        params["peers"] = args.peer
    client = _client(args)
    job = client.post("/v1/jobs", {"kind": args.kind, "params": params})
    if args.wait:
        job = _watch(client, job["id"], quiet=args.json)
        return _job_outcome(job, args.json)
    if args.json:
        _print_json(job)
    else:
        print(f"job {job['id']} ({job['kind']}) queued")
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    client = _client(args)
    job = client.get(f"/v1/jobs/{args.id}")
    try:
        job["federation"] = client.get(f"/v1/jobs/{args.id}/parties")
    except DaemonError as exc:
        if exc.status != 404:
            raise
    if args.log:
        job["log"] = client.get(f"/v1/jobs/{args.id}/log")["lines"]
    if args.json:
        _print_json(job)
        return 0
    for key in ("id", "kind", "state", "progress", "message", "actor", "created", "started",
                "finished", "error"):
        print(f"{key + ':':<10} {job[key] if job[key] is not None else '-'}")
    print(f"{'params:':<10} {json.dumps(job['params'])}")
    if job["result"] is not None:
        print("result:")
        print(json.dumps(job["result"], indent=2))
    for party in job.get("federation", {}).get("parties", []):
        print(f"party: {party['node_id']} ({party['role']}) {party['state']}"
              + (f": {party['message']}" if party["message"] else "")
              + (f", outputs sha256 {party['output_hash'][:16]}..." if party["output_hash"]
                 else ""))
    for line in job.get("log", []):
        print(f"log: {line}")
    return 0


def cmd_jobs_result(args: argparse.Namespace) -> int:
    client = _client(args)
    data = client.get(f"/v1/jobs/{args.id}/result")
    result = data["result"]
    outputs = result.get("outputs") if isinstance(result, dict) else None
    outputs = outputs if isinstance(outputs, dict) else {}
    copied = None
    if args.out:
        if not outputs.get("rows_file"):
            raise CliError(f"job {args.id} has no rows file on this node (nothing to copy: "
                           "it learned only a size, or its job writes no rows)")
        copied = _copy_rows(client, args.id, outputs, args.out, args.force)
    if args.json:
        _print_json({**data, **({"copied_to": copied} if copied else {})})
        return 0
    print(f"job {data['id']} ({data['kind']}): {data['state']}")
    if not outputs:  # a single-node job: its result as it is
        print(json.dumps(result, indent=2))
    known = {"intersection_size": "intersection size", "learned": "learned",
             "rows_file": "rows file", "rows_sha256": "rows sha256", "dataset": "data set"}
    for key, label in known.items():
        if key in outputs:
            print(f"{label + ':':<19} {outputs[key]}")
    for key, value in outputs.items():
        if key not in known:
            print(f"{key + ':':<19} {json.dumps(value) if not isinstance(value, str) else value}")
    if isinstance(result, dict) and result.get("output_hash"):
        print(f"{'output hash:':<19} {result['output_hash']}")
    if copied:
        print(f"rows copied to {copied}")
    return 0


def _copy_rows(client: DaemonClient, job_id: int, outputs: dict[str, Any], out: str,
               force: bool) -> str:
    """This node's rows file, read through the daemon (the CLI's user may not be able to read
    the daemon's output directory), written to ``out`` whole or not at all."""
    import hashlib
    import tempfile

    target = os.path.abspath(out)
    if os.path.lexists(target) and not force:
        raise CliError(f"{out} exists; pass --force to replace it")
    text = client.get(f"/v1/jobs/{job_id}/result", rows=1)
    if not isinstance(text, str):
        raise CliError("the daemon did not answer with the rows file's text")
    data = text.encode("utf-8")
    want = outputs.get("rows_sha256")
    if want and hashlib.sha256(data).hexdigest() != want:
        raise CliError(f"the rows file read through the daemon does not match job {job_id}'s "
                       "rows_sha256; nothing written")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target),
                               prefix=f".{os.path.basename(target)}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, target)
        else:
            # a hard link never replaces: a file that appeared since the check above survives
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise CliError(f"{out} exists; pass --force to replace it") from None
            except OSError:  # a file system without hard links: check, then rename
                if os.path.lexists(target):
                    raise CliError(f"{out} exists; pass --force to replace it") from None
                os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def cmd_jobs_list(args: argparse.Namespace) -> int:
    data = _client(args).get("/v1/jobs", state=args.state, kind=args.kind, limit=args.limit)
    if args.json:
        _print_json(data)
        return 0
    for job in data["jobs"]:
        print(f"{job['id']:>5}  {job['kind']:<10} {job['state']:<11} {job['progress']:3d}%  "
              f"{job['created']}  {job['message']}")
    print(f"{len(data['jobs'])} of {data['total']} job(s)")
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    job = _client(args).post(f"/v1/jobs/{args.id}/cancel", {})
    if args.json:
        _print_json(job)
    else:
        print(f"job {job['id']}: {job['state']} ({job['message']})")
    return 0


def cmd_jobs_approve(args: argparse.Namespace) -> int:
    job = _client(args).post(f"/v1/jobs/{args.id}/approve", {})
    if args.json:
        _print_json(job)
    else:
        print(f"job {job['id']}: {job['state']} ({job['message']})")
    return 0


def cmd_jobs_resume(args: argparse.Namespace) -> int:
    job = _client(args).post(f"/v1/jobs/{args.id}/resume", {})
    if args.json:
        _print_json(job)
    else:
        print(f"job {job['id']} queued again")
    return 0


def cmd_jobs_watch(args: argparse.Namespace) -> int:
    return _job_outcome(_watch(_client(args), args.id, quiet=args.json), args.json)


def cmd_bench(args: argparse.Namespace) -> int:
    from accel.bench import paillier as bench  # NumPy and the backends: only for this command

    argv = ["--bits", str(args.bits)]
    if args.backend:
        argv += ["--backend", args.backend]
    argv += ["--quick"] * args.quick + ["--json"] * args.json
    return int(bench.main(argv) or 0)


# parser ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pec-appliance",
                                     description="PEC appliance node management")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("inventory", help="show the hardware this node has")
    p.add_argument("--root", default="/", help="read /proc, /sys and /dev under this directory")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-accel", action="store_true", help="do not ask the accel backends")
    p.set_defaults(func=cmd_inventory)

    p = sub.add_parser(
        "profile", help="show this node's profile and why (with its override), or set one",
        description="Without options: the node's profile as its daemon decides it, override "
                    "included (read from the store when the daemon is stopped). With --root, "
                    "--profiles-dir or --mini-capability, or without an initialised state "
                    "directory: what that hardware alone gives.")
    _state_arg(p)
    p.add_argument("--root", default=None,
                   help="evaluate the hardware under this directory (/proc, /sys, /dev) alone")
    p.add_argument("--json", action="store_true")
    p.add_argument("--profiles-dir", default=None, help="profile files (default: shipped ones)")
    p.add_argument("--mini-capability", choices=("mpc", "fl"), default=None)
    change = p.add_mutually_exclusive_group()
    change.add_argument("--override", default=None, metavar="PROFILE",
                        help="override the hardware's profile (audited); works with the "
                             "daemon stopped too")
    change.add_argument("--clear-override", action="store_true",
                        help="let the hardware decide again, also when the stored override is "
                             "corrupt and the daemon is stopped (audited)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("init", help="create or complete a state directory")
    _state_arg(p)
    p.add_argument("--admin-password-file", default=None,
                   help="file whose first line is the password of user 'admin' (>= 12 chars)")
    p.add_argument("--root", default="/", help="hardware root the daemon reads")
    p.add_argument("--mini-capability", choices=("mpc", "fl"), default=None)
    p.add_argument("--force", action="store_true", help="replace an existing admin password")
    p.add_argument("--trust", choices=("dev", "hardware"), default=None,
                   help="trust root of a new config: dev (SoftHSM2 + swtpm in the state "
                        "directory; default except for /var/lib/pec) or hardware")
    p.add_argument("--hsm-pin-file", default=None,
                   help="hardware trust root: file whose first line is the token's user PIN")
    p.add_argument("--dev", action="store_true",
                   help="development machine: override the profile with 'development' (every "
                        "capability the hardware can carry is on; audited)")
    p.add_argument("--node-id", default=None,
                   help="this node's id in a new state directory (a DNS label, e.g. bank-a-01; "
                        "default a random UUID); peers see it in the node card")
    p.add_argument("--organisation", default=None,
                   help="the organisation this node speaks for (shown to peers in its card)")
    p.add_argument("--interconnect-listen", default=None, metavar="HOST:PORT",
                   help="where the federation's mTLS listener binds")
    p.add_argument("--interconnect-endpoint", default=None, metavar="HOST:PORT",
                   help="where peers reach this node, when not the listen address (NAT)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", help="run the node daemon in the foreground")
    _state_arg(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="the running daemon's status")
    _state_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    jobs = sub.add_parser("jobs", help="list, show, submit, cancel, resume and watch jobs")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    p = jsub.add_parser("submit", help="queue a job: benchmark, calibrate, selftest, burnin")
    p.add_argument("kind")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="job parameter; VALUE is JSON or a bare word")
    p.add_argument("--bits", type=int, default=None, help="shorthand for --param bits=N")
    p.add_argument("--quick", action="store_true", help="shorthand for --param quick=true")
    p.add_argument("--peer", action="append", default=[], metavar="NAME",
                   help="a peer that runs this multi-party job with this node (repeat it)")
    p.add_argument("--wait", action="store_true", help="follow it to the end with progress")
    p.set_defaults(func=cmd_jobs_submit)
    for name, func, helptext in (
        ("show", cmd_jobs_show, "one job, with its result"),
        ("cancel", cmd_jobs_cancel, "cancel a queued or running job (declines one awaiting "
                                    "approval)"),
        ("approve", cmd_jobs_approve, "approve a peer's job awaiting approval"),
        ("resume", cmd_jobs_resume, "queue an interrupted, failed or cancelled job again"),
        ("watch", cmd_jobs_watch, "follow a job with a progress bar"),
    ):
        p = jsub.add_parser(name, help=helptext)
        p.add_argument("id", type=int)
        p.set_defaults(func=func)
        if name == "show":
            p.add_argument("--log", action="store_true", help="include the job's log")
    p = jsub.add_parser("result", help="a finished job's outputs; --out copies its rows")
    p.add_argument("id", type=int)
    p.add_argument("--out", default=None, metavar="FILE.csv",
                   help="copy this node's rows file (e.g. its side of an intersection) here")
    p.add_argument("--force", action="store_true", help="with --out, replace an existing FILE")
    p.set_defaults(func=cmd_jobs_result)
    p = jsub.add_parser("list", help="jobs, newest first")
    p.add_argument("--state", default=None)
    p.add_argument("--kind", default=None)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_jobs_list)
    for action in jsub.choices.values():
        _state_arg(action)
        action.add_argument("--json", action="store_true")

    p = sub.add_parser("bench", help="run the accel Paillier benchmark here, in this process")
    p.add_argument("--bits", type=int, default=2048, help="key size (default 2048)")
    p.add_argument("--backend", default=None, help="backend name, or 'all'")
    p.add_argument("--quick", action="store_true", help="small batches (a smoke run)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    panel_cli.register(sub)
    trust_cli.register(sub)
    federation_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    debug = bool(os.environ.get("PEC_DEBUG"))
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pec-appliance: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
    except CliError as exc:
        print(f"pec-appliance: error: {exc}", file=sys.stderr)
        return exc.code
    except DaemonError as exc:
        where = f" (HTTP {exc.status})" if exc.status else ""
        print(f"pec-appliance: error: {exc.message}{where}", file=sys.stderr)
        return EXIT_ERROR
    except SystemExit:
        raise
    except Exception as exc:  # one line, never a traceback, whatever failed
        if debug:
            raise
        text = str(exc).strip().splitlines()
        print(f"pec-appliance: error: {text[0] if text else type(exc).__name__}",
              file=sys.stderr)
        return EXIT_ERROR

