"""Choosing EC2 instance types for the scheduler and the workers.

The catalogue comes from EC2 ``DescribeInstanceTypes`` (real vCPU, memory and GPU data; moto
serves the same catalogue offline), fetched once per region and endpoint and cached in this
process. Prices come from the small table shipped in :mod:`coiled_aws.prices`.

Matching, as Coiled does it (:func:`choose_instance_types`):

- at least ``cpu`` vCPUs (and at most ``cpu_max``, for Coiled's ``worker_cpu=[min, max]``) and,
  when GPUs are asked for, at least that many whole GPUs (types with any GPU, fractional ones
  included, are only used when GPUs are asked for);
- memory from 10 % under to 10 % over the request (16 GiB accepts 14.4 to 17.6 GiB), or over a
  range (``worker_memory=[min, max]``: 10 % under the minimum to 10 % over the maximum); when no
  type has that and no range was given, the smallest memory at or above the request (and types
  up to 10 % over that);
- bare-metal types, types with other accelerators (Neuron, FPGA, inference, media) and
  types of another architecture are never chosen automatically;
- order: family rank (CPU: ``m*``, then ``c*``/``r*``, then ``t*``, then the rest; GPU: ``g*``,
  then ``p*``, then the rest), then types with a known price before unknown, current generation
  before previous, then cheapest, fewest vCPUs, least memory, name.

Several candidates are returned, so that provisioning can fall back to the next one on a
capacity error (or give them all to an instant fleet).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from coiled_core.backend import (
    ClusterSpecError,
    smallest_above,
    within_memory,
)

from .prices import price

GiB = 2**30
MiB = 2**20

#: ``MaxResults`` per DescribeInstanceTypes page (the API's maximum) and a hard page cap.
PAGE_SIZE = 100
MAX_PAGES = 200

_CPU_FAMILY_RANK = {"m": 0, "c": 1, "r": 1, "t": 2}
_GPU_FAMILY_RANK = {"g": 0, "p": 1}
_OTHER_ACCELERATORS = ("NeuronInfo", "FpgaInfo", "InferenceAcceleratorInfo", "MediaAcceleratorInfo")


@dataclass(frozen=True)
class InstanceTypeInfo:
    """What the chooser needs to know about one EC2 instance type in one region."""

    #: e.g. ``"m6i.xlarge"``.
    name: str
    vcpus: int
    memory_bytes: int
    #: Whole GPUs (a fractional GPU, as on ``g6f``, counts 0 here but sets ``gpu_model``).
    gpus: int = 0
    #: e.g. ``"NVIDIA T4"``; ``None`` without any GPU.
    gpu_model: str | None = None
    current_generation: bool = True
    #: The part before the dot, e.g. ``"m6i"``, ``"m7i-flex"``, ``"p6-b200"``.
    family: str = ""
    #: e.g. ``("x86_64",)``, ``("arm64",)``, ``("i386", "x86_64")``.
    architectures: tuple[str, ...] = ("x86_64",)
    #: Approximate on-demand USD/hour in the region, from the shipped table; ``None`` if unknown.
    price_per_hour: float | None = None
    bare_metal: bool = False
    #: Has a non-GPU accelerator (Neuron, FPGA, inference or media).
    other_accelerators: bool = False
    #: e.g. ``("on-demand", "spot")``.
    usage_classes: tuple[str, ...] = ("on-demand", "spot")

    @property
    def series(self) -> str:
        """The family's leading letters: ``"m"`` for m6i, ``"p"`` for p6-b200, ``"mac"`` for mac2."""
        match = re.match(r"[a-z]+", self.family or self.name)
        return match.group(0) if match else ""

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB

    def summary(self) -> str:
        """One line for messages, e.g. ``"m6i.xlarge (4 vCPU, 16 GiB, $0.192/h)"``."""
        parts = [f"{self.vcpus} vCPU", f"{_fmt_gib(self.memory_bytes)} memory"]
        if self.gpus:
            parts.append(f"{self.gpus} x {self.gpu_model or 'GPU'}")
        if self.price_per_hour is not None:
            parts.append(f"~${self.price_per_hour:.3f}/h")
        return f"{self.name} ({', '.join(parts)})"

    @classmethod
    def from_api(cls, item: dict[str, Any], region: str | None = None) -> InstanceTypeInfo:
        """Build from one element of a DescribeInstanceTypes ``InstanceTypes`` list."""
        name = item["InstanceType"]
        gpu_info = item.get("GpuInfo") or {}
        gpu_list = gpu_info.get("Gpus") or []
        gpus = sum(int(g.get("Count") or 0) for g in gpu_list)
        gpu_model = None
        if gpu_list:
            first = gpu_list[0]
            gpu_model = " ".join(x for x in (first.get("Manufacturer"), first.get("Name")) if x) or "GPU"
        return cls(
            name=name,
            vcpus=int(item.get("VCpuInfo", {}).get("DefaultVCpus") or 0),
            memory_bytes=int(item.get("MemoryInfo", {}).get("SizeInMiB") or 0) * MiB,
            gpus=gpus,
            gpu_model=gpu_model,
            current_generation=bool(item.get("CurrentGeneration", True)),
            family=name.split(".", 1)[0],
            architectures=tuple(item.get("ProcessorInfo", {}).get("SupportedArchitectures") or ()),
            price_per_hour=price(name, region),
            bare_metal=bool(item.get("BareMetal", False)) or name.endswith(".metal") or ".metal-" in name,
            other_accelerators=any(item.get(key) for key in _OTHER_ACCELERATORS),
            usage_classes=tuple(item.get("SupportedUsageClasses") or ("on-demand",)),
        )


