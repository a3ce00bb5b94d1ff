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
    def TLS_REQUIRED(self) -> bool:
        """A cluster bound beyond loopback runs code for anyone who reaches it, unless it uses TLS."""
        return not is_loopback_host(self.host)

    @property
    def TLS_BY_DEFAULT(self) -> bool:
        """On loopback TLS is opt-in (``security=True``); on any other address it is on."""
        return self.TLS_REQUIRED

