"""A cluster's TLS material in the store: what is kept, for how long, and who deletes it.

The material lives under ``clusters/<backend>/<name>/`` in the store (see :mod:`coiled_core.security`):

- While a cluster is being created, the store holds all of it (the CA and a certificate and key
  for the scheduler, the workers and the client), so that the backend's ``provision`` hook can
  hand the nodes theirs.
- Once ``provision`` has returned, only what a client needs to reattach is kept: the CA
  certificate and the client's certificate and key. The CA key and the nodes' keys are deleted;
  the nodes hold theirs already (a backend may keep them in its own secret store).
- When the cluster is torn down (``Cluster.shutdown``/``close``, ``coiled.delete_cluster``,
  ``coiled cluster stop``), the rest is deleted. A cluster that ends on its own deletes it
  itself where its node can reach the store (the local backend); otherwise
  ``coiled cluster gc`` (:func:`sweep`) deletes the material of clusters its backend no longer
  reports live.

Next to the material, ``cluster.json`` says which backend options the cluster was made with and by
whom, so that gc never deletes another user's or another backend's
material: it deletes only what this user made on this machine, for a cluster the backend says
has ended and that no live process of this machine is still creating.
"""

from __future__ import annotations

import getpass
import json
import logging
import socket
from typing import TYPE_CHECKING, Any, Mapping

import psutil

from coiled_core.security import ROLES, ClusterTLS, cluster_key, tls_files
from coiled_core.store import Store

if TYPE_CHECKING:
    from coiled_core.plugins import Backend

logger = logging.getLogger("coiled")

#: Files under ``clusters/<backend>/<name>/tls/`` that a client needs to reattach; everything else goes
#: once the cluster has been provisioned.
CLIENT_FILES = frozenset({"ca.pem", "client.pem", "client-key.pem"})


def _owner_key(backend: str, name: str) -> str:
    return f"{cluster_key(backend, name)}/cluster.json"


def _me() -> dict[str, str]:
    try:
        user = getpass.getuser()
    except Exception:  # no user name (some containers): the host still tells machines apart
        user = "unknown"
    return {"user": user, "host": socket.gethostname()}


def _this_process() -> dict[str, float]:
    me = psutil.Process()
    return {"pid": me.pid, "create_time": me.create_time()}


def _process_alive(process: Mapping[str, Any]) -> bool:
    try:
        found = psutil.Process(int(process["pid"]))
        return found.status() != psutil.STATUS_ZOMBIE and abs(found.create_time() - float(process["create_time"])) < 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def save_for_start(store: Store, name: str, material: ClusterTLS, backend: str, backend_options: Mapping[str, Any]) -> None:
    """Keep all of ``material`` for the cluster being created, with who made it and where."""
    # Whatever an earlier cluster of this name left goes first: files of two CAs must not mix.
    delete(store, name, backend)
    owner = {
        "backend": backend,
        "backend_options": dict(backend_options),
        "created_by": _me(),
        # Until provisioned, gc leaves the material alone while this process lives.
        "creator": _this_process(),
        "provisioned": False,
    }
    store.write(_owner_key(backend, name), json.dumps(owner).encode(), private=True)
    material.save(store, name, backend)


def load(store: Store, name: str, backend: str) -> ClusterTLS | None:
    """The TLS material the store keeps for cluster ``name`` of ``backend``, or None."""
    return ClusterTLS.load(store, name, backend)


def keep_client_only(store: Store, name: str, backend: str) -> None:
    """Delete the CA key and the nodes' keys and certificates: the cluster has been provisioned."""
    prefix = f"{cluster_key(backend, name)}/tls"
    for filename in tls_files(ROLES):
        if filename not in CLIENT_FILES:
            store.delete(f"{prefix}/{filename}")
    raw = store.read(_owner_key(backend, name))
    if raw is not None:
        owner = json.loads(raw)
        owner["provisioned"] = True
        store.write(_owner_key(backend, name), json.dumps(owner).encode(), private=True)


def delete(store: Store, name: str, backend: str) -> None:
    """Delete everything the store keeps of cluster ``name``'s credentials (missing is fine),
    and the backend's folder with it once it is empty."""
    store.delete(cluster_key(backend, name))
    store.remove_empty_folder(f"clusters/{backend}")


def local_directory(store: Store, name: str, backend: str) -> str | None:
    """The directory holding ``name``'s credentials when the store is on this machine, else None.

    A node on this machine may delete it when its cluster ends (the local backend does).
    """
    path = store.local_path(_owner_key(backend, name))
    return path.rsplit("/", 1)[0] if path else None


def sweep(store: Store, backend: Backend, options: Any) -> list[str]:
    """Delete the credentials of ended clusters that this user made on this machine with ``backend``.

    A cluster's material is deleted only when all of these hold: ``cluster.json`` names this
    backend and this user and host, and ``describe``, asked with the options the cluster was made
    with, says the cluster is not live. Anything else is left alone, including material whose
    backend cannot be asked right now.
    """
    removed = []
    me = _me()
    for name in list(store.list(f"clusters/{backend.name}")):
        raw = store.read(_owner_key(backend.name, name))
        if raw is None:
            continue  # made by an older version, or not a cluster's: not provably ours
        try:
            owner = json.loads(raw)
        except ValueError:
            continue
        if owner.get("created_by") != me:
            continue
        if not owner.get("provisioned") and _process_alive(owner.get("creator") or {}):
            continue  # being created right now: its backend may not show it yet
        try:
            cluster_options = backend.validate_options(owner.get("backend_options") or {})
            record = backend.describe(name, cluster_options)
        except Exception:
            logger.debug("cannot tell whether cluster %r has ended; keeping its credentials", name, exc_info=True)
            continue
        if record is not None and record.state.is_live:
            continue
        delete(store, name, backend.name)
        removed.append(f"deleted the TLS credentials of ended cluster {name!r}")
    return removed
