"""``ClusterRecord``: what exists, as a backend sees it.

A record is everything a hook needs to act on a cluster. ``provision`` returns one and
``describe`` rebuilds one from the backend's own world (process table, cloud tags, Kubernetes
labels), so any process that knows a cluster's name can find it again; nothing depends on a local
file surviving.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from coiled_core.states import ClusterState


class WorkerRecord(BaseModel):
    """One worker a backend started. ``name`` is the worker's name as the scheduler sees it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    #: Backend-specific identifiers (a pid, an instance id, a pod name).
    backend_ids: dict[str, Any] = Field(default_factory=dict)


class ClusterRecord(BaseModel):
    """A cluster that exists (or existed) on a backend."""

    model_config = ConfigDict(extra="forbid")

    name: str
    backend: str
    state: ClusterState = ClusterState.pending
    scheduler_address: str | None = None
    dashboard_url: str | None = None
    workers: list[WorkerRecord] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    #: The validated ``ClusterSpec`` the cluster was made from, as plain data.
    spec: dict[str, Any] = Field(default_factory=dict)
    #: Backend-specific identifiers of the cluster as a whole (a pid, a security group id).
    backend_ids: dict[str, Any] = Field(default_factory=dict)

    @property
    def worker_names(self) -> list[str]:
        return [w.name for w in self.workers]


class TLSPolicy(BaseModel):
    """A backend's TLS rules for clusters with given options (see the ``tls_policy`` hook)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Whether clusters use TLS when the user leaves ``security`` unset.
    default: bool = True
    #: Whether ``security=False`` is refused (the cluster would be reachable from other machines).
    required: bool = False
    #: Who reaches the nodes' public addresses (a CIDR, or words such as "this client's public
    #: address"), or None when they have none. With ``security=False`` the core warns: anyone
    #: who reaches an unauthenticated scheduler runs code on it. One rule, for every backend.
    public_reach: str | None = None


#: Seconds past a cluster's lifetime cap after which ``gc`` may delete it although it still runs.
EXPIRY_GRACE = 300.0


def past_lifetime(record: ClusterRecord, now: datetime | None = None, grace: float = EXPIRY_GRACE) -> bool:
    """Whether ``record``'s cluster has outlived its lifetime cap (``cluster_timeout``) by more
    than ``grace`` seconds: its node should have ended it, so ``gc`` may."""
    cap = record.spec.get("cluster_timeout")
    if not cap:
        return False
    created = record.created_at if record.created_at.tzinfo else record.created_at.replace(tzinfo=timezone.utc)
    age = ((now or datetime.now(timezone.utc)) - created).total_seconds()
    return age > float(cap) + grace
