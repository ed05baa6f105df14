"""Private query between two nodes: the messages on a session of topic ``pir`` (docs/pir.md).

The client sends a JSON request ``{op, service, version, count}``; ``oprf`` and ``query`` are
followed by one byte message (blinded points, query vectors). The server answers each request
with ``{code, msg, data}`` (code 0: success), then, for ``hint``, ``oprf`` and ``query``, one
byte message. One session carries any number of requests; the client closes it.

    list                          -> {services: [info, ...]}
    info   service                -> info (the current version's public description)
    hint   service version        -> {bytes} + the hint H^T, N x rows little-endian words
    oprf   service version count  + count x 32 bytes -> count x 32 bytes (k * each point)
    query  service version count  + count x cols x 4 bytes -> count x rows x 4 bytes

A request naming a version that is no longer current is refused with code 409; the client
fetches the new description and hint and asks again, once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from appliance.federation.channel import ChannelError, RecvTimeout
from appliance.operators.base import OperatorError
from appliance.operators.pir import layout as lay
from appliance.operators.pir import scheme
from appliance.operators.pir.scheme import PirError
from appliance.operators.pir.service import (
    LABEL_TYPES,
    MAX_BATCH,
    NAME,
    PROTOCOL,
    ServiceStore,
    check_name,
    typed,
)
from appliance.operators.psi import r255
from appliance.operators.psi.ecdh_engine import id_bytes
from appliance.operators.psi.unbalanced import evaluate_blinded
from appliance.state.atomicfile import write_atomic, write_json

log = logging.getLogger("pec.pir")

TOPIC = "pir"
OPS = ("list", "info", "hint", "oprf", "query")
#: how long either side waits for the other's next message
TIMEOUT = 120.0
MAX_KEY_BYTES = 1024
_INT = re.compile(r"[+-]?[0-9]{1,20}")


class Session(Protocol):
    def send(self, obj: Any, timeout: float | None = None) -> None: ...

    def send_bytes(self, data: Any, timeout: float | None = None) -> int: ...

    def recv(self, timeout: float | None = None) -> Any: ...

    def recv_chunks(self, timeout: float | None = None) -> Iterator[bytes]: ...


# -- the server ------------------------------------------------------------------------------

Served = Callable[[str, dict[str, Any]], None]  # (op, facts) after each answered request
#: (op, service or None, keys asked) before each request; raises PirError to refuse it
Allow = Callable[[str, str | None, int], None]


def serve(session: Any, store: ServiceStore, on_served: Served,
          allow: Allow = lambda op, service, count: None) -> None:
    """Answer one peer's requests until it closes the session (or stays silent TIMEOUT s).
    ``allow`` is asked before each request (the peer still active, the service's data still
    servable under the grade policy, the peer's key budget). Channel failures end the
    session; nothing a peer sends can stop the node serving."""
    while True:
        try:
            msg = session.recv(timeout=TIMEOUT)
        except RecvTimeout:
            session.abort("private query: idle for too long")
            return
        except ChannelError:
            return  # closed by the client, or lost: either way this session is over
        try:
            reply, payload = _answer(session, store, msg, on_served, allow)
        except ChannelError as exc:
            log.info("private query session ended mid-request: %s", exc)
            return
        try:
            session.send(reply, timeout=TIMEOUT)
            if payload is not None:
                session.send_bytes(payload, timeout=TIMEOUT)
        except ChannelError as exc:  # the client went away mid-answer
            log.info("private query answer not delivered: %s", exc)
            return
        finally:
            close = getattr(payload, "close", None)
            if close is not None:
                close()  # the hint file, when the answer was a stream of it


def _answer(session: Any, store: ServiceStore, msg: Any, on_served: Served,
            allow: Allow) -> tuple[dict[str, Any], Any]:
    op = msg.get("op") if isinstance(msg, dict) else None
    data: bytes | None = None
    if op in ("oprf", "query"):
        data = session.recv(timeout=TIMEOUT)  # read it even to refuse: the stream stays in step
        if not isinstance(data, bytes):
            return _refusal(400, f"private query: {op} wants a byte message after its header"), None
    if op not in OPS:
        return _refusal(400, f"private query: a request is {{op, ...}} with op one of "
                        f"{', '.join(OPS)}; got {str(op)[:40]!r}"), None
    try:
        if op == "list":
            allow(op, None, 0)
            return _ok({"services": [store.public_info(n) for n in store.names()]}), None
        name = check_name(msg.get("service"))
        count = msg.get("count")
        if op in ("oprf", "query") and (isinstance(count, bool) or not isinstance(count, int)
                                        or not 1 <= count <= MAX_BATCH):
            # checked before anything is charged: a malformed count must not move the budget
            raise PirError(f"private query: a batch is 1..{MAX_BATCH} keys, not {count!r}")
        allow(op, name, count if op in ("oprf", "query") else 0)
        if op == "info":
            return _ok(store.public_info(name)), None
        version = msg.get("version")
        if op == "hint":
            loaded = store.current(name, version)
            size = scheme.N * loaded.info["rows"] * 4
            chunks = store.hint_chunks(name, version)
            on_served("hint", {"service": name, "version": version, "bytes": size})
            return _ok({"bytes": size}), chunks
        assert data is not None
        if op == "oprf":
            if len(data) != count * r255.POINT_BYTES:
                raise PirError(f"private query: {count} blinded keys are "
                               f"{count * r255.POINT_BYTES} bytes, got {len(data)}")
            out = store.answer_oprf(name, version, data)
            on_served("oprf", {"service": name, "version": version, "count": count})
        else:
            out = store.answer_queries(name, version, count, data)
            on_served("query", {"service": name, "version": version, "count": count})
        return _ok({}), out
    except PirError as exc:
        return _refusal(exc.status, str(exc)), None
    except OperatorError as exc:  # an invalid point in a blinded query
        return _refusal(400, f"private query: {exc}"), None


def _ok(data: Any) -> dict[str, Any]:
    return {"code": 0, "msg": "ok", "data": data}


def _refusal(code: int, msg: str) -> dict[str, Any]:
    return {"code": code, "msg": msg, "data": None}


# -- the client --------------------------------------------------------------------------------

_HEX = re.compile(r"[0-9a-f]+")


def check_info(info: Any, peer: str) -> dict[str, Any]:
    """A peer's description of a service, or PirError (502) saying what is malformed: nothing
    a peer sends reaches the arithmetic, the cache paths or the results unchecked."""
    def bad(what: str) -> PirError:
        return PirError(f"private query: peer {peer} described a service with {what}", 502)

    if not isinstance(info, dict):
        raise bad("no description")
    if info.get("protocol") != PROTOCOL:
        raise bad(f"protocol {info.get('protocol')!r} (this node speaks {PROTOCOL})")
    if info.get("lwe") != scheme.PARAMS:
        raise bad(f"LWE parameters {info.get('lwe')!r} other than this node's")
    ints = ("version", "records", "rows", "cols", "max_batch")
    if not all(isinstance(info.get(k), int) and not isinstance(info.get(k), bool)
               and info[k] >= 1 for k in ints):
        raise bad(f"a field among {', '.join(ints)} that is not a positive integer")
    if not (isinstance(info.get("name"), str) and NAME.fullmatch(info["name"])):
        raise bad("a bad name")
    if info.get("key_type") not in ("int", "string"):
        raise bad(f"key type {info.get('key_type')!r}")
    cols, types = info.get("label_columns"), info.get("label_types")
    if not (isinstance(cols, list) and isinstance(types, list) and cols
            and len(cols) == len(types) and all(isinstance(c, str) for c in cols)
            and all(t in LABEL_TYPES for t in types)):
        raise bad("label columns and types that do not match")
    for field, size in (("seed", 2 * scheme.SEED_BYTES), ("hint_sha256", 64)):
        if not (isinstance(info.get(field), str) and len(info[field]) == size
                and _HEX.fullmatch(info[field])):
            raise bad(f"a malformed {field}")
    try:
        shape = scheme.Shape(info["rows"], info["cols"])
        shape.check()
        if lay.Layout.from_dict(info.get("layout") or {}).shape != shape:
            raise PirError("its layout and its shape disagree")
    except PirError as exc:
        raise bad(f"a bad shape ({exc})") from None
    if info["max_batch"] > MAX_BATCH:
        raise bad(f"batches of {info['max_batch']} keys")
    cost = info.get("cost")
    if not (isinstance(cost, dict) and all(
            isinstance(cost.get(k), int | float) and not isinstance(cost.get(k), bool)
            for k in ("setup_seconds", "database_bytes", "hint_bytes", "query_bytes",
                      "answer_bytes"))):
        raise bad("malformed cost figures")
    return info


class _Cached:
    def __init__(self, info: dict[str, Any], hint_t: np.ndarray) -> None:
        self.info = info
        self.hint_t = hint_t
        self.a_t = scheme.public_matrix(bytes.fromhex(info["seed"]), info["cols"])
        self.layout = lay.Layout.from_dict(info["layout"])


class HintCache:
    """Downloaded hints, on disk per (peer node, service, version) and the last few in memory
    with their public matrices."""

    def __init__(self, root: str | Path, keep: int = 4) -> None:
        self.root = Path(root)
        self.keep = keep
        self._mem: OrderedDict[tuple[str, str, int], _Cached] = OrderedDict()
        self._lock = threading.Lock()

    def _dir(self, peer: str, info: dict[str, Any]) -> Path:
        return self.root / peer / info["name"] / f"v{int(info['version'])}"

    def get(self, peer: str, info: dict[str, Any]) -> _Cached | None:
        key = (peer, info["name"], int(info["version"]))
        with self._lock:
            hit = self._mem.get(key)
            if hit is not None and hit.info == info:
                self._mem.move_to_end(key)
                return hit
        d = self._dir(peer, info)
        try:
            if json.loads((d / "info.json").read_text()) != info:
                return None
            raw = (d / "hint.u32").read_bytes()
        except (OSError, ValueError):
            return None
        if hashlib.sha256(raw).hexdigest() != info["hint_sha256"]:
            return None
        return self._remember(key, info, raw)

    def put(self, peer: str, info: dict[str, Any], raw: bytes) -> _Cached:
        d = self._dir(peer, info)
        d.mkdir(parents=True, exist_ok=True)
        write_atomic(d / "hint.u32", raw)
        write_json(d / "info.json", info)
        for old in d.parent.iterdir():  # a service's older versions are of no more use
            if old != d:
                shutil.rmtree(old, ignore_errors=True)
        return self._remember((peer, info["name"], int(info["version"])), info, raw)

    def _remember(self, key: tuple[str, str, int], info: dict[str, Any], raw: bytes) -> _Cached:
        rows = int(info["rows"])
        hint_t = np.frombuffer(raw, dtype="<u4").astype(np.uint32, copy=False)
        cached = _Cached(info, hint_t.reshape(scheme.N, rows))
        with self._lock:
            self._mem[key] = cached
            while len(self._mem) > self.keep:
                self._mem.popitem(last=False)
        return cached


def normalise_keys(keys: list[Any], key_type: str, service: str) -> list[str]:
    """The keys as the server's canonical text, or PirError naming the first bad one. Text
    keys are taken exactly as given (no trimming: " 42" is not "42"); integer keys may be
    written with a sign or leading zeros."""
    if not keys:
        raise PirError("private query: no keys to ask")
    if len(keys) > MAX_BATCH:
        raise PirError(f"private query: {len(keys)} keys are over the {MAX_BATCH} one query "
                       "may ask; split them")
    out = []
    for i, k in enumerate(keys):
        if isinstance(k, bool) or not isinstance(k, str | int):
            raise PirError(f"private query: key {i} is {type(k).__name__}, not text")
        text = str(k)
        if key_type == "int":
            if not _INT.fullmatch(text.strip()) or not -(2**63) <= int(text) < 2**64:
                raise PirError(f"private query: key {text[:40]!r} is not an integer, and "
                               f"service {service}'s keys are integers")
            text = str(int(text))
        if not text or len(text.encode()) > MAX_KEY_BYTES:
            raise PirError(f"private query: key {i} is empty or over {MAX_KEY_BYTES} bytes")
        out.append(text)
    return out


class Client:
    """The querying side on one open session to the server."""

    def __init__(self, session: Any, peer: str, cache: HintCache) -> None:
        self.session, self.peer, self.cache = session, peer, cache
        self.sent = self.received = 0

    def _request(self, body: dict[str, Any], payload: bytes | None = None) -> tuple[Any, Any]:
        try:
            self.session.send(body, timeout=TIMEOUT)
            self.sent += len(str(body))
            if payload is not None:
                self.sent += self.session.send_bytes(payload, timeout=TIMEOUT)
            reply = self.session.recv(timeout=TIMEOUT)
            if not (isinstance(reply, dict) and isinstance(reply.get("code"), int)):
                raise PirError(f"private query: peer {self.peer} sent a malformed reply", 502)
            if reply["code"] != 0:
                status = reply["code"] if 400 <= reply["code"] < 600 else 502
                raise PirError(f"peer {self.peer}: {reply.get('msg')}", status)
            if body["op"] == "hint":
                data = self._receive_hint(reply.get("data"))
                return reply.get("data"), data
            if body["op"] in ("oprf", "query"):
                data = self.session.recv(timeout=TIMEOUT)
                if not isinstance(data, bytes):
                    raise PirError(f"private query: peer {self.peer} sent no answer bytes", 502)
                self.received += len(data)
                return reply.get("data"), data
            return reply.get("data"), None
        except ChannelError as exc:
            raise PirError(f"private query: peer {self.peer} was lost mid-request "
                           f"({type(exc).__name__}: {exc})", 502) from exc

    def _receive_hint(self, meta: Any) -> bytes:
        """The hint, streamed in chunks (it may be larger than one message may be), at most
        the size the server announced."""
        size = meta.get("bytes") if isinstance(meta, dict) else None
        if not isinstance(size, int) or not 0 < size <= scheme.N * 4 * (1 << 24):
            raise PirError(f"private query: peer {self.peer} announced a hint of {size!r} "
                           "bytes", 502)
        buf = bytearray()
        for chunk in self.session.recv_chunks(timeout=TIMEOUT):
            buf += chunk
            if len(buf) > size:
                raise PirError(f"private query: peer {self.peer} sent more hint than the "
                               f"{size} bytes it announced", 502)
        self.received += len(buf)
        return bytes(buf)

    def services(self) -> list[dict[str, Any]]:
        data, _ = self._request({"op": "list"})
        if not isinstance(data, dict) or not isinstance(data.get("services"), list):
            raise PirError(f"private query: peer {self.peer} sent a malformed list", 502)
        return [check_info(s, self.peer) for s in data["services"]]

    def _service(self, name: str) -> _Cached:
        info, _ = self._request({"op": "info", "service": name})
        info = check_info(info, self.peer)
        if info["name"] != name:
            raise PirError(f"private query: peer {self.peer} described another service", 502)
        cached = self.cache.get(self.peer, info)
        if cached is not None:
            return cached
        _meta, raw = self._request({"op": "hint", "service": name, "version": info["version"]})
        if len(raw) != scheme.N * int(info["rows"]) * 4 or \
                hashlib.sha256(raw).hexdigest() != info["hint_sha256"]:
            raise PirError(f"private query: peer {self.peer}'s hint for {name} does not match "
                           "its description (truncated or corrupt download)", 502)
        return self.cache.put(self.peer, info, raw)

    def query(self, name: str, keys: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Each key's labels at the server, or not found: ``(results, cost)``."""
        check_name(name)
        started = time.perf_counter()
        for attempt in (1, 2):
            try:
                svc = self._service(name)
                # every key checked before anything is asked
                texts = normalise_keys(list(keys), svc.info["key_type"], name)
                results = []
                step = svc.info["max_batch"]
                for at in range(0, len(keys), step):
                    results += self._ask(svc, keys[at: at + step], texts[at: at + step])
                break
            except PirError as exc:
                if exc.status != 409 or attempt == 2:
                    raise
                log.info("service %s at %s was re-encoded; fetching it again", name, self.peer)
        cost = {"seconds": round(time.perf_counter() - started, 4), "bytes_sent": self.sent,
                "bytes_received": self.received, "version": svc.info["version"]}
        return results, cost

    def _ask(self, svc: _Cached, keys: list[Any], texts: list[str]) -> list[dict[str, Any]]:
        """One request's worth: ``keys`` as asked (for the results), ``texts`` normalised."""
        info = svc.info
        ids = id_bytes(pa.array(texts, pa.string()))
        version, n = info["version"], len(texts)

        def oprf(blinded: bytes) -> bytes:
            return self._request({"op": "oprf", "service": info["name"], "version": version,
                                  "count": n}, blinded)[1]

        f = evaluate_blinded(ids, oprf, lay.F_BYTES)
        columns = lay.buckets(f, info["cols"])
        s, q = scheme.make_queries(svc.a_t, columns)
        _, raw = self._request({"op": "query", "service": info["name"], "version": version,
                                "count": n}, q.astype("<u4").tobytes())
        if len(raw) != n * info["rows"] * 4:
            raise PirError(f"private query: peer {self.peer} answered {len(raw)} bytes to "
                           f"{n} queries of {info['rows']} words", 502)
        answers = np.frombuffer(raw, dtype="<u4").astype(np.uint32).reshape(n, info["rows"])
        read = scheme.decode(answers, s, svc.hint_t)
        columns_out = info["label_columns"]
        results = []
        for i, key in enumerate(keys):
            record = lay.find(read[i], svc.layout, f[i])
            if record is None:
                results.append({"key": key, "found": False, "labels": {}})
                continue
            values = lay.decode_labels(record, len(columns_out))
            results.append({"key": key, "found": True, "labels": {
                c: typed(v, t) for c, v, t in zip(columns_out, values, info["label_types"],
                                                  strict=True)}})
        return results
