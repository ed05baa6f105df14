"""The Prometheus text exposition of the node: jobs, accelerator and trust-root health, CPU,
memory, disk."""

from __future__ import annotations

from typing import Any

from appliance.jobs.states import STATES


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(node: Any) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(str(v))}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")

    status = node.status()
    snap = node.live()
    counts = node.runner.counts()
    kinds = sorted(node.runner.kinds)
    metric("pec_up", "gauge", "1 while the node daemon runs", [({}, 1)])
    metric("pec_uptime_seconds", "gauge", "seconds since the daemon started",
           [({}, status["uptime_s"])])
    metric("pec_profile_info", "gauge", "the profile this node runs as",
           [({"profile": status["profile"], "router_policy": status["router_policy"]}, 1)])
    metric("pec_degraded", "gauge", "1 when the node runs degraded",
           [({}, int(status["degraded"]))])
    metric("pec_trust_ok", "gauge",
           "1 when the HSM or TPM works, 0 when it failed (absent while not configured)",
           [({"part": part}, int(status["health"][part]["ok"])) for part in ("hsm", "tpm")
            if status["health"][part]["ok"] is not None])
    metric("pec_jobs", "gauge", "jobs by kind and state",
           [({"kind": k, "state": s}, counts.get((k, s), 0)) for k in kinds for s in STATES])
    metric("pec_backend_healthy", "gauge", "1 when the accel backend computes correctly",
           [({"backend": b["name"]}, int(b["healthy"])) for b in status["health"]["backends"]])
    metric("pec_backend_devices", "gauge", "devices each accel backend drives",
           [({"backend": b["name"]}, len(b["devices"])) for b in status["health"]["backends"]])
    metric("pec_cpu_percent", "gauge", "CPU use in percent", [({}, snap["cpu_percent"])])
    metric("pec_memory_used_bytes", "gauge", "memory in use", [({}, snap["memory"]["used"])])
    metric("pec_memory_total_bytes", "gauge", "memory in all", [({}, snap["memory"]["total"])])
    metric("pec_disk_used_bytes", "gauge", "state disk in use", [({}, snap["disk"]["used"])])
    metric("pec_disk_total_bytes", "gauge", "state disk size", [({}, snap["disk"]["total"])])
    metric("pec_network_receive_bytes_total", "counter", "bytes received per interface",
           [({"iface": n}, c["rx_bytes"]) for n, c in snap["net"].items()])
    metric("pec_network_transmit_bytes_total", "counter", "bytes sent per interface",
           [({"iface": n}, c["tx_bytes"]) for n, c in snap["net"].items()])
    return "\n".join(lines) + "\n"
