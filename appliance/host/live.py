"""Live load figures from psutil (not through the root prefix: they describe this process's
host as it runs)."""

from __future__ import annotations

from typing import Any

import psutil

from appliance.state.store import utc_now


def prime() -> None:
    """psutil measures CPU use since the previous call; the first one only starts the clock."""
    psutil.cpu_percent(interval=None)


def snapshot(disk_path: str = "/") -> dict[str, Any]:
    mem = psutil.virtual_memory()
    disk = psutil.disk_usage(disk_path)
    net = psutil.net_io_counters(pernic=True)
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory": {"used": mem.total - mem.available, "total": mem.total},
        "disk": {"used": disk.used, "total": disk.total},
        "net": {
            name: {"rx_bytes": c.bytes_recv, "tx_bytes": c.bytes_sent}
            for name, c in sorted(net.items())
        },
        "time": utc_now(),
    }
