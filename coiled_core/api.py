"""Managing clusters without a ``Cluster`` object: list, delete, read logs, clean up.

These functions work from any process, because every backend can rebuild a cluster's record from
its own world (``describe``, ``list_clusters``). They back the ``coiled`` command-line tool and
are exported from :mod:`coiled` as in Coiled's API::

    import coiled

    for record in coiled.list_clusters():
        print(record.name, record.state.value)
    coiled.delete_cluster("production")

Each function takes ``backend`` (default: dask config ``coiled.backend``) and ``backend_options``
(default: the per-backend dask config ``coiled.backend-options.<backend>``); given options replace
the configured ones, exactly as ``coiled.Cluster(backend_options=...)`` does. Every expected
failure is a :class:`~coiled_core.errors.CoiledError`.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

from pydantic import BaseModel

from coiled_core import config
from coiled_core.errors import ClusterNotFoundError, ClusterSpecError
from coiled_core.plugins import Backend, PluginEntry, list_backends, load_backend
from coiled_core.records import ClusterRecord
from coiled_core.spec import NAME_PATTERN


def resolve_backend_name(backend: str | None = None) -> str:
    """``backend`` if given, else dask config ``coiled.backend``."""
    name = backend if backend is not None else config.get("backend")
    if not isinstance(name, str) or not name:
        raise ClusterSpecError(
            f"backend: must be the name of an installed backend (e.g. 'local'), not {name!r}; "
            "pass backend= or set dask config 'coiled.backend'"
        )
    return name


def _resolve(backend: str | None, backend_options: Mapping[str, Any] | None) -> tuple[Backend, BaseModel]:
    """The backend to call and its validated options."""
    name = resolve_backend_name(backend)
    loaded = load_backend(name)
    if backend_options is None:
        per_backend = config.get("backend-options") or {}
        if not isinstance(per_backend, Mapping):
            raise ClusterSpecError(
                f"dask config 'coiled.backend-options' must map backend names to their options, not {per_backend!r}"
            )
        backend_options = per_backend.get(name) or {}
        where = f"dask config 'coiled.backend-options.{name}'"
    else:
        where = "backend_options"
    if not isinstance(backend_options, Mapping):
        raise ClusterSpecError(f"{where} must be a mapping of option names to values, not {backend_options!r}")
    return loaded, loaded.validate_options(backend_options)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        # No backend can hold such a cluster; refusing here also keeps odd names (paths, globs)
        # away from the backends.
        raise ClusterNotFoundError(
            f"no cluster is named {name!r}: cluster names are 1 to 128 letters, digits, '_' and '-'"
        )
    return name


def _describe_or_raise(backend: Backend, options: BaseModel, name: str) -> ClusterRecord:
    record = backend.describe(_check_name(name), options)
    if record is not None:
        return record
    try:
        known = [r.name for r in backend.list_clusters(options)]
    except Exception:  # the hint is optional; the error below is what matters
        known = []
    close = difflib.get_close_matches(name, known, n=3)
    hint = ""
    if close:
        hint = "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    elif known:
        shown = ", ".join(repr(k) for k in known[:10]) + (", ..." if len(known) > 10 else "")
        hint = f"; its clusters: {shown}"
    raise ClusterNotFoundError(f"no cluster named {name!r} on backend {backend.name!r}{hint}")


def teardown_cluster(backend: Backend, record: ClusterRecord, options: BaseModel) -> ClusterRecord:
    """Tear a cluster down through its backend, then delete the TLS material the store keeps for
    it. Every path that ends a cluster on purpose comes here (``Cluster.close``/``shutdown``, a
    failed start, ``delete_cluster``, ``coiled cluster stop``)."""
    from coiled_core import credentials
    from coiled_core.store import Store

    final = backend.teardown(record, options)
    credentials.delete(Store(), record.name, backend.name)
    return final


def list_clusters(backend: str | None = None, backend_options: Mapping[str, Any] | None = None) -> list[ClusterRecord]:
    """Every cluster the backend knows of, live or recently stopped.

    Parameters:
        backend: the backend to ask (default: dask config ``coiled.backend``).
        backend_options: that backend's options (default: dask config
            ``coiled.backend-options.<backend>``).

    Returns:
        One :class:`~coiled_core.records.ClusterRecord` per cluster; ``record.state`` tells
        whether it is still live.
    """
    loaded, options = _resolve(backend, backend_options)
    return list(loaded.list_clusters(options))


def delete_cluster(
    name: str, backend: str | None = None, backend_options: Mapping[str, Any] | None = None
) -> ClusterRecord:
    """Shut down cluster ``name`` and delete its resources, from any process.

    Tearing down a cluster that has already stopped is allowed: whatever it left is removed.

    Parameters:
        name: the cluster's name.
        backend, backend_options: as for :func:`list_clusters`.

    Returns:
        The cluster's final record (``state`` ``stopped``).

    Raises:
        ClusterNotFoundError: if the backend knows no cluster of that name (the message suggests
            close matches).
    """
    loaded, options = _resolve(backend, backend_options)
    record = _describe_or_raise(loaded, options, name)
    return teardown_cluster(loaded, record, options)


def cluster_logs(
    name: str,
    tail: int | None = None,
    backend: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The logs of cluster ``name``, keyed by process, also after it has stopped.

    Parameters:
        name: the cluster's name.
        tail: if given, only the last ``tail`` lines of each log.
        backend, backend_options: as for :func:`list_clusters`.

    Returns:
        A mapping from process name (``"scheduler"``, a worker, ``"node"``, ...) to its log text.

    Raises:
        ClusterNotFoundError: if the backend knows no cluster of that name.
    """
    if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or tail < 1):
        raise ClusterSpecError(f"tail: must be a positive number of lines, not {tail!r}")
    loaded, options = _resolve(backend, backend_options)
    record = _describe_or_raise(loaded, options, name)
    return dict(loaded.logs(record, options, tail=tail))


def gc(backend: str | None = None, backend_options: Mapping[str, Any] | None = None) -> list[str]:
    """Delete what dead clusters left behind on the backend; live clusters are never touched.

    Besides the backend's own leftovers, this deletes the TLS material the store keeps for
    clusters of this backend that have ended, when this user made them on this machine (see
    :func:`coiled_core.credentials.sweep`).

    Parameters:
        backend, backend_options: as for :func:`list_clusters`.

    Returns:
        One line per thing deleted, for the user (empty if there was nothing to delete).
    """
    from coiled_core import credentials
    from coiled_core.store import Store

    loaded, options = _resolve(backend, backend_options)
    removed = list(loaded.gc(options))
    return removed + credentials.sweep(Store(), loaded, options)


def build_software_environment(name: str, backend: str | None = None, backend_options: Mapping[str, Any] | None = None) -> str:
    """Build software environment ``name`` now, where ``backend``'s nodes get it, so that no
    cluster waits for the build (``coiled env build NAME --backend B``).

    Parameters:
        name: the software environment (as for ``coiled.Cluster(software=...)``).
        backend, backend_options: as for :func:`list_clusters`.

    Returns:
        One line for the user: what was built, and where.
    """
    from coiled_core.software import get_software_info

    software = get_software_info(name)
    loaded, options = _resolve(backend, backend_options)
    return loaded.build_environment(software, options)


__all__ = [
    "PluginEntry",
    "build_software_environment",
    "teardown_cluster",
    "cluster_logs",
    "delete_cluster",
    "gc",
    "list_backends",
    "list_clusters",
]
