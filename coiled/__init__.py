"""Coiled-compatible public API: ``coiled.Cluster`` and friends, on any installed backend.

Example::

    import coiled
    from dask.distributed import Client

    cluster = coiled.Cluster(n_workers=5)
    client = Client(cluster)

    coiled.list_clusters()            # every cluster of the default backend
    coiled.delete_cluster("my-name")  # shut one down, from any process
"""

from coiled_core.api import (  # noqa: F401
    cluster_logs,
    delete_cluster,
    gc,
    list_backends,
    list_clusters,
)
from coiled_core.cluster import Cluster
from coiled_core.configurations import (
    BuiltinConfigurationError,
    ClusterConfiguration,
    ConfigurationNotFoundError,
    create_cluster_configuration,
    delete_cluster_configuration,
    get_cluster_configuration,
    list_cluster_configurations,
)
from coiled_core.errors import (
    ClusterNotFoundError,
    ClusterSpecError,
    CoiledError,
    ProvisionError,
)
from coiled_core.records import ClusterRecord, ClusterState
from coiled_core.software import (
    SoftwareEnvironment,
    SoftwareEnvironmentError,
    SoftwareEnvironmentNotFoundError,
    create_software_environment,
    delete_software_environment,
    get_software_info,
    list_software_environments,
)

# coiled.gc() is public but left out of __all__: ``from coiled import *`` must not shadow the
# standard library's gc module.

__all__ = [
    "BuiltinConfigurationError",
    "Cluster",
    "ClusterConfiguration",
    "ConfigurationNotFoundError",
    "create_cluster_configuration",
    "delete_cluster_configuration",
    "get_cluster_configuration",
    "list_cluster_configurations",
    "SoftwareEnvironment",
    "SoftwareEnvironmentError",
    "SoftwareEnvironmentNotFoundError",
    "create_software_environment",
    "delete_software_environment",
    "get_software_info",
    "list_software_environments",
    "ClusterNotFoundError",
    "ClusterRecord",
    "ClusterSpecError",
    "ClusterState",
    "CoiledError",
    "ProvisionError",
    "cluster_logs",
    "delete_cluster",
    "list_backends",
    "list_clusters",
]
