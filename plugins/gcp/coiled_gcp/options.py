"""``backend_options`` of the GCP backend (:class:`GCPOptions`).

Validated by the core before anything is created. Defaults that depend on the caller's
environment (project, client address) are resolved by the plugin at create time.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_REGION = "us-east1"
SpotPolicy = Literal["on-demand", "spot", "spot_with_fallback"]

_REGION = re.compile(r"^[a-z]+-[a-z]+\d+$")  # us-east1, europe-west4
_ZONE = re.compile(r"^([a-z]+-[a-z]+\d+)-[a-z]$")  # us-east1-b
_MACHINE_TYPE = re.compile(r"^[a-z][a-z0-9]*-[a-z0-9-]+$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_SPOT = {"on-demand": "on-demand", "on_demand": "on-demand", "spot": "spot", "spot_with_fallback": "spot_with_fallback", "spot-with-fallback": "spot_with_fallback"}


def label_value(text: str) -> str:
    """``text`` as a GCP label value: lower case, characters outside ``[a-z0-9_-]`` as ``-``,
    at most 63 characters (GCP's rule for label values)."""
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


class GCPOptions(BaseModel):
    """``backend_options`` of ``coiled.Cluster(backend="gcp", ...)``; every field has a default."""

    model_config = ConfigDict(extra="forbid")

    #: The project (default: ``GOOGLE_CLOUD_PROJECT``, else google.auth's default credentials').
    project: str | None = None
    region: str = DEFAULT_REGION
    #: One zone of ``region`` (default: the region's zones in turn, as capacity allows).
    zone: str | None = None
    #: The nodes' VPC network (default: the subnetwork's network, else ``default``).
    network: str | None = None
    #: The nodes' subnetwork in ``region`` (default: the network's one subnetwork there).
    subnetwork: str | None = None
    #: Worker machine types to use, in order of preference (default: the cheapest that fit).
    machine_types: list[str] | None = None
    scheduler_machine_types: list[str] | None = None
    spot_policy: SpotPolicy = "on-demand"
    #: The nodes' service account (email) if not the cluster's own least-privilege one (the
    #: default: see :mod:`coiled_gcp.identity`); never the Compute Engine default account.
    service_account: str | None = None
    #: Extra labels on every resource (Coiled's ``tags``), normalised to GCP's label rules.
    labels: dict[str, str] = Field(default_factory=dict)
    #: Who may reach the scheduler and dashboard (CIDR); default: this client's address /32.
    allow_ingress_from: str | None = None
    use_public_ip: bool = True
    boot_disk_gib: int = Field(default=50, ge=10, le=65536)
    #: Boot image (``projects/P/global/images/family/F``); default: Debian 12 of the architecture.
    image: str | None = None
    arm: bool | None = None
    #: GPU model for GPU workers (``worker_gpu``): ``nvidia-tesla-t4`` by default.
    gpu_type: str = "nvidia-tesla-t4"
    #: The artifact bucket (agent bundle, environment packs, logs, claims); default
    #: ``coiled-artifacts-<project>-<region>``.
    bucket: str | None = None

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION.fullmatch(value):
            raise ValueError(f"{value!r} is not a Compute Engine region (like 'us-east1' or 'europe-west4')")
        return value

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None and not _ZONE.fullmatch(value):
            raise ValueError(f"{value!r} is not a Compute Engine zone (like 'us-east1-b')")
        return value

    @field_validator("machine_types", "scheduler_machine_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            if not _MACHINE_TYPE.fullmatch(name):
                hint = " (that is an AWS instance type)" if "." in name else ""
                raise ValueError(f"{name!r} is not a Compute Engine machine type{hint}; e.g. 'n2-standard-4'")
        return value

    @field_validator("service_account")
    @classmethod
    def _account(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value == "default" or value.endswith("-compute@developer.gserviceaccount.com"):
            raise ValueError(
                f"{value!r} is the Compute Engine default service account (often project Editor): every task on the "
                "cluster would have its rights; leave service_account out (each cluster gets a least-privilege one) "
                "or name an account made for the nodes"
            )
        if "@" not in value:
            raise ValueError(f"{value!r} is not a service account email (like 'nodes@my-project.iam.gserviceaccount.com')")
        return value

    @field_validator("spot_policy", mode="before")
    @classmethod
    def _spot(cls, value: object) -> object:
        return _SPOT.get(str(value).lower(), value) if isinstance(value, str) else value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        labels = {}
        for key, item in value.items():
            label = label_value(str(key))
            if not _LABEL_KEY.fullmatch(label):
                raise ValueError(f"label {key!r}: a GCP label key must start with a letter")
            if label.startswith("coiled"):
                raise ValueError(f"label {key!r}: keys starting with 'coiled' are the backend's own")
            labels[label] = label_value(str(item))
        return labels

    @field_validator("allow_ingress_from")
    @classmethod
    def _cidr(cls, value: str | None) -> str | None:
        if value in (None, "me"):
            return None
        if value == "everyone":
            return "0.0.0.0/0"
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an address range; use a CIDR like '203.0.113.7/32', 'me' or 'everyone'") from None

    def zone_region_check(self) -> None:
        """``zone`` must be in ``region``."""
        if self.zone and _ZONE.fullmatch(self.zone).group(1) != self.region:  # type: ignore[union-attr]
            raise ValueError(f"zone {self.zone!r} is not in region {self.region!r}")
