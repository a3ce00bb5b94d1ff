"""Which address a node binds to, and the loopback mapping of the offline simulators.

A cloud node binds to its private address (the cloud maps a public one onto it). The offline
stand-ins (moto, a fake Kubernetes API) hand out private-range addresses that must never be
contacted; instead each simulated node gets its own loopback address by one fixed rule, so fixed
ports (8786, 8787) do not collide and every party can translate an address without asking:
``A.B.C.D`` becomes ``127.B.C.D`` (unique within one VPC, whose addresses share ``A``).
Loopback mode is on when dask config ``coiled.loopback-addresses`` is true (environment
``DASK_COILED__LOOPBACK_ADDRESSES=true``, which the simulators set for every process).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket

#: Environment variable a simulator sets to the node's loopback address.
NODE_HOST_VARIABLE = "COILED_NODE_HOST"
_IPV4_IN_ADDRESS = re.compile(r"(?<![\d.])(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})(?![\d.])")


def loopback_mode() -> bool:
    """Whether node addresses are mapped to loopback ones (offline simulators only)."""
    value = os.environ.get("DASK_COILED__LOOPBACK_ADDRESSES", "")
    if value:
        return value.strip().lower() in ("1", "true", "yes")
    try:
        import dask.config

        return bool(dask.config.get("coiled.loopback-addresses", False))
    except ImportError:  # pragma: no cover
        return False


def loopback_address(private_ip: str) -> str:
    """``A.B.C.D`` -> ``127.B.C.D``: a simulated node's own loopback address."""
    address = ipaddress.IPv4Address(private_ip)
    _, b, c, d = address.packed
    return f"127.{b}.{c}.{d}"


def map_address(address: str | None) -> str | None:
    """In loopback mode, replace the IPv4 address inside ``address`` (a URL or ``host:port``)."""
    if not address or not loopback_mode():
        return address

    def replace(match: re.Match) -> str:
        ip = match.group(1)
        return ip if ip.startswith("127.") else loopback_address(ip)

    return _IPV4_IN_ADDRESS.sub(replace, address)


def node_host(configured: str | None) -> str:
    """The address this node binds to and advertises.

    The configured host if given; else the simulator's ``COILED_NODE_HOST``; else this machine's
    primary private address (the one a route to the outside world would use).
    """
    if configured:
        return map_address(configured) or configured
    if os.environ.get(NODE_HOST_VARIABLE):
        return os.environ[NODE_HOST_VARIABLE]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, it only picks a route
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"
