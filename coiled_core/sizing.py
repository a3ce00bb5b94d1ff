"""Choosing machine sizes: which of a cloud's machine types match a requested memory.

Every VM backend answers ``worker_memory="16 GiB"`` the same way (as Coiled does): a type whose
memory is within :data:`MEMORY_TOLERANCE` of the request matches; when none does, the smallest
types above the request do. What else fits (vCPUs, GPUs, architecture) and how the matches are
ranked (price, generation) stays with each backend. Any object with a ``memory_bytes`` attribute
is a machine type here.
"""

from __future__ import annotations

from typing import Any, Sequence, TypeVar

T = TypeVar("T")

#: How far a machine type's memory may be from the request and still match it (a fraction).
MEMORY_TOLERANCE = 0.10


def within_memory(types: Sequence[T], memory_bytes: int, upper_bytes: int | None = None) -> list[T]:
    """The ``types`` whose memory is within :data:`MEMORY_TOLERANCE` of ``memory_bytes`` (or, with
    ``upper_bytes``, the upper end of a ``[min, max]`` range, anywhere from the tolerance below
    the minimum to the tolerance above the maximum)."""
    low = memory_bytes * (1 - MEMORY_TOLERANCE)
    high = max(memory_bytes, upper_bytes or 0) * (1 + MEMORY_TOLERANCE)
    return [t for t in types if low <= _memory(t) <= high]


def smallest_above(types: Sequence[T], memory_bytes: int) -> list[T]:
    """The ``types`` with at least ``memory_bytes`` whose memory is within
    :data:`MEMORY_TOLERANCE` of the smallest such (empty when none has enough)."""
    above = [t for t in types if _memory(t) >= memory_bytes]
    if not above:
        return []
    smallest = min(_memory(t) for t in above)
    return [t for t in above if _memory(t) <= smallest * (1 + MEMORY_TOLERANCE)]


def _memory(machine_type: Any) -> int:
    return machine_type.memory_bytes
