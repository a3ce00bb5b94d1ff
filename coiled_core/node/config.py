"""What every backend puts in a node agent's config for the cluster's own lifetime rules.

Client-side only (imports the spec); the agent itself reads plain JSON.
"""

from __future__ import annotations

from typing import Any

from dask.utils import parse_timedelta

from coiled_core import config
from coiled_core.spec import ClusterSpec


def heartbeat_interval() -> float:
    """Seconds between a ``coiled.Cluster`` object's heartbeats to its scheduler."""
    return float(parse_timedelta(config.get("heartbeat-interval") or "5s", default="seconds"))


def lifecycle_settings(spec: ClusterSpec) -> dict[str, Any]:
    """The ``lifecycle`` block of a node config: timeouts the node agent enforces itself."""
    watchdog = config.get("watchdog-timeout")
    return {
        "no_client_timeout": spec.no_client_timeout,
        "cluster_timeout": spec.cluster_timeout,
        # Three missed heartbeats and a Cluster object no longer counts as a client.
        "heartbeat_grace": 3 * heartbeat_interval(),
        "watchdog_timeout": float(parse_timedelta(watchdog, default="seconds")) if watchdog else None,
        # A worker node may boot before its scheduler, but not wait longer than a start may take.
        "first_contact_timeout": spec.timeout,
    }
