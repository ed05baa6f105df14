"""Client of the daemon's local API (JSON over HTTP on ``STATE/run/noded.sock``).

The CLI and the panel both use it::

    client = DaemonClient("/var/lib/pec")
    client.get("/v1/jobs", state="running")
    client.post("/v1/jobs", {"kind": "selftest"})   # recorded as the calling Unix user
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlencode


class DaemonError(Exception):
    """The daemon answered an error, or could not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


# The daemon's socket, relative to its state directory (the panel must not import StateDir).
SOCKET_PATH = Path("run", "noded.sock")


# Sent by the panel to name the logged-in user it acts for. The daemon names every caller by
# the socket's peer credentials and believes this header only from the panel's own account.
PANEL_USER_HEADER = "X-Pec-Panel-User"


class DaemonClient:
    def __init__(self, state_dir: str | Path, timeout: float = 30.0,
                 panel_user: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.socket_path = self.state_dir / SOCKET_PATH
        self.timeout = timeout
        self.panel_user = panel_user

    def on_behalf_of(self, panel_user: str) -> DaemonClient:
        """A client whose requests the daemon records as done by ``panel_user`` (the panel's
        logged-in user), through this process's Unix account."""
        return DaemonClient(self.state_dir, self.timeout, panel_user)

    def get(self, path: str, **query: Any) -> Any:
        params = {k: v for k, v in query.items() if v is not None}
        return self.request("GET", f"{path}?{urlencode(params)}" if params else path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, {} if body is None else body)

    def put(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("DELETE", path, {} if body is None else body)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One request; the parsed JSON answer (text for ``/metrics``) or ``DaemonError``."""
        conn = _UnixConnection(str(self.socket_path), self.timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.panel_user is not None:
            headers[PANEL_USER_HEADER] = self.panel_user
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            ctype = response.getheader("Content-Type", "")
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonError(
                0, f"the node daemon is not running (no answer on {self.socket_path})"
            ) from None
        except PermissionError:
            raise DaemonError(0, f"no permission to use {self.socket_path}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise DaemonError(0, f"talking to the node daemon failed: {exc}") from None
        finally:
            conn.close()
        if ctype.startswith("application/json"):
            try:
                payload = json.loads(raw)
            except ValueError:
                raise DaemonError(response.status, "the daemon answered malformed JSON") from None
        else:
            payload = raw.decode(errors="replace")
        if response.status >= 400:
            message = payload.get("error") if isinstance(payload, dict) else None
            raise DaemonError(response.status, message or f"HTTP {response.status}")
        return payload
