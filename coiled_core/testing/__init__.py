"""Testing kit for backend authors: the contract suite every backend must pass.

See :class:`coiled_core.testing.contract.BackendContract`. Names load on first use, so that
``coiled_core.testing.faulty`` (imported on nodes, where pytest is not installed) stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendContract",
    "ContractBase",
    "FaultsContract",
    "FrozenSchedulerContract",
    "LifecycleContract",
    "ReuseContract",
    "TimeoutsContract",
    "dashboard_ssl_context",
    "stored_credentials",
    "wait_until",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from coiled_core.testing import contract

        return getattr(contract, name)
    raise AttributeError(f"module 'coiled_core.testing' has no attribute {name!r}")
