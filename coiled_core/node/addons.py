"""Node add-ons: what a backend adds to the node agent on its own nodes.

The agent is the same on every backend. What differs per backend on a node (where the node's TLS
material and ``environ`` come from, where its log goes, how it names its workers, what else must
run beside the scheduler and workers) is a :class:`NodeAddOn` subclass in a module of the
backend's own, named in the node config::

    config.addon = AddOnRef("coiled_mycloud.node:MyCloudNode", {"secret_path": "/clusters/x"})

The agent imports that module on the node (ship it with the agent bundle, see
:func:`coiled_core.node.bundle.agent_bundle`'s ``extra_modules``), makes one instance with the
settings and calls it at the points below. Every method has a default that does nothing, so an
add-on overrides only what its backend needs. The add-on runs in the agent, whose start-up time
matters: import the cloud SDK inside the methods, not at the top of the module, and do not import
pydantic or the rest of coiled_core.

Order of calls on a node: :meth:`NodeAddOn.load_secrets` (before anything starts),
:meth:`NodeAddOn.worker_names` (whenever workers start), :meth:`NodeAddOn.background_tasks` (once
the node runs), :meth:`NodeAddOn.ship_log` (at start, every :attr:`NodeAddOn.log_interval`
seconds, and last of all), :meth:`NodeAddOn.on_end` (after the scheduler and workers closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable

if TYPE_CHECKING:
    from coiled_core.node.agent import NodeAgent
    from coiled_core.node.config import NodeConfig


@dataclass
class NodeSecrets:
    """Secrets a node fetched for itself (see :meth:`NodeAddOn.load_secrets`)."""

    #: The node's TLS material, in the form of ``ClusterTLS.to_node_config`` (empty: none).
    tls: dict[str, str] = field(default_factory=dict)
    #: Environment variables for the scheduler and workers, applied as if set before start.
    environ: dict[str, str] = field(default_factory=dict)


class NodeAddOn:
    """Base class of a backend's node add-on. Override what the backend needs.

    Parameters:
        settings: the node config's ``addon.settings`` (plain JSON).
        config: the whole node config, read-only.
    """

    #: Seconds between :meth:`ship_log` calls while the node runs (None: only at start and end).
    log_interval: float | None = None

    def __init__(self, settings: dict[str, Any], config: NodeConfig):
        self.settings = settings
        self.config = config

    def load_secrets(self) -> NodeSecrets | None:
        """Fetch this node's TLS material and ``environ`` from where the backend keeps them
        (a secret store the node's own identity can read), once, before anything starts.

        Returns:
            The secrets, or None if this backend delivers them in the node config itself.

        Raises:
            Any exception: the node fails to start, and the error is in its log.
        """
        return None

    def worker_names(self, prefix: str, count: int, first_index: int) -> list[str] | None:
        """Names for ``count`` workers about to start on this node.

        The default (None) names them ``<prefix><index>``. A VM backend that runs one worker per
        machine names it after the machine, so that scale-down knows which machine to delete.

        Returns:
            ``count`` unique names, or None for the default.
        """
        return None

    def background_tasks(self, agent: NodeAgent) -> list[Awaitable[None]]:
        """Coroutines to run while the node runs; cancelled when it ends."""
        return []

    def ship_log(self, path: str, final: bool = False) -> None:
        """Copy this node's log file ``path`` to where the backend reads logs from (object
        storage, say), so the log outlives the node. Called in a thread; an exception is logged
        and the node goes on. ``final`` is True for the last call, after everything closed."""

    def on_end(self, stop_reason: str | None) -> None:
        """The node is ending (``stop_reason`` says why: ``"SIGTERM"``, ``"no-client-timeout: ..."``).

        Called after the scheduler and workers closed, while the node still counts as live, so
        nothing of a newer cluster of the same name can exist yet: the place to delete what the
        cluster should not leave behind when it ends on its own (its secrets). An exception is
        logged and the node ends anyway.
        """


def load_addon(config: NodeConfig) -> NodeAddOn | None:
    """Import and make the add-on the node config names (None if it names none)."""
    if config.addon is None:
        return None
    import importlib

    from coiled_core.node.config import NodeConfigError

    module_name, _, attribute = config.addon.object.partition(":")
    if not attribute:
        raise NodeConfigError(f"addon.object: {config.addon.object!r} must have the form 'package.module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise NodeConfigError(f"addon.object: cannot load {config.addon.object!r}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, NodeAddOn)):
        raise NodeConfigError(f"addon.object: {config.addon.object!r} is not a NodeAddOn subclass")
    return cls(dict(config.addon.settings), config)
