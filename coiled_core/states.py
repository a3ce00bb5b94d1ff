"""Cluster lifecycle states, kept free of pydantic so that ``import coiled`` stays light."""

from __future__ import annotations

import enum


class ClusterState(str, enum.Enum):
    """Lifecycle state of a cluster (``cluster.state``; ``cluster.status`` is distributed's)."""

    pending = "pending"
    starting = "starting"
    running = "running"
    stopping = "stopping"
    stopped = "stopped"
    error = "error"

    @property
    def is_live(self) -> bool:
        """Whether the cluster may still have processes or machines."""
        return self in (ClusterState.pending, ClusterState.starting, ClusterState.running)
