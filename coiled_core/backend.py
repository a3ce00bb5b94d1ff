"""Everything a backend may use from coiled-core, in one place.

A backend (built in or third party) imports from this module only (its tests and offline
simulators may also use the testing kit, :mod:`coiled_core.testing`); the built-in ones are held
to that by a test, which is what proves the list complete. Names load on first use, so a node add-on
can import ``NodeAddOn`` from here without pulling in pydantic or the client-side core.

The hooks themselves are specified in :mod:`coiled_core.hookspecs`; ``docs/writing-a-backend.md``
is the guide from an empty directory to a backend that passes the contract suite.

Contract and records
    ``hookimpl``, ``HOOK_API_VERSION``, ``ClusterSpec``, ``ClusterRecord``, ``WorkerRecord``,
    ``ClusterState``, ``TLSPolicy``, ``past_lifetime``, ``EXPIRY_GRACE``
Errors
    ``CoiledError``, ``ClusterSpecError``, ``ProvisionError``
The node protocol (:mod:`coiled_core.node.config`)
    ``build_node_config``, ``NodeConfig``, ``Lifecycle``, ``SchedulerSettings``,
    ``WorkerSettings``, ``AddOnRef``, ``AgentReport``, ``read_report``, ``STATE_FILE``,
    ``worker_name_prefix``, ``heartbeat_interval``, ``START_WORKERS_HANDLER``,
    ``STOP_WORKERS_HANDLER`` (the scheduler handlers of a combined node's agent)
Node add-ons (:mod:`coiled_core.node.addons`)
    ``NodeAddOn``, ``NodeSecrets``
Shipping the agent to a node
    ``agent_bundle`` (coiled-core, and the backend's add-on modules, as one zip for
    ``PYTHONPATH``), ``node_requirements`` (what the node's Python environment needs),
    ``software_environment`` (the cluster's software environment, or the default one),
    ``SoftwareEnvironment``
The VM boot script (:mod:`coiled_core.node.bootstrap`)
    ``render_boot_script`` (every VM backend's user data or startup script), ``BootSoftware``,
    ``boot_software``, ``NodeStore`` (how nodes reach the backend's artifact store),
    ``StoredFile``, ``post_build_script``, ``POST_BUILD_INLINE_BYTES``, ``environment_key``
    (the key of an environment's pack), ``build_environment_pack`` (build and upload one from
    the client; raises ``PlatformMismatchError``, ``EnvironmentBuildError``, ``StoreError``),
    ``pinned_software`` (the client's pins and a fresh build id, for a new cluster's nodes),
    ``record_cluster_packs`` (pin what a cluster's nodes built, from ``cluster_started``)
Addresses
    ``node_host``, ``map_address``, ``loopback_mode``, ``loopback_address``, ``require_standin``
    (refuse a backend's own offline switch, such as an endpoint override, unless a stand-in runs),
    ``client_cidr`` (``allow_ingress_from`` as one network: by default this client's public
    address, the only one a scheduler with an outside address admits)
TLS
    ``ClusterTLS`` (what ``provision`` receives), ``credentials_directory`` (where the store
    keeps a cluster's credentials when it is on this machine)
Names and claims
    ``dns_label`` (a DNS label derived from a cluster name, for resources that need one),
    ``ClaimLease`` (a claim that expires, for backends without a process table)
Machine sizes (:mod:`coiled_core.sizing`)
    ``MEMORY_TOLERANCE``, ``within_memory``, ``smallest_above`` (which machine types match a
    requested memory, as every VM backend answers it)
Files and settings
    ``make_private_dirs``, ``config_get`` (the ``coiled.*`` dask config)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from coiled_core.errors import ClusterSpecError, CoiledError, ProvisionError  # noqa: F401 (public)
from coiled_core.hookspecs import HOOK_API_VERSION  # noqa: F401 (public)

if TYPE_CHECKING:
    from pathlib import Path

    from coiled_core.spec import ClusterSpec

#: Where each lazily loaded name lives.
_LAZY = {
    "hookimpl": "coiled_core",
    "render_boot_script": "coiled_core.node.bootstrap",
    "BootSoftware": "coiled_core.node.bootstrap",
    "boot_software": "coiled_core.node.bootstrap",
    "NodeStore": "coiled_core.node.bootstrap",
    "StoredFile": "coiled_core.node.bootstrap",
    "post_build_script": "coiled_core.node.bootstrap",
    "POST_BUILD_INLINE_BYTES": "coiled_core.node.bootstrap",
    "environment_key": "coiled_core.node.envpack",
    "build_environment_pack": "coiled_core.node.envpack",
    "pinned_software": "coiled_core.node.envpack",
    "record_cluster_packs": "coiled_core.node.envpack",
    "EnvironmentBuildError": "coiled_core.node.envpack",
    "PlatformMismatchError": "coiled_core.node.envpack",
    "StoreError": "coiled_core.node.envpack",
    "ClusterSpec": "coiled_core.spec",
    "ClusterRecord": "coiled_core.records",
    "WorkerRecord": "coiled_core.records",
    "TLSPolicy": "coiled_core.records",
    "past_lifetime": "coiled_core.records",
    "EXPIRY_GRACE": "coiled_core.records",
    "ClusterState": "coiled_core.states",
    "build_node_config": "coiled_core.node.config",
    "NodeConfig": "coiled_core.node.config",
    "NodeConfigError": "coiled_core.node.config",
    "Lifecycle": "coiled_core.node.config",
    "SchedulerSettings": "coiled_core.node.config",
    "WorkerSettings": "coiled_core.node.config",
    "AddOnRef": "coiled_core.node.config",
    "AgentReport": "coiled_core.node.config",
    "read_report": "coiled_core.node.config",
    "STATE_FILE": "coiled_core.node.config",
    "worker_name_prefix": "coiled_core.node.config",
    "heartbeat_interval": "coiled_core.node.config",
    "START_WORKERS_HANDLER": "coiled_core.node.agent",
    "STOP_WORKERS_HANDLER": "coiled_core.node.agent",
    "NodeAddOn": "coiled_core.node.addons",
    "NodeSecrets": "coiled_core.node.addons",
    "node_host": "coiled_core.node.addresses",
    "map_address": "coiled_core.node.addresses",
    "loopback_mode": "coiled_core.node.addresses",
    "loopback_address": "coiled_core.node.addresses",
    "require_standin": "coiled_core.node.addresses",
    "client_cidr": "coiled_core.ingress",
    "ClusterTLS": "coiled_core.security",
    "ClaimLease": "coiled_core.claims",
    "dns_label": "coiled_core.names",
    "make_private_dirs": "coiled_core.store",
    "SoftwareEnvironment": "coiled_core.software",
    "MEMORY_TOLERANCE": "coiled_core.sizing",
    "within_memory": "coiled_core.sizing",
    "smallest_above": "coiled_core.sizing",
}

__all__ = sorted(
    [
        *_LAZY,
        "HOOK_API_VERSION",
        "ClusterSpecError",
        "CoiledError",
        "ProvisionError",
        "agent_bundle",
        "node_requirements",
        "software_environment",
        "credentials_directory",
        "config_get",
    ]
)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'coiled_core.backend' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def agent_bundle(directory: Path | str, extra_modules: tuple[str, ...] | list[str] = ()) -> Path:
    """The node agent as one zip for a node's ``PYTHONPATH`` (written once, named by its hash).

    Parameters:
        directory: where to keep the zip (a cache directory of the backend).
        extra_modules: the backend's modules a node needs too, by import name (its node add-on,
            e.g. ``"coiled_mycloud.node"``); each goes in with its package's ``__init__.py``
            files, so keep those light.

    Returns:
        The path of the zip; ``python -m coiled_core.node node.json`` runs with it on
        ``PYTHONPATH`` in any environment that has :func:`node_requirements`.
    """
    from pathlib import Path

    from coiled_core.node.bundle import agent_bundle as build

    return build(Path(directory), tuple(extra_modules))


def node_requirements(*extra: str) -> list[str]:
    """The packages a node's Python environment needs for the agent besides distributed (which
    every environment has), plus ``extra`` (the add-on's SDK, say ``"boto3"``)."""
    from coiled_core.node.bundle import AGENT_REQUIREMENTS

    return [*AGENT_REQUIREMENTS, *extra]


def software_environment(spec: ClusterSpec) -> Any:
    """The cluster's software environment (a ``SoftwareEnvironment``: its ``pip`` and ``conda``
    packages, ``python`` version, ``container`` image and ``spec_hash()``), or the default one
    (the client's own versions of the packages a node needs) when the spec names none."""
    from coiled_core.software import default_software_spec, get_software_info

    return get_software_info(spec.software) if spec.software else default_software_spec()


def credentials_directory(backend: str, name: str) -> str | None:
    """The directory in which the store keeps cluster ``name``'s credentials, when the store is
    on this machine (else None). A node on this machine may delete it when its cluster ends on
    its own (the node config's ``remove_on_end``), so nothing secret outlives the cluster."""
    from coiled_core import credentials
    from coiled_core.store import Store

    return credentials.local_directory(Store(), name, backend)


def config_get(key: str, default: Any = None) -> Any:
    """The ``coiled.<key>`` dask config value (e.g. ``config_get("local.directory")``)."""
    from coiled_core import config

    return config.get(key, default)
