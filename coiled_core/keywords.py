"""Today's Coiled keywords: their older spellings, and how each backend maps them onto its options.

Code written for Coiled passes keywords such as ``region``, ``worker_vm_types`` or
``spot_policy``. They are generic ``coiled.Cluster`` keywords, stored in the spec; a backend says
which of them it understands with its ``keyword_options`` hook, a mapping from keyword to the
``backend_options`` field it sets. :func:`apply_generic_keywords` moves the given values there
(an explicit ``backend_options`` value that differs is an error naming both), and warns once about
keywords the backend has no use for, so that a cloud script runs on the local backend unchanged.
A value the backend's options model refuses is reported under the keyword the user wrote.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

from coiled_core.errors import ClusterSpecError

#: Generic keywords a backend may map onto its options (see the ``keyword_options`` hook).
GENERIC_KEYWORDS = (
    "region",
    "worker_vm_types",
    "scheduler_vm_types",
    "spot_policy",
    "tags",
    "arm",
    "worker_disk_size",
    "scheduler_disk_size",
    "allow_ssh",
    "allow_ingress_from",
    "use_best_zone",
    "scheduler_gpu",
    "worker_gpu_type",
)

#: Coiled's package sync variants, accepted and kept with ``package_sync``.
PACKAGE_SYNC_VARIANTS = (
    "package_sync_strict",
    "package_sync_conda_extras",
    "package_sync_ignore",
    "package_sync_only",
    "package_sync_fail_on",
    "package_sync_use_uv_installer",
)

#: Older spellings: keyword -> the keyword it means today.
ALIASES = {"compute_purchase_option": "spot_policy", "account": "workspace"}


def normalise(keywords: Mapping[str, Any]) -> dict[str, Any]:
    """Fold older spellings and package-sync variants into the spec's keywords.

    ``compute_purchase_option`` becomes ``spot_policy`` and ``account`` becomes ``workspace``
    (both given with different values is an error naming both); ``package_sync`` and its
    variants become one ``package_sync`` mapping.
    """
    out = dict(keywords)
    for old, new in ALIASES.items():
        if old not in out:
            continue
        value = out.pop(old)
        if value is None:
            continue
        if out.get(new) is not None and out[new] != value:
            raise ClusterSpecError(f"{old}={value!r} and {new}={out[new]!r} disagree; give only {new}")
        out[new] = value
    sync = {key: out.pop(key) for key in PACKAGE_SYNC_VARIANTS if key in out}
    sync = {key: value for key, value in sync.items() if value is not None}
    if sync or out.get("package_sync") is not None:
        enabled = out.get("package_sync")
        if enabled is not None and not isinstance(enabled, (bool, list, tuple)):
            raise ClusterSpecError(f"package_sync: must be True, False or a list of packages, not {enabled!r}")
        out["package_sync"] = {"enabled": enabled if not isinstance(enabled, tuple) else list(enabled), **sync}
    return out


def apply_generic_keywords(
    spec_values: Mapping[str, Any],
    backend_options: Mapping[str, Any],
    mapping: Mapping[str, str],
    backend: str,
    aliases: Mapping[str, tuple[str, ...]] | None = None,
    conflicts: dict[str, tuple[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Move the generic keywords the backend understands into its options.

    Parameters:
        spec_values: the spec's generic keyword values (None = not given).
        backend_options: the options the user (or configuration) gave.
        mapping: the backend's ``keyword_options``: keyword -> option field.
        backend: the backend's name, for messages.
        aliases: other keys under which the options model accepts a field.
        conflicts: filled with the options given both ways (see below).

    Returns:
        The options with the keywords' values added, and which option came from which keyword
        (for messages that name the keyword the user wrote).

    An option given in ``backend_options`` too (under its field name or an alias) is left as
    given and reported in ``conflicts`` (option key -> the keyword's value), for the caller to
    compare once both are validated: ``"everyone"`` and ``"0.0.0.0/0"`` may mean the same.
    """
    options = dict(backend_options)
    sources: dict[str, str] = {}
    conflicts = conflicts if conflicts is not None else {}
    ignored = []
    for keyword in GENERIC_KEYWORDS:
        value = spec_values.get(keyword)
        if value is None or value == {}:
            continue
        field = mapping.get(keyword)
        if field is None:
            ignored.append(keyword)
            continue
        given = [key for key in (field, *(aliases or {}).get(field, ())) if key in options]
        if given:
            conflicts[given[0]] = (keyword, value)
            continue
        options[field] = value
        sources[field] = keyword
    if ignored:
        names = ", ".join(ignored)
        warnings.warn(
            f"{names}: no meaning on the {backend!r} backend, ignored (accepted so that code written "
            "for a cloud runs here unchanged)",
            UserWarning,
            stacklevel=4,
        )
    return options, sources
