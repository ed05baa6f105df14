"""``pec-appliance panel --state-dir DIR --listen HOST:PORT``: serve the local admin panel."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:8443"


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 hosts in brackets) -> (host, port), with a clear error when malformed."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--listen must be HOST:PORT, not {value!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    from appliance.panel.app import create_app
    from appliance.panel.tls import ensure_certificate

    host, port = args.listen
    state_dir = Path(args.state_dir)
    # Off loopback the panel is on a management network: never serve it in clear text there.
    tls = not is_loopback(host)
    app = create_app({"STATE_DIR": state_dir, "TLS": tls})
    ssl_context = ensure_certificate(state_dir / "panel", host) if tls else None
    server = make_server(host, port, app, threaded=True, ssl_context=ssl_context)
    scheme = "https" if tls else "http"
    shown = f"[{host}]" if ":" in host else host
    print(f"pec-panel ready: {scheme}://{shown}:{server.port}/ (log in as admin)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    # The daemon's own default, so `panel` and `serve` agree without flags.
    from appliance.state.statedir import default_state_dir

    parser = subparsers.add_parser("panel", help="serve the local admin panel")
    parser.add_argument(
        "--state-dir", default=default_state_dir(), help="the daemon's state directory"
    )
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=parse_listen(DEFAULT_LISTEN),
        help=f"HOST:PORT to serve on (default {DEFAULT_LISTEN}; HTTPS unless loopback)",
    )
    parser.set_defaults(func=serve)
