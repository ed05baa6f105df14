"""``pec-appliance serve``: the node daemon in the foreground.

HTTP/1.1 on a Unix socket (``STATE/run/noded.sock``, mode 0660), one thread per connection,
jobs on a worker thread. Readiness and watchdog pings go to systemd over $NOTIFY_SOCKET;
SIGTERM or SIGINT stops accepting, interrupts a running job, closes the store, removes the
socket and exits 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pwd
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from appliance import api, sdnotify
from appliance.node import Node
from appliance.state.statedir import StateDir

log = logging.getLogger("pec.noded")


class UnixHTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_UNIX
    daemon_threads = True

    def __init__(self, path: Path, node: Node) -> None:
        self.node = node
        super().__init__(str(path), RequestHandler, bind_and_activate=False)

    def server_bind(self) -> None:
        path = Path(self.server_address)
        if path.exists() or path.is_symlink():
            path.unlink()  # left by a killed process: the state lock says none other runs
        # create it with no access for others from the first instant, then open it to the group
        old = os.umask(0o117)
        try:
            socketserver.TCPServer.server_bind(self)
        finally:
            os.umask(old)
        os.chmod(path, 0o660)
        self.server_name, self.server_port = "localhost", 0


def _lock_state(state: StateDir) -> int:
    """Hold an exclusive lock on the state directory for the life of the process."""
    path = state.run_dir / "noded.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"another daemon already runs on {state.path} (lock {path})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class RequestHandler(BaseHTTPRequestHandler):
    server: UnixHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "pec-noded"

    def address_string(self) -> str:
        return "local"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        try:
            body = self._read_body()
            caller = self._caller()
        except api.ApiError as exc:
            self._send(exc.status, {"error": str(exc)})
            return
        token = api.current_caller.set(caller)
        try:
            status, payload = api.dispatch(self.server.node, method, url.path, query, body)
        except Exception as exc:  # a bug in one handler answers 500, never kills the daemon
            log.error("%s %s failed:\n%s", method, url.path, traceback.format_exc())
            status, payload = 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}
        finally:
            api.current_caller.reset(token)
        self._send(status, payload)

    def _caller(self) -> api.Caller:
        """Who is on the other end: the kernel's record of the connecting process, which the
        client cannot forge (unlike anything in the request)."""
        creds = self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                           struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = f"uid {uid}"
        return api.caller_from(pid, uid, gid, user, self.headers.get(api.PANEL_USER_HEADER),
                               service_uid=os.geteuid())

    def _read_body(self) -> Any:
        length = self.headers.get("Content-Length")
        if not length:
            return None
        try:
            size = int(length)
        except ValueError:
            raise api.ApiError(400, "bad Content-Length") from None
        if size > api.MAX_BODY:
            self.close_connection = True
            # read a moderately oversized body away so the client gets to read the 413
            # instead of a broken pipe; beyond that, just hang up
            if size <= 8 * api.MAX_BODY:
                remaining = size
                while remaining > 0 and (chunk := self.rfile.read(min(remaining, 65536))):
                    remaining -= len(chunk)
            raise api.ApiError(413, f"request body larger than {api.MAX_BODY} bytes")
        raw = self.rfile.read(size)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise api.ApiError(400, f"request body is not valid JSON: {exc}") from None

    def _send(self, status: int, payload: Any) -> None:
        if isinstance(payload, api.Text):
            data, ctype = payload.encode(), "text/plain; version=0.0.4; charset=utf-8"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


def _setup_logging(state: StateDir, level: str) -> None:
    root = logging.getLogger("pec")
    root.setLevel(level.upper())
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in (logging.StreamHandler(sys.stderr),
                    logging.FileHandler(state.log_dir / "noded.log")):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def serve(state_dir: str) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the exit status."""
    state = StateDir(state_dir)
    state.check()
    config = state.config()
    state.run_dir.mkdir(exist_ok=True)
    state.log_dir.mkdir(exist_ok=True)
    _lock_state(state)  # released by the kernel when the process ends, however it ends
    # the accel router keeps its calibration with the node's state, not in a home directory
    os.environ.setdefault("PEC_ACCEL_CACHE", str(state.path / "accel"))
    _setup_logging(state, config.log_level)
    # Block the stop signals before our threads start, so that they (the HTTP and job threads,
    # and the native threads of the OpenCL runtimes they start) inherit the mask: a signal
    # landing in a native thread would otherwise interrupt its system calls mid-computation.
    # The main thread takes them with sigtimedwait. Threads that existed before (a BLAS pool
    # started at import) still have them unblocked: the handler turns such a delivery into
    # the same stop instead of the default action, killing the process.
    stop = threading.Event()
    stop_signals = {signal.SIGTERM, signal.SIGINT}

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    for signum in stop_signals:
        signal.signal(signum, on_signal)
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    node = Node(state)
    server: UnixHTTPServer | None = None
    serving: threading.Thread | None = None
    try:
        interrupted = node.start()
        if interrupted:
            log.warning("jobs interrupted by the previous stop: %s", interrupted)
        server = UnixHTTPServer(state.socket_path, node)
        server.server_bind()
        server.server_activate()
        serving = threading.Thread(target=server.serve_forever, name="pec-http", daemon=True)
        serving.start()
        print(f"pec-noded ready: socket={state.socket_path} profile={node.profile.profile}",
              flush=True)
        log.info("ready: profile %s, capabilities %s, router policy %s",
                 node.profile.profile, node.profile.capabilities, node.profile.router_policy)
        sdnotify.notify(f"READY=1\nSTATUS=profile {node.profile.profile}")
        interval = sdnotify.watchdog_interval()
        next_ping = time.monotonic()
        while True:
            received = signal.sigtimedwait(stop_signals, min(interval or 1.0, 1.0))
            if received is not None or stop.is_set():
                name = signal.Signals(received.si_signo).name if received else "a stop signal"
                log.info("received %s, stopping", name)
                break
            # ping only while the API thread lives and the store answers: a wedged daemon
            # stops pinging and systemd restarts it
            if interval and time.monotonic() >= next_ping and serving.is_alive():
                node.store.query("SELECT 1")
                sdnotify.notify("WATCHDOG=1")
                next_ping = time.monotonic() + interval
        sdnotify.notify("STOPPING=1")
    finally:
        if server is not None:
            if serving is not None:
                server.shutdown()
            server.server_close()
            with contextlib.suppress(FileNotFoundError):
                state.socket_path.unlink()
        node.stop()
        log.info("stopped")
    return 0
