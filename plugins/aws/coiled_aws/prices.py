"""A small on-demand price table for common EC2 instance types, shipped with the plugin.

The prices are APPROXIMATE public Linux on-demand list prices in USD per hour for us-east-1
(the reference region), scaled for a few other regions by a rough multiplier. They are only used
to order instance-type candidates (cheapest first) and to print a cost estimate; they are not a
bill and go stale. There is no price lookup at run time: the AWS Pricing API is slow, needs its own
permissions and is not available offline (moto has no pricing service).

Types that are not in the table have no price (``None``); the chooser orders them after priced
types of the same family rank.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Reference region of :data:`ON_DEMAND_USD_PER_HOUR`.
REFERENCE_REGION = "us-east-1"

#: vCPUs of each size name (every family here scales price linearly with size).
_SIZE_VCPUS = {
    "nano": 2,
    "micro": 2,
    "small": 2,
    "medium": 2,
    "large": 2,
    "xlarge": 4,
    "2xlarge": 8,
    "4xlarge": 16,
    "8xlarge": 32,
    "9xlarge": 36,
    "12xlarge": 48,
    "16xlarge": 64,
    "18xlarge": 72,
    "24xlarge": 96,
    "32xlarge": 128,
    "48xlarge": 192,
}

_SIZES_24 = ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge")
_SIZES_32 = (*_SIZES_24, "32xlarge")
_SIZES_48 = (*_SIZES_24, "48xlarge")
_SIZES_C5 = ("large", "xlarge", "2xlarge", "4xlarge", "9xlarge", "12xlarge", "18xlarge", "24xlarge")
#: CPU families: price of the ``large`` size (2 vCPUs) and the sizes that exist. Each larger size
#: costs ``large`` x vCPUs / 2, which is how AWS prices these families.
_CPU_FAMILIES: dict[str, tuple[float, tuple[str, ...]]] = {
    "m5": (0.096, _SIZES_24),
    "m6i": (0.096, _SIZES_32),
    "m7i": (0.1008, _SIZES_48),
    "c5": (0.085, _SIZES_C5),
    "c6i": (0.085, _SIZES_32),
    "c7i": (0.08925, _SIZES_48),
    "r5": (0.126, _SIZES_24),
    "r6i": (0.126, _SIZES_32),
    "r7i": (0.1323, _SIZES_48),
}

#: Burstable and GPU types do not scale linearly: listed one by one.
_LISTED: dict[str, float] = {
    "t3.nano": 0.0052,
    "t3.micro": 0.0104,
    "t3.small": 0.0208,
    "t3.medium": 0.0416,
    "t3.large": 0.0832,
    "t3.xlarge": 0.1664,
    "t3.2xlarge": 0.3328,
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g4dn.4xlarge": 1.204,
    "g4dn.8xlarge": 2.176,
    "g4dn.12xlarge": 3.912,
    "g4dn.16xlarge": 4.352,
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.8xlarge": 2.448,
    "g5.12xlarge": 5.672,
    "g5.16xlarge": 4.096,
    "g5.24xlarge": 8.144,
    "g5.48xlarge": 16.288,
    "p3.2xlarge": 3.06,
    "p3.8xlarge": 12.24,
    "p3.16xlarge": 24.48,
    "p3dn.24xlarge": 31.212,
}


def _build_table() -> dict[str, float]:
    table: dict[str, float] = {}
    for family, (large, sizes) in _CPU_FAMILIES.items():
        for size in sizes:
            table[f"{family}.{size}"] = round(large * _SIZE_VCPUS[size] / 2, 4)
    table.update(_LISTED)
    return table


#: Approximate us-east-1 on-demand Linux price of each listed type, USD per hour.
ON_DEMAND_USD_PER_HOUR: dict[str, float] = _build_table()

#: Rough price of a region relative to us-east-1; regions not listed count as 1.0.
REGION_MULTIPLIER: dict[str, float] = {
    "us-east-1": 1.0,
    "us-east-2": 1.0,
    "us-west-2": 1.0,
    "us-west-1": 1.17,
    "ca-central-1": 1.1,
    "eu-west-1": 1.11,
    "eu-west-2": 1.16,
    "eu-central-1": 1.19,
    "eu-north-1": 1.06,
    "ap-south-1": 1.05,
    "ap-southeast-1": 1.25,
    "ap-southeast-2": 1.25,
    "ap-northeast-1": 1.29,
    "sa-east-1": 1.59,
}


def region_multiplier(region: str | None) -> float:
    """How much more a type costs in ``region`` than in us-east-1 (1.0 when unknown or None)."""
    return REGION_MULTIPLIER.get(region or REFERENCE_REGION, 1.0)


def price(instance_type: str, region: str | None = None) -> float | None:
    """Approximate on-demand USD/hour of ``instance_type`` in ``region`` (default us-east-1).

    ``None`` when the type is not in the table.
    """
    base = ON_DEMAND_USD_PER_HOUR.get(instance_type.strip().lower())
    if base is None:
        return None
    return round(base * region_multiplier(region), 6)


def estimate_cost(
    per_hour_items: Iterable[float | None | tuple[float | None, int]],
    hours: float = 1.0,
) -> float:
    """Estimated cost in USD of running some instances for ``hours`` (default one hour).

    Each item is a price per hour, or a ``(price_per_hour, count)`` pair, e.g.
    ``estimate_cost([(scheduler_price, 1), (worker_price, n_workers)])``. Unknown prices (``None``)
    count as zero, so the result is a lower bound when some type has no price.
    """
    total = 0.0
    for item in per_hour_items:
        if isinstance(item, tuple):
            per_hour, count = item
        else:
            per_hour, count = item, 1
        if per_hour is not None:
            total += per_hour * count
    return round(total * hours, 6)
