"""The backend hook contract.

A backend is a module registered under the entry-point group ``coiled_core.backends`` whose
functions are decorated with ``coiled_core.hookimpl`` and named after the hooks below. Each
``coiled.Cluster`` gets its own plugin manager holding exactly one backend, so every hook here is
``firstresult``: the backend's answer is the answer. Extensions (entry-point group
``coiled_core.extensions``) may wrap any hook with ``@hookimpl(wrapper=True)``.

Hooks are plain synchronous functions of their arguments. Everything a hook needs about a cluster
is in the :class:`~coiled_core.records.ClusterRecord` that ``provision`` returned or ``describe``
rebuilt, which is what makes reattaching by name from another process work. The asynchronous
``Cluster`` calls hooks in a worker thread, so a hook may block.

A backend module may set ``HOOK_API_VERSION`` to the version of this contract it was built for;
if it differs from :data:`HOOK_API_VERSION` the backend is refused with a clear message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pydantic import BaseModel

    from coiled_core.records import ClusterRecord
    from coiled_core.spec import ClusterSpec

#: Version of the hook contract. Bumped when a hook's signature or meaning changes.
HOOK_API_VERSION = 1

PROJECT_NAME = "coiled_core"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


class BackendSpec:
    """Hooks every backend implements."""

    @hookspec(firstresult=True)
    def backend_options_model(self) -> type[BaseModel]:
        """Return the pydantic model that validates this backend's ``backend_options``.

        Called once per cluster before anything is created, and again to read the options back
        from a record; the first non-None result is used. The core rejects unknown keys itself
        (suggesting the closest field name) and then validates with the model.

        Returns:
            A pydantic ``BaseModel`` subclass whose fields all have defaults, so that
            ``backend_options={}`` is valid. Two optional attributes of the model (class
            attributes, or properties when they depend on the options) tell the core about TLS:
            ``TLS_BY_DEFAULT`` (default True) is used when the user leaves ``security`` unset,
            and ``TLS_REQUIRED`` (default False) makes ``security=False`` a ``ClusterSpecError``
            before anything is created; set it when the cluster would be reachable from other
            machines, where a Dask scheduler without TLS runs code for anyone.

        Example::

            @hookimpl
            def backend_options_model():
                return LocalOptions
        """

    @hookspec(firstresult=True)
    def provision(self, spec: ClusterSpec, options: BaseModel) -> ClusterRecord:
        """Create the cluster: a scheduler and ``spec.n_workers`` workers.

        Called after ``spec`` and ``options`` were validated and no cluster of ``spec.name``
        was found by ``describe``. Every scheduler and worker must be run by the node agent
        (``python -m coiled_core.node``), which enforces the idle timeout on the cluster itself.

        Parameters:
            spec: the validated request.
            options: an instance of this backend's ``backend_options_model``.

        Returns:
            A record with ``state`` ``starting`` or ``running``, a ``scheduler_address`` the
            client can reach, ``dashboard_url`` if known, and one ``WorkerRecord`` per worker
            started. Return as soon as the scheduler answers; workers may still be joining.

        Raises:
            ProvisionError: after tearing down everything this call created, naming the step
            that failed and showing the tail of the failing process's log.
            ClusterSpecError: if the request cannot be met by this backend (raise before
            creating anything).

        Example::

            @hookimpl
            def provision(spec, options):
                return start_processes(spec, options)
        """

    @hookspec(firstresult=True)
    def claim_name(self, name: str, options: BaseModel) -> bool:
        """Atomically claim ``name`` for a cluster this caller is about to provision.

        Called after ``describe`` found no live cluster of that name and before ``provision``.
        Two processes creating one name at once must not both win: use the backend's own atomic
        primitive (an exclusive create of a file, object, tag or Kubernetes object). A claim
        whose holder died, or whose cluster has stopped, is stale and may be taken over, so a
        crashed creator never blocks a name forever. ``teardown`` releases the claim.

        Returns:
            True if this caller now holds the name and must provision it; False if another
            process holds it (the caller then waits for ``describe`` to show that cluster live
            and attaches to it).
        """

    @hookspec(firstresult=True)
    def scale(self, record: ClusterRecord, n_workers: int, retired: list[str]) -> ClusterRecord:
        """Bring the cluster to ``n_workers`` workers.

        Called by ``Cluster.scale``, ``Cluster.scale_down`` and adaptive scaling. Before a scale
        down, the core has already retired the workers named in ``retired`` through the
        scheduler (their data moved elsewhere); the backend must stop exactly those. When adding,
        the backend starts ``n_workers - (existing - retired)`` new workers with names not used
        before in this cluster.

        Parameters:
            record: the cluster as last described.
            n_workers: the target number of workers.
            retired: names of workers to stop (possibly empty).

        Returns:
            The updated record; its ``workers`` list the workers that now exist or are starting.

        Raises:
            ProvisionError: if new workers could not be started (those partly started are
            stopped first).
        """

    @hookspec(firstresult=True)
    def describe(self, name: str, options: BaseModel) -> ClusterRecord | None:
        """Rebuild the record of cluster ``name`` from the backend's own world.

        Called before provisioning (to attach to a live cluster of that name), by the
        command-line tool, and whenever the core needs fresh state. Must not depend on any
        file written by the creating client process.

        Returns:
            The record (its ``state`` telling whether it is still live), or ``None`` if the
            backend knows no cluster of that name.
        """

    @hookspec(firstresult=True)
    def teardown(self, record: ClusterRecord) -> ClusterRecord:
        """Stop every process and delete every resource of the cluster.

        Called by ``Cluster.close()`` when the cluster should shut down, by ``shutdown()``, and
        after a failed start. Must be idempotent: tearing down a cluster that is already gone
        succeeds.

        Returns:
            The final record, with ``state`` ``stopped``. Return only once nothing is left.
        """

    @hookspec(firstresult=True)
    def dashboard_url(self, record: ClusterRecord) -> str | None:
        """Return the URL at which the user's browser reaches the Dask dashboard.

        Called for ``Cluster.dashboard_link``. The URL must answer HTTP 200 while the cluster
        runs (for the local backend, ``http://127.0.0.1:PORT/status``).

        Returns:
            The URL, or ``None`` if the cluster has no dashboard.
        """

    @hookspec(firstresult=True)
    def list_clusters(self, options: BaseModel) -> list[ClusterRecord]:
        """Return a record for every cluster this backend knows of, live or recently stopped.

        Called by ``coiled.list_clusters()`` and ``coiled cluster list``. Must not import or
        contact anything for clusters of other backends.

        Returns:
            A list with one record per cluster (empty if there are none).
        """

    @hookspec(firstresult=True)
    def gc(self, options: BaseModel) -> list[str]:
        """Delete what dead clusters left behind: processes, machines, claims, state, secrets.

        Called by ``coiled cluster gc``. Must never touch a live cluster: only what belongs to a
        cluster whose scheduler has ended, or to a claim whose holder died.

        Returns:
            One line per thing deleted, for the user (empty if there was nothing to delete).
        """

    @hookspec(firstresult=True)
    def logs(self, record: ClusterRecord, tail: int | None) -> dict[str, str]:
        """Return the cluster's logs, keyed by process (``"scheduler"``, a worker name, ...).

        Called by ``Cluster.get_logs()`` and ``coiled cluster logs``; must work after the
        cluster has stopped for as long as the backend keeps logs.

        Parameters:
            tail: if given, only the last ``tail`` lines of each log.

        Returns:
            A mapping from process name to its log text.
        """
