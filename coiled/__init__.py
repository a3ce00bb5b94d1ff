"""Coiled-compatible public API: ``coiled.Cluster`` and friends, on any installed backend.

Example::

    import coiled
    from dask.distributed import Client

    cluster = coiled.Cluster(n_workers=5)
    client = Client(cluster)
"""

from coiled_core.cluster import Cluster
from coiled_core.errors import ClusterSpecError, CoiledError, ProvisionError
from coiled_core.records import ClusterRecord, ClusterState

__all__ = [
    "Cluster",
    "ClusterRecord",
    "ClusterSpecError",
    "ClusterState",
    "CoiledError",
    "ProvisionError",
]
