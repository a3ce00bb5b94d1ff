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


#: Environment variable naming the proof that an offline stand-in runs (see :func:`standin_running`).
STANDIN_VARIABLE = "COILED_STANDIN"


class OfflineSwitchError(RuntimeError):
    """An offline stand-in's switch is on where no stand-in runs."""


def standin_running(path: str | None = None) -> bool:
    """Whether ``path`` (default ``$COILED_STANDIN``) proves that an offline stand-in of this
    user runs: a file only this user may read and write, holding the stand-in's pid (alive) and
    the token its name carries. A stand-in writes it when it starts and deletes it when it
    stops (:mod:`coiled_core.testing.standin`)."""
    import json
    import stat

    path = path if path is not None else os.environ.get(STANDIN_VARIABLE, "")
    if not path:
        return False
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            return False
        with open(path) as f:
            proof = json.load(f)
        if os.path.basename(path) != f"{proof['token']}.json":
            return False
        os.kill(int(proof["pid"]), 0)
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def require_standin(switch: str) -> None:
    """Refuse ``switch`` (an offline stand-in's setting) unless a stand-in runs."""
    if not standin_running():
        raise OfflineSwitchError(
            f"{switch} is a switch of the offline stand-ins (tests, demos), and no stand-in runs here "
            f"(${STANDIN_VARIABLE} names none that is alive): with it, coiled would connect to loopback "
            "addresses instead of the cloud's. Unset it."
        )


def loopback_mode() -> bool:
    """Whether node addresses are mapped to loopback ones (offline simulators only).

    Raises :class:`OfflineSwitchError` if the switch is on but no offline stand-in runs.
    """
    value = os.environ.get("DASK_COILED__LOOPBACK_ADDRESSES", "")
    switch = "DASK_COILED__LOOPBACK_ADDRESSES"
    if value:
        on = value.strip().lower() in ("1", "true", "yes")
    else:
        try:
            import dask.config

            on = bool(dask.config.get("coiled.loopback-addresses", False))
            switch = "dask config coiled.loopback-addresses"
        except ImportError:  # pragma: no cover
            on = False
    if on:
        require_standin(switch)
    return on


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
