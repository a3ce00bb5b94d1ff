"""``backend_options`` of the local backend."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


class LocalOptions(BaseModel):
    """Options for ``coiled.Cluster(backend="local", backend_options={...})``."""

    model_config = ConfigDict(extra="forbid")

    directory: str | None = Field(
        default=None,
        description=(
            "Where clusters keep their state and log files. Default: dask config "
            "'coiled.local.directory', else ~/.cache/coiled/local."
        ),
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address the scheduler, workers and dashboard bind to (loopback by default).",
    )

    @property
    def reachable_from_other_machines(self) -> bool:
        """Whether the cluster binds beyond loopback (then it must use TLS, see ``tls_policy``)."""
        return not is_loopback_host(self.host)

