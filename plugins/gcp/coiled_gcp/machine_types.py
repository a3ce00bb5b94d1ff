"""Choosing Compute Engine machine types for a cluster's request (cpu, memory, GPUs).

The catalogue is the zone's machine-types list (cached per project and zone for the process).
A request is met by the cheapest predefined types whose vCPUs are at least ``cpu`` and whose
memory is within :data:`coiled_core.sizing.MEMORY_TOLERANCE` of ``memory`` (or the smallest above it); when no
predefined type fits that closely, a custom type (``n2-custom-C-M``) of exactly the request.
GPUs: N1 types with ``gpu_type`` as guest accelerators (T4 by default), or the types that come
with the GPU built in (``g2`` has L4s, ``a2`` A100s). When nothing fits, the error names the
nearest types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from coiled_core.backend import (
    ClusterSpecError,
    smallest_above,
    within_memory,
)

#: Rough on-demand USD per vCPU-hour and per GiB-hour of each family, for ordering only.
FAMILY_PRICES = {
    "e2": (0.0218, 0.0029),
    "n2": (0.0316, 0.0042),
    "n2d": (0.0275, 0.0037),
    "t2a": (0.0276, 0.0034),
    "n1": (0.0316, 0.0042),
    "g2": (0.0250, 0.0029),
    "a2": (0.0316, 0.0042),
}
#: GPU models that come only with their own machine family.
BUILT_IN_GPUS = {"nvidia-l4": "g2", "nvidia-tesla-a100": "a2"}
#: Families whose machines take guest accelerators (``guestAccelerators``).
GUEST_ACCELERATOR_FAMILIES = ("n1",)
_CACHE: dict[tuple[str, str], list[MachineType]] = {}


@dataclass(frozen=True)
class MachineType:
    name: str
    vcpus: int
    memory_mib: int
    shared_cpu: bool = False
    architecture: str = "X86_64"
    gpus: tuple[tuple[str, int], ...] = ()
    #: Guest accelerators to attach (type, count) for a GPU request on an N1 type.
    attach: tuple[tuple[str, int], ...] = field(default=(), compare=False)

    @property
    def family(self) -> str:
        return self.name.split("-", 1)[0]

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 2**20

    @property
    def price(self) -> float:
        per_cpu, per_gib = FAMILY_PRICES.get(self.family, (0.04, 0.005))
        return self.vcpus * per_cpu + self.memory_mib / 1024 * per_gib

    def describe(self) -> str:
        gpus = "".join(f", {n} x {t}" for t, n in self.gpus + self.attach)
        return f"{self.name} ({self.vcpus} vCPU, {self.memory_mib / 1024:g} GiB{gpus})"


def from_api(item: Any) -> MachineType:
    """A :class:`MachineType` from the API's machine type (a ``compute_v1.MachineType``)."""
    return MachineType(
        name=item.name,
        vcpus=int(item.guest_cpus),
        memory_mib=int(item.memory_mb),
        shared_cpu=bool(item.is_shared_cpu),
        architecture=getattr(item, "architecture", "") or "X86_64",
        gpus=tuple((a.guest_accelerator_type, int(a.guest_accelerator_count)) for a in item.accelerators),
    )


def catalogue(client: Any, project: str, zone: str) -> list[MachineType]:
    """The zone's machine types (every page), cached per project and zone for this process."""
    key = (project, zone)
    if key not in _CACHE:
        _CACHE[key] = [from_api(item) for item in client.list(project=project, zone=zone)]
    return _CACHE[key]


