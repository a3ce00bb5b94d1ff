"""One error hierarchy for the whole project.

Expected failures (bad input, a missing backend, a cluster that failed to start) are
``CoiledError`` subclasses: their message is written for the user and a command-line tool prints
it without a traceback. Anything else is a bug and propagates with its cause chained.
"""

from __future__ import annotations


class CoiledError(Exception):
    """Base class of every expected failure."""


class ClusterSpecError(CoiledError, ValueError):
    """A ``coiled.Cluster`` parameter is invalid; raised before any resource exists."""


class BackendNotFoundError(CoiledError, LookupError):
    """No installed backend has the requested name."""


class BackendLoadError(CoiledError, ImportError):
    """A backend plugin is installed but could not be imported or is incompatible."""


class DuplicateBackendError(CoiledError):
    """Two installed distributions claim the same backend name."""


class ProvisionError(CoiledError, RuntimeError):
    """A cluster failed to start; everything it had created was torn down first."""


class ClusterNotFoundError(CoiledError, LookupError):
    """No cluster of that name exists on the backend."""


class BackendContractError(ProvisionError):
    """A backend answered against the hook contract (see :mod:`coiled_core.hookspecs`); the
    message names the backend and the rule it broke."""
