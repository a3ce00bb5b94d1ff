"""What ``coiled.Cluster(...)`` hands the gcp backend, for tests that call its hooks directly."""

from __future__ import annotations

from coiled_gcp import plugin
from coiled_gcp.options import GCPOptions

from coiled_core.keywords import apply_generic_keywords
from coiled_core.spec import resolve_cluster_spec

#: Offline there is no public address to detect: the client is this machine.
BASE = {"allow_ingress_from": "127.0.0.1/32"}


def make(name, options=None, **keywords):
    """The spec and options ``coiled.Cluster(name=..., **keywords)`` would give the backend."""
    spec = resolve_cluster_spec({"name": name, "n_workers": 2, "worker_cpu": 1, "worker_memory": "2 GiB", **keywords})
    generic = {k: getattr(spec, k, None) for k in plugin.KEYWORD_OPTIONS}
    values, _ = apply_generic_keywords(generic, {**BASE, **(options or {})}, plugin.KEYWORD_OPTIONS, "gcp")
    return spec, GCPOptions(**values)