def custom_type(cpu: int, memory_bytes: int, family: str = "n2") -> MachineType | None:
    """An ``n2-custom-C-M`` type of at least the request (N2: 2-vCPU steps, memory a multiple of
    256 MiB, 0.5 to 8 GiB per vCPU); None when the request is outside those bounds."""
    cpus = max(2, cpu + cpu % 2)
    memory_mib = -(-memory_bytes // (256 * 2**20)) * 256
    memory_mib = max(memory_mib, cpus * 512)
    if memory_mib > cpus * 8192 or cpus > 128:
        return None
    return MachineType(name=f"{family}-custom-{cpus}-{memory_mib}", vcpus=cpus, memory_mib=memory_mib)


def choose(
    types: list[MachineType],
    cpu: int,
    memory_bytes: int | None,
    gpus: int = 0,
    *,
    gpu_type: str = "nvidia-tesla-t4",
    arm: bool = False,
    what: str = "worker",
    count: int = 3,
) -> list[MachineType]:
    """Up to ``count`` machine types meeting the request, cheapest first (see the module).

    Raises :class:`ClusterSpecError` naming the request and the nearest types when none fits.
    """
    arch = "ARM64" if arm else "X86_64"
    pool = [t for t in types if t.architecture == arch and not t.shared_cpu]
    if gpus:
        family = BUILT_IN_GPUS.get(gpu_type)
        if family:
            pool = [t for t in pool if t.family == family and sum(n for g, n in t.gpus if g == gpu_type) >= gpus]
        else:
            pool = [
                MachineType(t.name, t.vcpus, t.memory_mib, t.shared_cpu, t.architecture, t.gpus, ((gpu_type, gpus),))
                for t in pool
                if t.family in GUEST_ACCELERATOR_FAMILIES
            ]
    else:
        pool = [t for t in pool if not t.gpus]
    fitting = [t for t in pool if t.vcpus >= cpu]
    if memory_bytes:
        tier = [t for t in within_memory(fitting, memory_bytes) if t.vcpus <= max(cpu * 2, 2)]
        if not tier and not gpus and not arm:
            custom = custom_type(cpu, memory_bytes)
            if custom is not None:
                return [custom]
        if not tier:
            tier = smallest_above(fitting, memory_bytes)
    else:
        tier = fitting
    if not tier:
        raise ClusterSpecError(_nothing_fits(pool or types, cpu, memory_bytes, gpus, gpu_type, arch, what))
    tier.sort(key=lambda t: (t.vcpus, t.price, t.name))
    return tier[:count]


def _nothing_fits(pool: list[MachineType], cpu: int, memory_bytes: int | None, gpus: int, gpu_type: str, arch: str, what: str) -> str:
    memory = f", {memory_bytes / 2**30:g} GiB" if memory_bytes else ""
    gpu = f", {gpus} x {gpu_type}" if gpus else ""
    nearest = sorted(pool, key=lambda t: (abs(t.vcpus - cpu) + abs(t.memory_bytes - (memory_bytes or 0)) / 2**32, t.price))[:3]
    names = "; ".join(t.describe() for t in nearest) or "none of this architecture"
    return f"{what}_cpu/{what}_memory: no {arch} machine type fits {cpu} vCPU{memory}{gpu}; nearest: {names}"


def named(types: list[MachineType], names: list[str], parameter: str, zone: str) -> list[MachineType]:
    """The machine types ``names`` (checked to exist in ``zone``; custom types accepted as named)."""
    by_name = {t.name: t for t in types}
    found = []
    for name in names:
        if name in by_name:
            found.append(by_name[name])
            continue
        parts = name.split("-")
        if len(parts) == 4 and parts[1] == "custom" and parts[2].isdigit() and parts[3].isdigit():
            found.append(MachineType(name, int(parts[2]), int(parts[3])))
            continue
        close = [t for t in by_name if t.split("-")[0] == name.split("-")[0]][:5]
        raise ClusterSpecError(f"{parameter}: {name!r} is not a machine type of {zone}" + (f"; e.g. {', '.join(close)}" if close else ""))
    return found


def worker_memory_limit(machine: MachineType) -> int:
    """The memory a worker may use on ``machine``: all but what the OS and agent need."""
    return int(machine.memory_bytes * 0.9)
