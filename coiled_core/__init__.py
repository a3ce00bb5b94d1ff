"""coiled_core: the implementation behind the public ``coiled`` package.

Plugin authors need only ``from coiled_core import hookimpl`` to start; see
:mod:`coiled_core.hookspecs` for the hooks a backend implements.
"""

import pluggy

from coiled_core.errors import (
    BackendLoadError,
    BackendNotFoundError,
    ClusterNotFoundError,
    ClusterSpecError,
    CoiledError,
    DuplicateBackendError,
    ProvisionError,
)
from coiled_core.hookspecs import HOOK_API_VERSION, PROJECT_NAME

#: Marks a function of a backend or extension module as a hook implementation.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = [
    "HOOK_API_VERSION",
    "BackendLoadError",
    "BackendNotFoundError",
    "ClusterNotFoundError",
    "ClusterSpecError",
    "CoiledError",
    "DuplicateBackendError",
    "ProvisionError",
    "hookimpl",
]