# -- the catalogue, cached per region ---------------------------------------------------------

_CACHE: dict[tuple[str, str | None], list[InstanceTypeInfo]] = {}
_LOCKS: dict[tuple[str, str | None], threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every cached catalogue (for tests)."""
    with _LOCKS_LOCK:
        _CACHE.clear()


def describe_instance_types(ec2_client: Any, region: str | None = None) -> list[InstanceTypeInfo]:
    """All instance types offered by ``ec2_client``'s endpoint in ``region``, with prices.

    Calls ``DescribeInstanceTypes`` page by page on the first use for a (region, endpoint) pair
    and answers from an in-process cache afterwards; concurrent first calls share one fetch.
    ``region`` defaults to the client's region. The page loop stops when there is no
    ``NextToken``, when a token repeats or a page brings no new type (moto ignores ``NextToken``
    and returns everything on every call), or after :data:`MAX_PAGES` pages.
    """
    meta = getattr(ec2_client, "meta", None)
    region = region or getattr(meta, "region_name", None) or "us-east-1"
    key = (region, getattr(meta, "endpoint_url", None))
    cached = _CACHE.get(key)
    if cached is not None:
        return list(cached)
    with _LOCKS_LOCK:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        cached = _CACHE.get(key)
        if cached is not None:
            return list(cached)
        found: dict[str, InstanceTypeInfo] = {}
        seen_tokens: set[str] = set()
        token: str | None = None
        for _ in range(MAX_PAGES):
            kwargs: dict[str, Any] = {"MaxResults": PAGE_SIZE}
            if token:
                kwargs["NextToken"] = token
            page = ec2_client.describe_instance_types(**kwargs)
            new = 0
            for item in page.get("InstanceTypes", []):
                if item.get("InstanceType") and item["InstanceType"] not in found:
                    found[item["InstanceType"]] = InstanceTypeInfo.from_api(item, region)
                    new += 1
            token = page.get("NextToken")
            if not token or token in seen_tokens or new == 0:
                break
            seen_tokens.add(token)
        result = sorted(found.values(), key=lambda t: t.name)
        with _LOCKS_LOCK:
            _CACHE[key] = result
        return list(result)


# -- choosing ---------------------------------------------------------------------------------


def _fmt_gib(n: float) -> str:
    gib = n / GiB
    return f"{gib:.0f} GiB" if abs(gib - round(gib)) < 0.05 else f"{gib:.1f} GiB"


def _request_text(
    cpu: int, memory_bytes: int | None, gpus: int, arch: str | None, cpu_max: int | None = None, memory_max: int | None = None
) -> str:
    parts = [f"{cpu} to {cpu_max} vCPU" if cpu_max and cpu_max != cpu else f"{cpu} vCPU"]
    if memory_bytes and memory_max and memory_max != memory_bytes:
        parts.append(f"{_fmt_gib(memory_bytes)} to {_fmt_gib(memory_max)} memory")
    elif memory_bytes:
        parts.append(f"{_fmt_gib(memory_bytes)} memory")
    if gpus:
        parts.append(f"{gpus} GPU")
    text = ", ".join(parts)
    return f"{text} ({arch})" if arch else text


def _family_rank(t: InstanceTypeInfo, gpus: int) -> int:
    ranks = _GPU_FAMILY_RANK if gpus else _CPU_FAMILY_RANK
    return ranks.get(t.series, len(set(ranks.values())))


def _order_key(t: InstanceTypeInfo, gpus: int) -> tuple[Any, ...]:
    return (
        _family_rank(t, gpus),
        t.price_per_hour is None,
        not t.current_generation,
        t.price_per_hour or 0.0,
        t.vcpus,
        t.memory_bytes,
        t.name,
    )


def _usable(t: InstanceTypeInfo, arch: str | None, usage_class: str | None) -> bool:
    return (
        not t.bare_metal
        and not t.other_accelerators
        and t.vcpus > 0
        and t.memory_bytes > 0
        and (arch is None or arch in t.architectures)
        and (usage_class is None or usage_class in t.usage_classes)
    )


def _gpu_fits(t: InstanceTypeInfo, gpus: int) -> bool:
    return t.gpu_model is None if gpus == 0 else t.gpus >= gpus


def choose_instance_types(
    types: Iterable[InstanceTypeInfo],
    cpu: int,
    memory_bytes: int | None,
    gpus: int = 0,
    count: int = 4,
    arch: str | None = "x86_64",
    *,
    usage_class: str | None = None,
    what: str = "worker",
    region: str | None = None,
    cpu_max: int | None = None,
    memory_max: int | None = None,
) -> list[InstanceTypeInfo]:
    """Up to ``count`` instance types that fit the request, best first (see the module docstring).

    ``arch``: the architecture all candidates must support (None: any; then candidates may need
    different images). ``usage_class``: ``"spot"`` or ``"on-demand"`` to keep only types offered
    that way. ``cpu_max`` and ``memory_max``: the upper ends of Coiled's ``[min, max]`` ranges
    (None: no range). ``what`` (``"worker"`` or ``"scheduler"``) and ``region`` only shape the
    error. Raises :class:`ClusterSpecError` naming the request and the nearest types when nothing
    fits.
    """
    if cpu < 1:
        raise ClusterSpecError(f"{what}_cpu must be at least 1, not {cpu}")
    if gpus < 0:
        raise ClusterSpecError(f"{what}_gpu must be at least 0, not {gpus}")
    pool = [t for t in types if _usable(t, arch, usage_class)]
    fitting = [t for t in pool if cpu <= t.vcpus <= (cpu_max or t.vcpus) and _gpu_fits(t, gpus)]
    if memory_bytes:
        tier = within_memory(fitting, memory_bytes, memory_max)
        if not tier and memory_max is None:
            tier = smallest_above(fitting, memory_bytes)
    else:
        tier = fitting
    if not tier:
        raise ClusterSpecError(_nothing_fits(pool, cpu, memory_bytes, gpus, arch, what, region, cpu_max, memory_max))
    tier.sort(key=lambda t: _order_key(t, gpus))
    return tier[: max(1, count)]


def nearest_instance_types(
    types: Iterable[InstanceTypeInfo],
    cpu: int,
    memory_bytes: int | None,
    gpus: int = 0,
    n: int = 3,
) -> list[InstanceTypeInfo]:
    """The ``n`` types of distinct shape closest to fitting the request.

    Distance: how far a type falls short (log2 of request/offer in vCPU, memory and GPUs) plus a
    tenth of how far it overshoots, so a too-large request is answered with the largest types
    and a too-small one with the smallest. Each shape (vCPU, memory, GPUs) is represented by its
    best-ranked type. With ``gpus`` > 0 only GPU types are considered, otherwise only types
    without GPU.
    """

    def gap(offer: float, want: float) -> float:
        ratio = math.log2(offer / want)
        return -ratio if ratio < 0 else 0.1 * ratio

    def distance(t: InstanceTypeInfo) -> float:
        d = gap(t.vcpus, cpu)
        if memory_bytes:
            d += gap(t.memory_bytes, memory_bytes)
        if gpus:
            d += gap(t.gpus + 1, gpus + 1)
        return d

    candidates = [t for t in types if (t.gpus > 0 if gpus else t.gpu_model is None)]
    candidates.sort(key=lambda t: (distance(t), _order_key(t, gpus)))
    shapes: dict[tuple[int, int, int], InstanceTypeInfo] = {}
    for t in candidates:
        shapes.setdefault((t.vcpus, t.memory_bytes, t.gpus), t)
        if len(shapes) >= n:
            break
    return list(shapes.values())


def _nothing_fits(
    pool: Sequence[InstanceTypeInfo],
    cpu: int,
    memory_bytes: int | None,
    gpus: int,
    arch: str | None,
    what: str,
    region: str | None,
    cpu_max: int | None = None,
    memory_max: int | None = None,
) -> str:
    where = f" in {region}" if region else ""
    request = _request_text(cpu, memory_bytes, gpus, arch, cpu_max, memory_max)
    nearest = nearest_instance_types(pool, cpu, memory_bytes, gpus)
    if not nearest:
        return (
            f"No EC2 instance type{where} fits the {what} request of {request}: none of that kind "
            "is offered. Change the request, or name types with backend_options={'instance_types': [...]}."
        )
    listed = "; ".join(t.summary() for t in nearest)
    gpu_hint = f", {what}_gpu" if gpus else ""
    return (
        f"No EC2 instance type{where} fits the {what} request of {request}. Nearest: {listed}. "
        f"Adjust {what}_cpu, {what}_memory{gpu_hint}, or name types with "
        "backend_options={'instance_types': [...]}."
    )


def named_instance_types(
    types: Iterable[InstanceTypeInfo],
    names: Sequence[str],
    parameter: str = "backend_options.instance_types",
    region: str | None = None,
) -> list[InstanceTypeInfo]:
    """The catalogue entries of ``names`` (``worker_vm_types``, ``backend_options['instance_types']``
    and the scheduler's), in that order.

    Raises :class:`ClusterSpecError` naming ``parameter`` (what the user wrote) for a name the
    region does not offer, with the closest names it does offer.
    """
    import difflib

    by_name = {t.name: t for t in types}
    chosen = []
    for name in names:
        info = by_name.get(name)
        if info is None:
            close = difflib.get_close_matches(name, list(by_name), n=3, cutoff=0.6)
            if not close:  # at least the types of the same family, or the same size
                family = name.partition(".")[0]
                close = sorted(n for n in by_name if n.startswith(f"{family}."))[:3] or difflib.get_close_matches(
                    name, list(by_name), n=3, cutoff=0.3
                )
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            where = f" in {region}" if region else " here"
            raise ClusterSpecError(f"{parameter}: {name!r} is not an instance type offered{where}{hint}")
        chosen.append(info)
    return chosen


def architecture_of(types: Sequence[InstanceTypeInfo], parameter: str) -> str:
    """The one architecture every type of ``types`` runs (``"x86_64"`` or ``"arm64"``).

    Raises :class:`ClusterSpecError` naming ``parameter`` when they have none in common (an image
    is for one architecture, and all nodes of a role share one image).
    """
    common = set.intersection(*(set(t.architectures) for t in types)) if types else set()
    for arch in ("x86_64", "arm64"):
        if arch in common:
            return arch
    listed = ", ".join(f"{t.name} ({'/'.join(t.architectures) or 'unknown'})" for t in types)
    raise ClusterSpecError(f"{parameter}: {listed} do not share one architecture; name only x86_64 or only arm64 types")


def system_reserve(info: InstanceTypeInfo) -> int:
    """Memory (bytes) kept back for the operating system and the node agent.

    10 % of the instance's memory, at least 512 MiB and at most 8 GiB (the OS, the agent and the
    nanny do not grow with the machine), and never more than half of the memory.
    """
    reserve = min(max(512 * MiB, int(info.memory_bytes * 0.10)), 8 * GiB)
    return min(reserve, info.memory_bytes // 2)


def worker_memory_limit(info: InstanceTypeInfo) -> int:
    """Bytes a worker on one ``info`` instance may use: its memory less :func:`system_reserve`.

    e.g. 16 GiB (m6i.xlarge) -> 14.4 GiB; 1 GiB (t3.micro) -> 512 MiB; 768 GiB -> 760 GiB.
    """
    return info.memory_bytes - system_reserve(info)
