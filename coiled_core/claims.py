"""Name claims that expire: the lease form of a claim, for backends without a process table.

A claim must be atomic (see the ``claim_name`` hook). A local backend can tell that a claim's
holder died by its pid; a cloud backend cannot see the creating process, so its claim carries a
lease: the JSON of a :class:`ClaimLease`, written with the backend's exclusive create (an object
created only if absent, a parameter put without overwrite, a Kubernetes object whose create fails
with 409 if it exists)::

    lease = ClaimLease.new(ttl=1800)
    created = put_if_absent(key, lease.to_json())
    if not created:
        held = ClaimLease.from_json(read(key))
        if not held.is_stale(cluster_live=describe_is_live(name)):
            return False            # someone else is creating the cluster
        delete(key)                 # then try the exclusive create again

``provision`` marks the lease provisioned once the cluster exists (``lease.provisioned()``); from
then on the cluster's own liveness decides, and ``teardown`` deletes the claim.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field, replace

#: A claim that never became a cluster is stale after this long (a start takes at most its
#: ``timeout``, 20 minutes by default).
DEFAULT_TTL = 1800.0


def _holder() -> dict[str, object]:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid()}


@dataclass(frozen=True)
class ClaimLease:
    """A claim on a cluster name that expires unless it became a cluster."""

    #: ``claimed`` while the cluster is created, ``provisioned`` once it exists.
    state: str = "claimed"
    #: Unix time after which an unprovisioned claim is stale.
    expires: float = 0.0
    #: Who claimed it (user, host, pid), for messages only.
    holder: dict = field(default_factory=dict)

    @classmethod
    def new(cls, ttl: float = DEFAULT_TTL) -> ClaimLease:
        """A fresh claim held by this process for ``ttl`` seconds."""
        return cls(state="claimed", expires=time.time() + ttl, holder=_holder())

    def provisioned(self) -> ClaimLease:
        """This claim, marked as having become a cluster."""
        return replace(self, state="provisioned")

    def is_stale(self, cluster_live: bool, now: float | None = None) -> bool:
        """Whether the claim may be taken over: no live cluster holds the name, and the claim
        either became a cluster that has ended or expired before it became one."""
        if cluster_live:
            return False
        return self.state == "provisioned" or self.expires < (now if now is not None else time.time())

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ClaimLease:
        """Read a lease; an unreadable one counts as expired (stale once no cluster is live)."""
        try:
            data = json.loads(text)
            return cls(state=str(data.get("state", "claimed")), expires=float(data.get("expires", 0)), holder=dict(data.get("holder") or {}))
        except (ValueError, TypeError, AttributeError):
            return cls(state="claimed", expires=0.0)
