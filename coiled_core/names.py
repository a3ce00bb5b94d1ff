"""Identifiers a backend derives from a user's cluster name.

Cluster names are what Coiled accepts: letters of either case, digits, ``_`` and ``-``, up to 128
characters. Many resources need less: DNS labels (Kubernetes objects, Compute Engine instances),
label values, lower-case names. :func:`dns_label` derives such an identifier deterministically,
so that every process finds the same resource from the user's name; the backend keeps the
user's name itself on the resource (a tag, label or annotation), so describe, list and the CLI
show and accept the name the user wrote.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["dns_label"]


def dns_label(name: str, max_length: int = 63, prefix: str = "") -> str:
    """A DNS label (RFC 1123: ``[a-z0-9]([a-z0-9-]*[a-z0-9])?``) for cluster ``name``.

    Lower case, ``_`` to ``-``. When that changes the name, or it must be shortened to fit
    ``max_length`` (with ``prefix``), a short hash of the exact name is appended, so that two
    names that differ only in case or ``_``/``-`` (``My_Cluster`` and ``my-cluster``) never map to
    one label. A name that already is a label maps to itself.

    Example::

        dns_label("production") == "production"
        dns_label("My_Cluster")  == "my-cluster-3f9a1c"
    """
    if max_length < 8 + len(prefix):
        raise ValueError(f"max_length {max_length} leaves no room for a name after {prefix!r}")
    label = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-") or "cluster"
    candidate = f"{prefix}{label}"
    if label == name and len(candidate) <= max_length:
        return candidate
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    room = max_length - len(prefix) - len(digest) - 1
    return f"{prefix}{label[:room].rstrip('-')}-{digest}"
