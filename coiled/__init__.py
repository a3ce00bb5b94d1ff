"""Coiled-compatible public API: ``coiled.Cluster`` and friends, on any installed backend.

Example::

    import coiled
    from dask.distributed import Client

    cluster = coiled.Cluster(n_workers=5)
    client = Client(cluster)

    coiled.list_clusters()            # every cluster of the default backend
    coiled.delete_cluster("my-name")  # shut one down, from any process
"""

from __future__ import annotations

import importlib
from typing import Any

from coiled_core.cluster import Cluster, check_cluster
from coiled_core.errors import ClusterNotFoundError, ClusterSpecError, CoiledError, ProvisionError
from coiled_core.states import ClusterState

# Everything else loads on first use, so that `import coiled` costs little more than
# `import distributed` (pydantic models of environments and configurations are not free).
_LAZY = {
    "coiled_core.records": ("ClusterRecord",),
    "coiled_core.api": ("build_software_environment", "cluster_logs", "delete_cluster", "gc", "list_backends", "list_clusters"),
    "coiled_core.configurations": (
        "BuiltinConfigurationError",
        "ClusterConfiguration",
        "ConfigurationNotFoundError",
        "create_cluster_configuration",
        "delete_cluster_configuration",
        "get_cluster_configuration",
        "list_cluster_configurations",
    ),
    "coiled_core.software": (
        "SoftwareEnvironment",
        "SoftwareEnvironmentError",
        "SoftwareEnvironmentNotFoundError",
        "create_software_environment",
        "delete_software_environment",
        "get_software_info",
        "list_software_environments",
    ),
}
_LAZY_NAMES = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'coiled' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))


# coiled.gc() is public but left out of __all__: ``from coiled import *`` must not shadow the
# standard library's gc module.
__all__ = [
    "Cluster",
    "check_cluster",
    "ClusterNotFoundError",
    "ClusterSpecError",
    "ClusterState",
    "CoiledError",
    "ProvisionError",
    *(name for name in _LAZY_NAMES if name != "gc"),
]
