"""The brpc link of a SecretFlow engine (spu 0.9.5), for the engine scripts.

Imported by ``psi/spu_engine.py`` and ``stats/spu_engine.py``, which run under the engine
venv's interpreter as plain scripts: so this module imports only the standard library and
spu, nothing of ``appliance``.
"""

from __future__ import annotations

from typing import Any


def brpc_link(names: list[str], addresses: list[str], rank: int, link_id: str,
              timeout_s: float) -> Any:
    """A started link: party ``i`` named ``names[i]`` at ``addresses[i]``; this party listens
    on ``addresses[rank]`` and dials the others'."""
    from spu.libspu import link

    desc = link.Desc()
    desc.id = link_id  # every party must name the same link
    for name, address in zip(names, addresses, strict=True):
        desc.add_party(name, address)
    # The parties start together; the one that comes up first retries until the other
    # listens. 100 ms x N keeps a hung peer bounded by timeout_s.
    desc.connect_retry_interval_ms = 100
    desc.connect_retry_times = max(1, int(timeout_s * 10))
    desc.recv_timeout_ms = int(timeout_s * 1000)
    desc.http_timeout_ms = int(timeout_s * 1000)
    # A send that meets a peer not yet listening is retried after retry_interval_ms, growing
    # by retry_interval_incr_ms (defaults 1 s and +2 s): with them link set-up took about 4 s
    # in every first trial run, so retry soon and often instead.
    desc.retry_opts.retry_interval_ms = 100
    desc.retry_opts.retry_interval_incr_ms = 0
    desc.retry_opts.max_retry = max(3, int(timeout_s * 10))
    # TLS is off: the bench runs the parties on loopback, and the appliance carries the link
    # over its own attested mTLS job sessions (the engine only ever talks to 127.0.0.1).
    desc.enable_ssl = False
    return link.create_brpc(desc, rank)
