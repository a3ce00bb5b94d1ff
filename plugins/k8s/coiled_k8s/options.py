"""``backend_options`` of the k8s backend, and the default image."""

from __future__ import annotations

import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from coiled_core.backend import config_get


#: ``allow_ingress_from``'s words: this client's public address, and any address.
INGRESS_ME, INGRESS_EVERYONE = "me", "everyone"


def default_image() -> str:
    """The public Dask image matching this client's distributed and Python versions."""
    from importlib.metadata import version

    return f"ghcr.io/dask/dask:{version('distributed')}-py{sys.version_info.major}.{sys.version_info.minor}"


class K8sOptions(BaseModel):
    """Options of ``coiled.Cluster(backend="k8s", backend_options={...})``; each also reads its
    default from dask config ``coiled.k8s.<name>``."""

    model_config = ConfigDict(extra="forbid")

    #: Namespace of every object (default: the kubeconfig context's, in a pod its own, else "default").
    namespace: str | None = Field(default_factory=lambda: config_get("k8s.namespace"))
    #: Kubeconfig file (default: in-cluster config in a pod, else ``$KUBECONFIG`` or ``~/.kube/config``).
    kubeconfig: str | None = Field(default_factory=lambda: config_get("k8s.kubeconfig"))
    #: Kubeconfig context (default: its current context).
    context: str | None = Field(default_factory=lambda: config_get("k8s.context"))
    #: Image of every pod (default: :func:`default_image`; a ``container`` software environment wins).
    image: str | None = Field(default_factory=lambda: config_get("k8s.image"))
    #: How the client reaches the scheduler: ClusterIP (from inside the cluster), LoadBalancer or NodePort.
    service_type: Literal["ClusterIP", "LoadBalancer", "NodePort"] = Field(
        default_factory=lambda: config_get("k8s.service_type") or "ClusterIP")
    node_selector: dict[str, str] = Field(default_factory=lambda: dict(config_get("k8s.node_selector") or {}))
    tolerations: list[dict[str, Any]] = Field(default_factory=lambda: list(config_get("k8s.tolerations") or []))
    #: Extra labels and annotations on every object (the backend's own labels win).
    labels: dict[str, str] = Field(default_factory=lambda: dict(config_get("k8s.labels") or {}))
    annotations: dict[str, str] = Field(default_factory=lambda: dict(config_get("k8s.annotations") or {}))
    #: Names of Secrets for pulling the image.
    image_pull_secrets: list[str] = Field(default_factory=lambda: list(config_get("k8s.image_pull_secrets") or []))
    #: The pods' service account. Default: one made per cluster, allowed only to delete its
    #: cluster (the client then needs the RBAC to make it; see the README).
    service_account: str | None = Field(default_factory=lambda: config_get("k8s.service_account"))
    #: Who may reach the scheduler through a LoadBalancer Service (its ``loadBalancerSourceRanges``):
    #: ``"me"`` (the default: this client's public address, /32), ``"everyone"``, or CIDRs (a bare
    #: address means /32). A NodePort Service cannot be restricted by Kubernetes (see the README).
    allow_ingress_from: str | list[str] | None = Field(default_factory=lambda: config_get("k8s.allow_ingress_from"))
    #: A partial pod (``{"spec": {...}, "metadata": {...}}`` or just a spec) merged into every pod,
    #: or one per role: ``{"scheduler": {...}, "worker": {...}}``. Maps merge; the first of its
    #: ``containers`` merges into the pod's Dask container (the scheduler's in the scheduler pod,
    #: the worker's in worker pods, whatever name it is given), further ones are added as
    #: sidecars; ``volumes``, ``env`` and other named lists merge by name; other values replace.
    pod_template: dict[str, Any] = Field(default_factory=lambda: dict(config_get("k8s.pod_template") or {}))

    @field_validator("allow_ingress_from")
    @classmethod
    def _ingress(cls, value: str | list[str] | None) -> str | list[str] | None:
        import ipaddress

        if value is None or value in (INGRESS_ME, INGRESS_EVERYONE):
            return value
        networks = []
        for item in [value] if isinstance(value, str) else value:
            try:
                networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not a network in CIDR notation (e.g. '203.0.113.7/32'); or give "
                                 f"{INGRESS_ME!r} (this client's address) or {INGRESS_EVERYONE!r}") from None
        return networks

    @field_validator("pod_template")
    @classmethod
    def _pod_template(cls, template: dict[str, Any]) -> dict[str, Any]:
        roles = {"scheduler", "worker"}
        if set(template) & roles and not set(template) <= roles:
            raise ValueError("either one template for every pod, or one per role ({'scheduler': ..., 'worker': ...}), "
                             f"not both: got keys {sorted(template)}")
        for part in [template[k] for k in roles & set(template)] or [template]:
            if not isinstance(part, dict):
                raise ValueError(f"a pod template is a mapping (a partial pod or pod spec), not {part!r}")
            containers = ((part.get("spec") or part) if isinstance(part.get("spec", part), dict) else {}).get("containers")
            if containers is not None and not (isinstance(containers, list) and all(isinstance(c, dict) for c in containers)):
                raise ValueError("containers: a list of partial containers (the first merges into the Dask container)")
        return template

    @field_validator("labels")
    @classmethod
    def _label_values(cls, labels: dict[str, str]) -> dict[str, str]:
        import re

        bad = [f"{k}={v}" for k, v in labels.items()
               if len(v) > 63 or not re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", v)]
        if bad:
            raise ValueError(f"not valid Kubernetes label values (at most 63 of A-Z a-z 0-9 - _ .): {', '.join(bad)}")
        return labels
