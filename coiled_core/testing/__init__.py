"""Testing kit for backend authors: the contract suite every backend must pass.

See :class:`coiled_core.testing.contract.BackendContract`.
"""

from coiled_core.testing.contract import BackendContract, wait_until

__all__ = ["BackendContract", "wait_until"]
