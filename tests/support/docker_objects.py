"""Docker Engine API object shapes (v1.47) and small helpers, over plain JSON objects.

Shapes follow the Docker Engine API reference, v1.47
(https://docs.docker.com/reference/api/engine/version/v1.47/); :mod:`tests.support.docker_api`
serves them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "API_VERSION",
    "CONFIG_DEFAULTS",
    "HOST_DEFAULTS",
    "INSPECT_STATIC",
    "NAMES",
    "NEVER",
    "SURNAMES",
    "ApiFailure",
    "container_stats",
    "container_summary",
    "human",
    "iso",
    "label_matches",
    "parse_iso",
    "truthy",
]

API_VERSION = "1.47"
NEVER = "0001-01-01T00:00:00Z"
NAMES = ("brave", "calm", "eager", "keen", "quirky", "tender", "vibrant", "zen")
SURNAMES = ("turing", "hopper", "lovelace", "ritchie", "thompson", "liskov", "hamilton")
# ContainerInspectResponse fields we do not model, as a real daemon returns them.
INSPECT_STATIC = json.loads("""{
  "ResolvConfPath": "", "HostnamePath": "", "HostsPath": "", "LogPath": "", "Driver": "overlay2",
  "Platform": "linux", "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "",
  "ExecIDs": null, "Mounts": [], "GraphDriver": {"Name": "overlay2", "Data": {}}
}""")
# HostConfig defaults the daemon fills in when a create request leaves them out.
HOST_DEFAULTS = json.loads("""{
  "Binds": null, "NetworkMode": "bridge", "PortBindings": {}, "AutoRemove": false,
  "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}, "Memory": 0, "MemorySwap": 0,
  "MemoryReservation": 0, "NanoCpus": 0, "CpuShares": 0, "OomKillDisable": false,
  "LogConfig": {"Type": "json-file", "Config": {}}, "Privileged": false, "ReadonlyRootfs": false
}""")
CONFIG_DEFAULTS = json.loads("""{
  "Hostname": "", "Domainname": "", "User": "", "AttachStdin": false, "AttachStdout": true,
  "AttachStderr": true, "Tty": false, "OpenStdin": false, "StdinOnce": false, "Env": [],
  "Cmd": null, "Image": "", "Volumes": null, "WorkingDir": "", "Entrypoint": null,
  "OnBuild": null, "Labels": {}, "StopSignal": "SIGTERM"
}""")


class ApiFailure(Exception):
    """An error answer: HTTP code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def iso(when: datetime) -> str:
    """Formats a time as the daemon does: UTC, nanosecond digits."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def parse_iso(iso: str) -> datetime:
    """Reads a time the daemon wrote (nanoseconds cut to microseconds)."""
    return datetime.fromisoformat(iso[:26].rstrip("Z") + "+00:00")


def truthy(value: str | None) -> bool:
    """Reads a boolean query parameter (1, true, yes)."""
    return (value or "").lower() in ("1", "true", "yes")


def label_matches(term: str, labels: dict[str, str]) -> bool:
    """Tells whether labels match a ``label`` filter term (``key`` or ``key=value``)."""
    key, eq, value = term.partition("=")
    return labels.get(key) == value if eq else key in labels


def human(delta: timedelta) -> str:
    """Says a duration as ``docker ps`` does ("2 hours", "About a minute")."""
    seconds = int(delta.total_seconds())
    for size, unit in ((86400, "days"), (3600, "hours"), (60, "minutes")):
        if seconds >= 2 * size:
            return f"{seconds // size} {unit}"
    return "About a minute" if seconds >= 60 else f"{max(seconds, 1)} seconds"


def container_summary(c: dict[str, Any]) -> dict[str, Any]:
    """Returns the ContainerSummary a list shows for an inspected container."""
    state = c["State"]
    if state["Running"] and not state["Restarting"]:
        up = datetime.now(UTC) - parse_iso(state["StartedAt"])
        health = f" ({state['Health']['Status']})" if "Health" in state else ""
        status = f"Up {human(up)}{health}"
    elif state["Restarting"]:
        status = f"Restarting ({state['ExitCode']}) 5 seconds ago"
    elif state["Status"] == "created":
        status = "Created"
    else:
        since = human(datetime.now(UTC) - parse_iso(state["FinishedAt"]))
        status = f"Exited ({state['ExitCode']}) {since} ago"
    # Shape: ContainerSummary (GET /containers/json).
    return {
        "Id": c["Id"],
        "Names": [c["Name"]],
        "Image": c["Config"]["Image"],
        "ImageID": c["Image"],
        "Command": " ".join([c["Path"], *c["Args"]]),
        "Created": int(parse_iso(c["Created"]).timestamp()),
        "Ports": [],
        "Labels": c["Config"]["Labels"],
        "State": state["Status"],
        "Status": status,
        "HostConfig": {"NetworkMode": c["HostConfig"]["NetworkMode"]},
        "NetworkSettings": {"Networks": c["NetworkSettings"]["Networks"]},
        "Mounts": [],
    }


def container_stats(c: dict[str, Any], memory: int, cpu: float) -> dict[str, Any]:
    """Returns one stats sample for a container using ``memory`` bytes and ``cpu`` percent."""
    limit = c["HostConfig"]["Memory"] or 24 * 2**30
    system_delta = 2_000_000_000  # two CPUs for one second, in nanoseconds
    cpu_delta = int(cpu / 100 * system_delta / 2)
    now = datetime.now(UTC)
    running = c["State"]["Running"]
    # Shape: ContainerStatsResponse on a cgroup v2 host; docker CLI's formulas are in the
    # ContainerStats operation's description.
    return {
        "name": c["Name"],
        "id": c["Id"],
        "read": iso(now),
        "preread": iso(now - timedelta(seconds=1)),
        "pids_stats": {"current": 12 if running else 0, "limit": 4096},
        "num_procs": 0,
        "blkio_stats": {"io_service_bytes_recursive": None},
        "storage_stats": {},
        "cpu_stats": {
            "cpu_usage": {
                "total_usage": 9_000_000_000 + cpu_delta,
                "usage_in_kernelmode": 1_000_000_000,
                "usage_in_usermode": 8_000_000_000,
            },
            "system_cpu_usage": 500_000_000_000 + system_delta,
            "online_cpus": 2,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        },
        "precpu_stats": {
            "cpu_usage": {
                "total_usage": 9_000_000_000,
                "usage_in_kernelmode": 1_000_000_000,
                "usage_in_usermode": 8_000_000_000,
            },
            "system_cpu_usage": 500_000_000_000,
            "online_cpus": 2,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        },
        "memory_stats": {
            "usage": memory + 4 * 2**20 if running else 0,
            "limit": limit,
            "stats": {
                "anon": memory,
                "file": 6 * 2**20,
                "inactive_file": 4 * 2**20,
                "active_file": 2 * 2**20,
                "oom_kill": 0,
            },
        },
        "networks": {
            "eth0": {
                "rx_bytes": 5338,
                "rx_dropped": 0,
                "rx_errors": 0,
                "rx_packets": 36,
                "tx_bytes": 648,
                "tx_dropped": 0,
                "tx_errors": 0,
                "tx_packets": 8,
            }
        },
    }
