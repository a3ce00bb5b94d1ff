"""``backend_options`` of the local backend."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class LocalOptions(BaseModel):
    """Options for ``coiled.Cluster(backend="local", backend_options={...})``."""

    model_config = ConfigDict(extra="forbid")

    #: Loopback only, so TLS is opt-in here (security=True); cloud backends default to it.
    TLS_BY_DEFAULT: ClassVar[bool] = False

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
