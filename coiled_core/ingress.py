"""Who may reach a cluster's scheduler: by default only the client that made it.

One rule for every backend whose scheduler has an address outside the cloud's network (AWS and
GCP firewall rules, a Kubernetes LoadBalancer's source ranges): ``allow_ingress_from`` is a CIDR
the user gives, or, by default and for ``"me"``, this client's public address as a ``/32``
(``/128`` for IPv6), asked of a public echo service once per cluster.
"""

from __future__ import annotations

import ipaddress
import urllib.request

from coiled_core.errors import ClusterSpecError

#: Answers the caller's public address as plain text.
PUBLIC_ADDRESS_URL = "https://checkip.amazonaws.com"
#: The word for "this client's address" in ``allow_ingress_from``.
INGRESS_ME = "me"


def public_address() -> str:
    """This client's public address (raises OSError or ValueError if it cannot be learnt)."""
    with urllib.request.urlopen(PUBLIC_ADDRESS_URL, timeout=10) as reply:
        return str(ipaddress.ip_address(reply.read().decode().strip()))


def client_cidr(allow_ingress_from: str | None, everyone: str = "'everyone'") -> str:
    """``allow_ingress_from`` as one network: a given CIDR as it is; ``None`` or ``"me"``: this
    client's public address as a single-address network.

    Raises :class:`ClusterSpecError` naming ``allow_ingress_from`` when the address cannot be
    learnt (``everyone``: how the backend spells "anyone", for the message).
    """
    if allow_ingress_from and allow_ingress_from != INGRESS_ME:
        return allow_ingress_from
    try:
        address = ipaddress.ip_address(public_address())
    except (OSError, ValueError):
        asked = "allow_ingress_from is 'me'" if allow_ingress_from else "allow_ingress_from is not set"
        raise ClusterSpecError(
            f"allow_ingress_from: {asked} and this machine's public address could not be detected (asked "
            f"{PUBLIC_ADDRESS_URL}); give the address range allowed to reach the scheduler, e.g. "
            f"allow_ingress_from='203.0.113.7/32' (or {everyone})"
        ) from None
    return f"{address}/{address.max_prefixlen}"
