"""The backend hook contract, version 2.

A backend is a module registered under the entry-point group ``coiled_core.backends`` (any form
``EntryPoint.load()`` accepts: ``package.module`` or ``package.module:object``) whose functions
are decorated with ``hookimpl`` and named after the hooks below. Everything a backend may use from
the core is exported by :mod:`coiled_core.backend`; the guide ``docs/writing-a-backend.md`` walks
from an empty directory to a backend that passes the contract suite
(:mod:`coiled_core.testing`).

The module must set ``HOOK_API_VERSION = 2`` (:data:`HOOK_API_VERSION`); a backend that declares
no version or another one is refused when it loads, with a message saying which version it needs.
It must implement every hook of :data:`REQUIRED_HOOKS`; the others have defaults. A backend
missing a required hook is refused when it loads, naming the missing hooks.

Each ``coiled.Cluster`` gets its own plugin manager holding exactly one backend, so every hook is
``firstresult``: the backend's answer is the answer. Extensions (entry-point group
``coiled_core.extensions``) may wrap any hook with ``@hookimpl(wrapper=True)``.

Hooks are plain synchronous functions of their arguments; the asynchronous ``Cluster`` calls them
in a worker thread, so a hook may block. An implementation may take fewer arguments than the spec
names (pluggy passes only those it asks for). Everything a hook needs about a cluster is in the
:class:`~coiled_core.records.ClusterRecord` that ``provision`` returned or ``describe`` rebuilt,
and in the validated ``options`` the core passes, which is what makes reattaching by name from
another process work.

**The order of calls when a cluster is created** (``coiled.Cluster(...)``)::

    keyword_options()                  today's Coiled keywords (region, ...) -> backend_options
    backend_options_model()            validate backend_options (unknown keys refused)
    tls_policy(options)                TLS default and whether security=False is allowed
    preflight(spec, options)           everything that can be wrong, before anything exists
    describe(name, options)            a live cluster of this name? then attach to it
    claim_name(name, options)          atomic; False: someone else creates it, wait and attach
    provision(spec, options, tls)      create; returns once the scheduler was started
    (the core waits for the scheduler to answer, calling describe about once a second to
    notice a cluster that has failed)
    cluster_started(record, options)   the scheduler answers; nothing of the user's ran yet
    (the core waits for wait_for_workers workers; all within spec.timeout)
    teardown(record, options)          on any failure above, then the error is raised

**TLS.** Unless the user says otherwise (``security=``) or the backend's :meth:`tls_policy` turns
it off, every cluster uses TLS with a certificate authority of its own. The core makes the
material before ``provision`` and hands it over as ``tls`` (a :class:`~coiled_core.security.ClusterTLS`,
or None without TLS): ``tls.to_node_config("scheduler")`` / ``("worker")`` is what a node of that
role needs (put it in the node config's ``tls`` or deliver it through a secret store the node
reads, see :mod:`coiled_core.node.addons`). The record's ``scheduler_address`` must then be
``tls://...`` (and ``tcp://...`` without TLS); the core checks this at once. After ``provision``
returns, the core keeps only the client's part: ``scale`` gets that, for calling the cluster's
scheduler, and nodes started later must get their keys from where the backend kept them. The
core deletes its copy whenever the cluster ends (teardown, or ``gc`` after the cluster ended by
itself).

**Failed starts.** ``provision`` must respect ``spec.timeout`` itself (a blocking wait inside it
must not outlast it) and, on failure, delete what it made and raise ``ProvisionError`` naming the
step that failed and showing the failing process's log tail. After ``provision`` returned, the core
notices failures through ``describe``: a record whose state is no longer live, or with fewer
``workers`` than waited for, ends the start with the log tail from ``logs``. So ``describe`` must
drop a worker that has ended (a dead process, a terminated machine) from ``record.workers``.

**Records.** ``record.backend`` is the backend's entry-point name (no hook is told it: keep it
as a constant). A live record without a ``scheduler_address`` is a cluster still being created:
another process asking for that name waits until the address appears, then attaches.

**Timeouts.** The core bounds the whole start by ``spec.timeout`` and reports a timeout itself
(naming the step); it waits for a running ``provision`` to return before tearing down, so
``provision`` must not block past the timeout, and whatever it raises then is not what the user
sees.

**Name claims.** A claim is atomic (an exclusive create: a file or directory, a cloud object or
parameter created only if absent, a Kubernetes object). A claim is stale, and may be taken over,
only when no live cluster holds the name and either the claim's cluster has ended or the claim's
holder died before it became a cluster. Where the backend cannot see the holder's process
(any cloud backend), the claim carries an expiry instead: a :class:`~coiled_core.claims.ClaimLease`
written with the claim, stale once expired while no live cluster holds the name, or once marked
provisioned and the cluster has ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pydantic import BaseModel

    from coiled_core.records import ClusterRecord, TLSPolicy
    from coiled_core.security import ClusterTLS
    from coiled_core.spec import ClusterSpec

#: Version of the hook contract. Bumped when a hook's signature or meaning changes.
HOOK_API_VERSION = 2

PROJECT_NAME = "coiled_core"

#: Hooks a backend must implement; the others (``keyword_options``, ``tls_policy``,
#: ``preflight``, ``cluster_started``, ``dashboard_url``, ``build_environment``) have defaults.
REQUIRED_HOOKS = (
    "backend_options_model",
    "claim_name",
    "provision",
    "scale",
    "describe",
    "teardown",
    "list_clusters",
    "gc",
    "logs",
)

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


class BackendSpec:
    """Hooks every backend implements."""

    @hookspec(firstresult=True)
    def backend_options_model(self) -> type[BaseModel]:
        """Return the pydantic model that validates this backend's ``backend_options``.

        Called once per cluster before anything is created, and whenever the core reads options
        back from a record. The core rejects unknown keys itself (suggesting the closest field
        name) and then validates with the model.

        Parameters:
            None.

        Returns:
            A pydantic ``BaseModel`` subclass whose fields all have defaults, so that
            ``backend_options={}`` is valid; the validated instance is the ``options`` every
            other hook receives.

        Raises:
            Nothing: validation errors come from the model and become ``ClusterSpecError``.

        Example::

            class MyOptions(BaseModel):
                model_config = ConfigDict(extra="forbid")
                region: str = "test-1"

            @hookimpl
            def backend_options_model():
                return MyOptions
        """

    @hookspec(firstresult=True)
    def keyword_options(self) -> dict[str, str]:
        """Say which of today's generic Coiled keywords this backend understands, and where they go.

        Called when a cluster is created, before ``backend_options`` are validated. Optional:
        without it the backend understands none. The generic keywords are those of
        :data:`coiled_core.keywords.GENERIC_KEYWORDS` (``region``, ``worker_vm_types``,
        ``scheduler_vm_types``, ``spot_policy``, ``tags``, ``arm``, ``worker_disk_size``,
        ``scheduler_disk_size``, ``allow_ssh``, ``allow_ingress_from``, ``use_best_zone``,
        ``scheduler_gpu``, ``worker_gpu_type``). The core copies each given keyword's value
        (already checked and normalised: vm types as a list, disk sizes in GiB, tags as strings)
        into the named options field, so the options model validates it; an error there is
        reported under the keyword the user wrote, so write messages for users
        (``'us-central1' is not an AWS region``). The same value given both as a keyword and in
        ``backend_options`` is fine; different values are an error naming both. A given keyword
        this backend does not map is accepted with one warning naming it.

        Parameters:
            None.

        Returns:
            A mapping from generic keyword to the name of a field of the options model.

        Raises:
            Nothing.

        Example::

            @hookimpl
            def keyword_options():
                return {"region": "region", "worker_vm_types": "instance_types", "tags": "tags"}
        """

    @hookspec(firstresult=True)
    def tls_policy(self, options: BaseModel) -> TLSPolicy:
        """Say whether clusters with these options use TLS by default, and whether they must.

        Called before anything is created, after ``options`` were validated. Optional: without
        it, TLS is on by default and ``security=False`` is allowed.

        Parameters:
            options: the validated ``backend_options``.

        Returns:
            A :class:`~coiled_core.records.TLSPolicy`: ``default`` is used when the user leaves
            ``security`` unset; ``required`` makes ``security=False`` a ``ClusterSpecError``
            before anything is created. Require it when the cluster would be reachable from
            other machines, where a Dask scheduler without TLS runs code for anyone.

        Raises:
            Nothing.

        Example::

            @hookimpl
            def tls_policy(options):
                on_loopback = options.host in ("127.0.0.1", "localhost")
                return TLSPolicy(default=not on_loopback, required=not on_loopback)
        """

    @hookspec(firstresult=True)
    def preflight(self, spec: ClusterSpec, options: BaseModel) -> None:
        """Check that this backend can make the requested cluster, before anything exists.

        Called first when a cluster is created, after ``spec`` and ``options`` were validated
        and before ``describe``, ``claim_name`` or any resource. Optional. Check here what only
        the backend can know: credentials, that a region or machine type exists, that the
        request fits a quota. Must not create anything.

        Parameters:
            spec: the validated request.
            options: the validated ``backend_options``.

        Returns:
            None.

        Raises:
            ClusterSpecError: naming the parameter the user wrote and what would be valid.

        Example::

            @hookimpl
            def preflight(spec, options):
                if spec.worker_gpu and not gpus_available(options):
                    raise ClusterSpecError("worker_gpu: this backend has no GPUs")
        """

    @hookspec(firstresult=True)
    def claim_name(self, name: str, options: BaseModel) -> bool:
        """Atomically claim ``name`` for a cluster this caller is about to provision.

        Called after ``describe`` found no live cluster of that name and before ``provision``.
        Two processes creating one name at once must not both win: use the backend's own atomic
        primitive (see "Name claims" above). A stale claim may be taken over, so a crashed
        creator never blocks a name for ever. ``teardown`` releases the claim.

        Parameters:
            name: the cluster's name.
            options: the validated ``backend_options``.

        Returns:
            True if this caller now holds the name and must provision it; False if another
            process holds it (the caller then waits for ``describe`` to show that cluster live
            and attaches to it).

        Raises:
            Nothing for a held name (that is False); a backend error for anything else.

        Example::

            @hookimpl
            def claim_name(name, options):
                try:
                    os.mkdir(claims_dir(options) / name)  # atomic
                    return True
                except FileExistsError:
                    return False
        """

    @hookspec(firstresult=True)
    def provision(self, spec: ClusterSpec, options: BaseModel, tls: ClusterTLS | None) -> ClusterRecord:
        """Create the cluster: a scheduler and ``spec.n_workers`` workers.

        Called after ``preflight``, and after this caller won ``claim_name``. Every scheduler and
        worker must be run by the node agent (``python -m coiled_core.node node.json``, with a
        config from ``build_node_config``), which enforces the cluster's timeouts on the cluster
        itself.

        Parameters:
            spec: the validated request; ``spec.security`` is decided (True or False).
            options: the validated ``backend_options``.
            tls: the cluster's TLS material when ``spec.security`` (hand each node its role's
                part), else None.

        Returns:
            A record with ``state`` ``starting`` or ``running``, a ``scheduler_address`` the
            client can reach (``tls://`` with TLS, ``tcp://`` without), ``dashboard_url`` if
            known, ``spec`` (``spec.model_dump(mode="json")``) and one ``WorkerRecord`` per
            worker started. Return once the scheduler was started (or, on a cloud, its machine
            launched); the core waits for it to answer and for the workers, within
            ``spec.timeout``.

        Raises:
            ProvisionError: after deleting everything this call created, naming the step that
                failed and showing the tail of the failing process's log.
            ClusterSpecError: if the request cannot be met by this backend (before creating
                anything; better still, in ``preflight``).

        Example::

            @hookimpl
            def provision(spec, options, tls):
                config = build_node_config(spec, "combined")
                config.tls = tls_for_node(tls, "combined")
                return start_agent(spec, config)
        """

    @hookspec(firstresult=True)
    def scale(
        self, record: ClusterRecord, options: BaseModel, n_workers: int, retired: list[str], tls: ClusterTLS | None
    ) -> ClusterRecord:
        """Bring the cluster to ``n_workers`` workers.

        Called by ``Cluster.scale``, ``Cluster.scale_down`` and adaptive scaling, from the process
        that created the cluster or one that attached to it by name. Before a scale down, the
        core has already retired the workers named in ``retired`` through the scheduler (their
        data moved elsewhere); the backend must stop exactly those. When adding, the backend
        starts ``n_workers - (existing - retired)`` new workers with names not used before in
        this cluster.

        Parameters:
            record: the cluster as last described.
            options: the validated ``backend_options`` of the caller.
            n_workers: the target number of workers.
            retired: names of workers to stop (possibly empty).
            tls: the client's TLS material (``tls.client_connection_args()`` talks to the
                cluster's scheduler), or None without TLS. It holds no node keys.

        Returns:
            The updated record; its ``workers`` list the workers that now exist or are starting.

        Raises:
            ProvisionError: if new workers could not be started (those partly started are
                stopped first).

        Example::

            @hookimpl
            def scale(record, options, n_workers, retired, tls):
                stop_workers(record, retired)
                start_workers(record, n_workers - (len(record.workers) - len(retired)))
                return describe(record.name, options)
        """

    @hookspec(firstresult=True)
    def describe(self, name: str, options: BaseModel) -> ClusterRecord | None:
        """Rebuild the record of cluster ``name`` from the backend's own world.

        Called before provisioning (to attach to a live cluster of that name), while a start is
        waited for (about once a second), by the command-line tool, and whenever the core needs
        fresh state. Must not depend on any file written by the creating client process.

        Parameters:
            name: the cluster's name.
            options: the validated ``backend_options``.

        Returns:
            The record, or ``None`` if the backend knows no cluster of that name. Its ``state``
            tells whether it is still live; ``workers`` lists only workers that are starting or
            running (an ended one is dropped, which is how a failed worker is noticed); ``spec``
            is the spec the cluster was made from (``record.spec``), which a live record must
            carry (the core checks: attaching and scaling from another process read it).

        Raises:
            A backend error if the backend cannot be asked (credentials, network).

        Example::

            @hookimpl
            def describe(name, options):
                found = my_api.find(label=name)
                return to_record(found) if found else None
        """

    @hookspec(firstresult=True)
    def teardown(self, record: ClusterRecord, options: BaseModel) -> ClusterRecord:
        """Stop every process and delete every resource of the cluster, and release its claim.

        Called by ``Cluster.close()`` when the cluster should shut down, by ``shutdown()``,
        ``coiled.delete_cluster``, ``coiled cluster stop``, and after a failed start (then
        ``record`` may be a bare record with only ``name``, ``backend`` and ``spec``). Must be
        idempotent: tearing down a cluster that is already gone succeeds.

        Parameters:
            record: the cluster as last described.
            options: the validated ``backend_options`` of the caller.

        Returns:
            The final record, with ``state`` ``stopped``. Return only once nothing is left.

        Raises:
            ProvisionError: if something could not be deleted (name it).

        Example::

            @hookimpl
            def teardown(record, options):
                my_api.delete_all(label=record.name)
                return record.model_copy(update={"state": ClusterState.stopped, "workers": []})
        """

    @hookspec(firstresult=True)
    def cluster_started(self, record: ClusterRecord, options: BaseModel) -> None:
        """Record what the cluster's own nodes made while nothing of the user's has run yet.

        Called once, by the client that provisioned the cluster, as soon as its scheduler
        answers and before the cluster is handed to the user (a client that attaches to an
        existing cluster does not call it). Optional. A VM backend on the core's boot script
        pins the environment packs its nodes built (see
        :func:`coiled_core.node.envpack.record_cluster_packs`): later clusters' nodes fetch a
        pack only if its sha256 is pinned, and only a client may write pins.

        Parameters:
            record: the cluster as ``provision`` returned it.
            options: the validated ``backend_options``.

        Returns:
            Nothing.

        Raises:
            Nothing for what cannot be recorded (log a warning: the next cluster builds again).

        Example::

            @hookimpl
            def cluster_started(record, options):
                software = boot_software_of(record)  # with the build_id its nodes were given
                record_cluster_packs(software, my_node_store(options), ["x86_64"])
        """

    @hookspec(firstresult=True)
    def dashboard_url(self, record: ClusterRecord, options: BaseModel) -> str | None:
        """Return the URL at which the user's browser reaches the Dask dashboard.

        Called for ``Cluster.dashboard_link``. Optional: without it, ``record.dashboard_url``.
        The URL must answer HTTP 200 while the cluster runs (HTTPS with TLS: the node agent
        serves the dashboard with the scheduler's certificate).

        Parameters:
            record: the cluster as last described.
            options: the validated ``backend_options``.

        Returns:
            The URL, or ``None`` if the cluster has no dashboard.

        Raises:
            Nothing.

        Example::

            @hookimpl
            def dashboard_url(record, options):
                return record.dashboard_url.replace(internal_host, options.proxy)
        """

    @hookspec(firstresult=True)
    def list_clusters(self, options: BaseModel) -> list[ClusterRecord]:
        """Return a record for every cluster this backend knows of, live or recently stopped.

        Called by ``coiled.list_clusters()`` and ``coiled cluster list``. Must not import or
        contact anything for clusters of other backends.

        Parameters:
            options: the validated ``backend_options``.

        Returns:
            A list with one record per cluster (empty if there are none).

        Raises:
            A backend error if the backend cannot be asked.

        Example::

            @hookimpl
            def list_clusters(options):
                return [describe(name, options) for name in my_api.cluster_names()]
        """

    @hookspec(firstresult=True)
    def gc(self, options: BaseModel) -> list[str]:
        """Delete what ended clusters left behind: processes, machines, claims, state, secrets.

        Called by ``coiled cluster gc`` and ``coiled.gc()``. What gc may delete:

        - everything of a cluster whose scheduler has ended;
        - a cluster past its lifetime cap (``spec.cluster_timeout``) by more than
          :data:`~coiled_core.records.EXPIRY_GRACE` seconds: its node failed to end it (a frozen
          machine), and the user's cap is a promise (see
          :func:`~coiled_core.records.past_lifetime`);
        - a stale claim (see "Name claims").

        It never touches a live cluster within its lifetime, nor one being created (a live
        claim), nor anything the backend cannot prove it made.

        Parameters:
            options: the validated ``backend_options``.

        Returns:
            One line per thing deleted, for the user (empty if there was nothing to delete).

        Raises:
            A backend error if the backend cannot be asked.

        Example::

            @hookimpl
            def gc(options):
                ended = [r for r in list_clusters(options) if not r.state.is_live or past_lifetime(r)]
                return [line for r in ended for line in delete_everything(r)]
        """

    @hookspec(firstresult=True)
    def build_environment(self, software: Any, options: BaseModel) -> str:
        """Build a software environment ahead of any cluster, where this backend's nodes get it.

        Called by ``coiled env build NAME --backend B`` and ``coiled.build_software_environment``.
        Optional: a backend without it builds environments when a cluster first needs them, and
        the user is told so. A VM backend on the core's boot script builds the pack its nodes
        would fetch (see :func:`coiled_core.node.envpack.build_environment_pack`).

        Parameters:
            software: the ``SoftwareEnvironment`` to build (as stored).
            options: the validated ``backend_options``.

        Returns:
            One line for the user: what was built and where it is (or that it was there already).

        Raises:
            ClusterSpecError: the environment cannot be built by this backend (say why, naming
                the parameter). ProvisionError: the build failed, with the build's own message.

        Example::

            @hookimpl
            def build_environment(software, options):
                store = my_node_store(options)
                return build_environment_pack(boot_software(software, node_requirements("my-sdk")), store)
        """

    @hookspec(firstresult=True)
    def logs(self, record: ClusterRecord, options: BaseModel, tail: int | None) -> dict[str, str]:
        """Return the cluster's logs, keyed by process (``"scheduler"``, a worker name, ...).

        Called by ``Cluster.get_logs()``, ``coiled cluster logs`` and, for its tail, a failed
        start; must work after the cluster has stopped for as long as the backend keeps logs.

        Parameters:
            record: the cluster as last described.
            options: the validated ``backend_options``.
            tail: if given, only the last ``tail`` lines of each log.

        Returns:
            A mapping from process (or node) name to its log text.

        Raises:
            Nothing for missing logs (return what there is).

        Example::

            @hookimpl
            def logs(record, options, tail):
                return {"node": read_log(record, tail)}
        """
