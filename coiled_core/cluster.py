"""``coiled.Cluster``: a Dask cluster on any installed backend, with distributed's Cluster API."""

from __future__ import annotations

import asyncio
import atexit
import datetime
import html
import logging
import math
import time
import warnings
import weakref
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from distributed.core import Status, rpc
from distributed.deploy.cluster import Cluster as DistributedCluster
from distributed.objects import SchedulerInfo
from distributed.security import Security
from distributed.utils import Log
from tornado.ioloop import IOLoop, PeriodicCallback

from coiled_core import config
from coiled_core.errors import ClusterSpecError, CoiledError, ProvisionError
from coiled_core.keywords import PACKAGE_SYNC_VARIANTS
from coiled_core.progress import StartProgress
from coiled_core.security import ClusterTLS
from coiled_core.states import ClusterState
from coiled_core.store import Store

if TYPE_CHECKING:
    from coiled_core.plugins import Backend
    from coiled_core.records import ClusterRecord
    from coiled_core.spec import ClusterSpec

# pydantic and the plugin machinery load with the first Cluster, not with `import coiled`.

logger = logging.getLogger("coiled")
if not logger.handlers and not logging.getLogger().handlers:
    # Like distributed's loggers: progress lines reach stderr without any logging set-up.
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)

#: Clusters this process created and must not leave running when it exits normally.
_live_clusters: weakref.WeakSet[Cluster] = weakref.WeakSet()


def teardown_cluster(backend: Backend, record: ClusterRecord, options: Any) -> ClusterRecord:
    """Tear a cluster down and delete what the core keeps for it (its TLS material)."""
    from coiled_core.api import teardown_cluster as teardown

    return teardown(backend, record, options)


def _check_call(name: Any, more: dict[str, Any]) -> None:
    """Refuse, as a ClusterSpecError naming it, what Python itself would refuse with a bare
    TypeError: a keyword ``coiled.Cluster`` does not know, or a number where the name goes."""
    import difflib
    import inspect

    from coiled_core.keywords import PACKAGE_SYNC_VARIANTS

    if name is not None and not isinstance(name, str):
        hint = f"; to ask for {name} workers, use n_workers={name}" if isinstance(name, int) and not isinstance(name, bool) else ""
        raise ClusterSpecError(
            f"name: the first positional argument of coiled.Cluster is the cluster's name, a string, "
            f"not {name!r}{hint}"
        )
    unknown = sorted(set(more) - set(PACKAGE_SYNC_VARIANTS))
    if unknown:
        valid = [p for p in inspect.signature(Cluster.__init__).parameters if p not in ("self", "more")]
        valid += list(PACKAGE_SYNC_VARIANTS)
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ClusterSpecError(f"{unknown[0]!r} is not a coiled.Cluster parameter{hint}")


#: ``coiled.Cluster`` arguments that are not spec keywords.
_NOT_SPEC = ("asynchronous", "wait_for_workers", "show_widget", "loop")


def _validate_call(arguments: dict[str, Any]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """Everything ``coiled.Cluster(...)`` checks before any resource exists.

    ``arguments`` are the call's arguments by name (``more`` holds the extra keywords). Returns
    the spec (with the backend's options in it), the loaded backend, its validated options, its
    TLS policy and the spec keywords as given. Raises :class:`ClusterSpecError` (or another
    ``CoiledError``) naming what is wrong.
    """
    arguments = dict(arguments)
    more = arguments.pop("more", None) or {}
    _check_call(arguments.get("name"), more)
    security = arguments.get("security")
    keywords = {key: value for key, value in arguments.items() if key not in _NOT_SPEC}
    # A distributed.Security of the user's own is used as is; the spec records "TLS on".
    keywords["security"] = True if isinstance(security, Security) else security
    keywords.update({key: more[key] for key in PACKAGE_SYNC_VARIANTS if key in more})

    configuration_name = keywords["configuration"] if keywords.get("configuration") is not None else config.get("configuration")
    owner = keywords.get("workspace") or keywords.get("account")
    if configuration_name is not None and owner and "/" not in configuration_name:
        configuration_name = f"{owner}/{configuration_name}"  # the workspace of a bare name
    values = {}
    if configuration_name is not None:
        from coiled_core.configurations import configuration_values

        values = configuration_values(configuration_name)
    from coiled_core.plugins import load_backend
    from coiled_core.spec import resolve_cluster_spec

    spec = resolve_cluster_spec(keywords, configuration_values=values)
    if spec.software is not None:
        from coiled_core.software import get_software_info

        get_software_info(spec.software)  # an unknown name fails here, with close matches
    backend = load_backend(spec.backend)
    options = backend.validate_spec_options(spec)
    tls_policy = backend.tls_policy(options)
    if spec.security is False and tls_policy.required:
        raise ClusterSpecError(
            f"security: False is refused by backend {spec.backend!r} with these backend_options: "
            "the cluster would be reachable from other machines without TLS, so anyone there could "
            "run code on it; leave security unset (TLS is then on) or bind to a loopback address"
        )
    if spec.security is False and tls_policy.public_reach:
        _warn_insecure_public(spec, tls_policy.public_reach)
    spec = spec.model_copy(update={"backend_options": options.model_dump(mode="json")})
    # What only the backend can check, before any claim or resource.
    backend.preflight(spec, options)
    _resolve_wait_for_workers(arguments.get("wait_for_workers"), spec.n_workers)
    return spec, backend, options, tls_policy, keywords


def _warn_insecure_public(spec: Any, reach: str) -> None:
    """``security=False`` on public addresses: anyone who reaches the scheduler runs code on it."""
    message = (
        f"security=False: cluster {spec.name!r} runs WITHOUT TLS or authentication on public addresses "
        f"(backend {spec.backend!r}). Its scheduler and dashboard accept anyone connecting from {reach}: whoever "
        "can reach them can run any code on every node, with the nodes' cloud identity, and read all data in "
        "the cluster; traffic is unencrypted. Use security=True (the default), or private addresses (the "
        "backend's options)."
    )
    logger.warning(message)
    warnings.warn(message, UserWarning, stacklevel=4)


def check_cluster(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """Check a ``coiled.Cluster(...)`` call without creating anything.

    Takes exactly what ``coiled.Cluster`` takes and checks it the same way, backend included (its
    options, and its ``preflight`` check, which may ask the cloud whether a region or machine
    type exists). Returns the resolved ``ClusterSpec`` and the backend's validated options.
    Raises :class:`~coiled_core.errors.ClusterSpecError` (or another ``CoiledError``) naming the
    parameter that is wrong.

    Example::

        spec, options = coiled.check_cluster(n_workers=10, region="us-east-2", backend="aws")
    """
    import inspect

    try:
        bound = inspect.signature(Cluster.__init__).bind(None, *args, **kwargs)
    except TypeError as e:
        raise ClusterSpecError(f"coiled.Cluster takes the name positionally and everything else by keyword: {e}") from None
    bound.apply_defaults()
    arguments = {key: value for key, value in bound.arguments.items() if key != "self"}
    spec, _, options, _, _ = _validate_call(arguments)
    return spec, options


def _resolve_wait_for_workers(value: Any, n_workers: int) -> int:
    """Coiled's ``wait_for_workers``: True (all), False (none), a count, or a fraction."""
    if value is None:
        value = config.get("wait-for-workers", 0.3)
    if isinstance(value, bool):
        return n_workers if value else 0
    if isinstance(value, int) and value >= 0:
        return min(value, n_workers)
    if isinstance(value, float) and 0.0 <= value <= 1.0:
        return math.ceil(value * n_workers)
    raise ClusterSpecError(
        f"wait_for_workers: {value!r} is not valid; give True, False, a number of workers or a "
        "fraction between 0 and 1 (e.g. 0.3)"
    )


class Cluster(DistributedCluster):
    """A Dask cluster on a backend chosen with ``backend=`` (the local machine by default).

    Every keyword defaults to ``None``, meaning "not given": it is resolved through the named
    ``configuration``, then dask config (``coiled.*`` keys), then the built-in defaults. Input is
    validated before anything starts.

    Parameters
    ----------
    name:
        Cluster name; a unique one is generated if not given.
    n_workers:
        Number of workers (default 4), or ``[minimum, maximum]`` for adaptive scaling.
    worker_cpu, worker_gpu, worker_memory:
        Resources of each worker (defaults 4, 0, ``"16 GiB"``).
    scheduler_cpu, scheduler_memory:
        Resources of the scheduler (defaults 1, ``"8 GiB"``).
    software:
        Software environment name (``account/name``); default the client's own environment.
    worker_class, worker_options, scheduler_class, scheduler_options:
        Classes that run the workers and scheduler, and keyword arguments for them.
    idle_timeout:
        Shortcut for ``scheduler_options={"idle_timeout": ...}`` (default 20 minutes).
    environ:
        Environment variables set on the scheduler and every worker.
    shutdown_on_close:
        Whether ``close()`` shuts the cluster down; default True when this call created it.
    backend, backend_options:
        The backend plugin (default ``"local"``) and its options.
    configuration:
        A named cluster configuration to take unspecified parameters from.
    asynchronous:
        Set True when used with ``await`` / ``async with``.
    timeout:
        Upper bound on starting the cluster (default 20 minutes).
    wait_for_workers:
        Return once this many workers joined: True, False, a count or a fraction of
        ``n_workers`` (default 0.3).
    no_client_timeout:
        The cluster shuts itself down after this long with no client; a live ``Cluster``
        object counts as one (default 2 minutes while ``shutdown_on_close`` is true, else off).
    cluster_timeout:
        Hard cap on the cluster's lifetime (default none).
    security:
        TLS between client, scheduler and workers with per-cluster certificates: True, False, or
        a ``distributed.Security`` of your own (as ``LocalCluster`` accepts). Default: the
        backend's choice (on for cloud backends, off for ``local``, which binds to loopback).
    show_widget:
        Show start-up progress (a live display in a terminal or notebook, log lines otherwise).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        n_workers: int | list[int] | tuple[int, int] | None = None,
        worker_cpu: int | None = None,
        worker_gpu: int | None = None,
        worker_memory: str | int | None = None,
        scheduler_cpu: int | None = None,
        scheduler_memory: str | int | None = None,
        software: str | None = None,
        worker_class: str | None = None,
        worker_options: dict[str, Any] | None = None,
        scheduler_class: str | None = None,
        scheduler_options: dict[str, Any] | None = None,
        idle_timeout: str | float | None = None,
        environ: dict[str, str] | None = None,
        shutdown_on_close: bool | None = None,
        backend: str | None = None,
        backend_options: dict[str, Any] | None = None,
        configuration: str | None = None,
        asynchronous: bool = False,
        timeout: str | float | None = None,
        wait_for_workers: bool | int | float | None = None,
        no_client_timeout: str | float | bool | None = None,
        cluster_timeout: str | float | None = None,
        security: bool | Security | None = None,
        show_widget: bool = True,
        loop: IOLoop | None = None,
        region: str | None = None,
        worker_vm_types: str | list[str] | None = None,
        scheduler_vm_types: str | list[str] | None = None,
        spot_policy: str | None = None,
        compute_purchase_option: str | None = None,
        tags: dict[str, str] | None = None,
        arm: bool | None = None,
        worker_disk_size: int | str | None = None,
        scheduler_disk_size: int | str | None = None,
        container: str | None = None,
        package_sync: bool | list[str] | None = None,
        allow_ssh: bool | None = None,
        allow_ingress_from: str | None = None,
        use_best_zone: bool | None = None,
        scheduler_gpu: bool | None = None,
        worker_gpu_type: str | None = None,
        workspace: str | None = None,
        account: str | None = None,
        **more: Any,
    ):
        # Everything is validated before any resource exists.
        arguments = {key: value for key, value in locals().items() if key != "self" and not key.startswith("__")}
        spec, self.backend, self.backend_options, self._tls_policy, keywords = _validate_call(arguments)
        self.spec: ClusterSpec = spec
        self._wait_for_workers_count = _resolve_wait_for_workers(wait_for_workers, spec.n_workers)
        #: Keywords the caller gave explicitly (attaching warns if they differ from the cluster's).
        self._explicit = {key for key, value in keywords.items() if value is not None}
        self._user_security = security if isinstance(security, Security) else None
        #: Client credentials when the cluster uses TLS (``Client(cluster)`` reads this).
        self.security: Security | None = None
        self._progress = StartProgress(spec.name, spec.backend, spec.n_workers, show=show_widget)

        self.record: ClusterRecord | None = None
        #: Every worker the backend has reported, so that one that ends while starting is noticed.
        self._workers_seen: dict[str, Any] = {}
        #: The client's part of the cluster's TLS material (for the scale hook), if TLS is on.
        self._client_tls: ClusterTLS | None = None
        #: Whether this object created the cluster (False: it attached to an existing one).
        self.created: bool = False
        self.workers: dict[str, Any] = {}

        if loop is None and asynchronous:
            loop = IOLoop.current()
        super().__init__(asynchronous=asynchronous, loop=loop, name=spec.name)

        if not self.called_from_running_loop:
            self._loop_runner.start()
            try:
                self.sync(self._start)
            except BaseException:
                self._loop_runner.stop()
                raise

    # -- starting --------------------------------------------------------------------------
    def __await__(self):
        async def _():
            if self.status == Status.created:
                await self._start()
            return self

        return _().__await__()

    async def _start(self) -> None:
        if self.status != Status.created:
            return
        self.status = Status.starting
        self._log_tail = ""
        self._progress.start()
        self._set_phase("checking for an existing cluster")
        try:
            await self._run_with_deadline(self._start_and_wait(), self.spec.timeout)
        except BaseException as error:
            self._progress.stop(success=False, error=error)
            await self._clean_up_failed_start()
            if isinstance(error, asyncio.TimeoutError):
                raise ProvisionError(
                    f"cluster {self.name!r} did not start within timeout={self.spec.timeout:g}s "
                    f"(step: {self._phase}); everything it created was shut down{self._log_tail}"
                ) from None
            if isinstance(error, CoiledError) or not isinstance(error, Exception):
                raise
            raise ProvisionError(
                f"cluster {self.name!r} failed to start (step: {self._phase}): {type(error).__name__}: "
                f"{error}; everything it created was shut down{self._log_tail}"
            ) from error
        self._progress.workers(len(self.scheduler_info["workers"]))
        self._progress.stop(success=True)
        if self.created:
            _live_clusters.add(self)

    @staticmethod
    async def _run_with_deadline(coroutine, timeout: float) -> None:
        """Like ``asyncio.wait_for``, but never waits more than a few seconds past ``timeout``:
        distributed's comms can swallow a cancellation, and wait_for would then wait for ever."""
        task = asyncio.ensure_future(coroutine)
        done, _ = await asyncio.wait([task], timeout=timeout)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.wait([task], timeout=5)  # let it unwind if it can, but not for ever
        raise asyncio.TimeoutError()

    def _set_phase(self, phase: str) -> None:
        self._phase = phase
        self._progress.phase(phase[0].upper() + phase[1:])

    def _log(self, log: str) -> None:
        """Keep the cluster manager's log (``get_logs()["Cluster"]``); the progress display,
        not print(), is what the user sees."""
        self._cluster_manager_logs.append((datetime.datetime.now(), log))
        logger.debug(log)

    async def _start_and_wait(self) -> None:
        record = await self._create_or_attach()
        self.record = record
        self._update_workers()
        self._set_phase("connecting to the scheduler")
        if record.dashboard_url:
            self._progress.dashboard(self.backend.dashboard_url(record, self.backend_options) or record.dashboard_url)
        self.scheduler_comm = rpc(record.scheduler_address, connection_args=self._connection_args())
        if self.created:
            await self._wait_for_scheduler()
            # Before the user's code can run on the nodes (which may write what they built).
            await asyncio.to_thread(self.backend.cluster_started, record, self.backend_options)
        from coiled_core.node.config import heartbeat_interval

        self.periodic_callbacks["coiled-heartbeat"] = PeriodicCallback(self._heartbeat, heartbeat_interval() * 1000)
        self.periodic_callbacks["coiled-scheduler-info"] = PeriodicCallback(self._refresh_scheduler_info, 1000)
        await self._start_watching()
        await self._heartbeat()
        if self.spec.adaptive is not None and self.created:
            self.adapt(minimum=self.spec.adaptive.minimum, maximum=self.spec.adaptive.maximum)
        if not self.created:
            await self._warn_on_version_mismatch()
        if self.created:
            self._set_phase(f"waiting for {self._wait_for_workers_count} of {self.spec.n_workers} workers")
            await self._wait_for_joined_workers(self._wait_for_workers_count)
            # Having waited for every worker, wait for the node to say so too.
            waited_for_all = self._wait_for_workers_count >= self.spec.n_workers
            await self._refresh_record_once_running(patience=5.0 if waited_for_all else 0.0)
        self._log(f"Cluster {self.name!r} is running; dashboard: {self.dashboard_link}")

    async def _create_or_attach(self) -> ClusterRecord:
        """Attach to a live cluster of this name, or win the name's claim and create it.

        The claim makes creation atomic: of two processes creating one name at once, one
        provisions and the other waits for that cluster and attaches to it.
        """
        while True:
            existing = await asyncio.to_thread(self.backend.describe, self.spec.name, self.backend_options)
            if existing is not None and existing.state.is_live and existing.scheduler_address:
                self._attach(existing)
                return existing
            if existing is None or not existing.state.is_live:
                self._set_phase("claiming the name")
                if await asyncio.to_thread(self.backend.claim_name, self.spec.name, self.backend_options):
                    break
            await asyncio.sleep(0.2)  # another process holds the name and is creating it
        self._log(f"Creating cluster {self.name!r} on backend {self.spec.backend!r}")
        self._set_phase("provisioning")
        self.created = True
        if self.spec.shutdown_on_close is None:
            self.spec = self.spec.model_copy(update={"shutdown_on_close": True})
        material = await asyncio.to_thread(self._prepare_tls)
        # A thread cannot be cancelled: if the start times out, the clean-up must wait for
        # provisioning to finish, or machines it launches afterwards would be left behind.
        self._provisioning = asyncio.ensure_future(
            asyncio.to_thread(self.backend.provision, self.spec, self.backend_options, material)
        )
        record = await asyncio.shield(self._provisioning)
        if self.spec.security:
            # The nodes have theirs now: the store keeps only what a client needs.
            from coiled_core import credentials

            await asyncio.to_thread(credentials.keep_client_only, Store(), self.name, self.spec.backend)
            self._client_tls = await asyncio.to_thread(credentials.load, Store(), self.name, self.spec.backend)
        return record

    def _prepare_tls(self) -> ClusterTLS | None:
        """Make and store this cluster's TLS material when TLS is on, before anything boots.

        The store keeps it, so a client in another process (or, with a shared store, on another
        machine) can reattach; the backend reads it there to hand the nodes their certificates.
        """
        enabled = self.spec.security
        if enabled is None:
            enabled = self._tls_policy.default  # the backend's choice for these options
        self.spec = self.spec.model_copy(update={"security": bool(enabled)})
        if not enabled:
            return None
        if self._user_security is not None:
            material = ClusterTLS.from_security(self._user_security)
        else:
            material = ClusterTLS.generate(self.name)
        from coiled_core import credentials

        credentials.save_for_start(Store(), self.name, material, self.spec.backend, self.spec.backend_options)
        self.security = self._user_security or material.to_security("client")
        return material

    def _connection_args(self) -> dict[str, Any]:
        return self.security.get_connection_args("client") if self.security is not None else {}

    def _attach(self, existing: ClusterRecord) -> None:
        self._log(f"Attaching to existing cluster {self.name!r} ({existing.backend}, {existing.state.value})")
        self._progress.attached()
        requested = self.spec
        if existing.spec:
            from coiled_core.spec import ClusterSpec

            try:
                self.spec = ClusterSpec.model_validate(existing.spec)
            except ValueError:
                logger.debug("cluster %r has a spec this version cannot read", self.name, exc_info=True)
        differing = [
            key
            for key in ("n_workers", "worker_cpu", "worker_memory", "worker_gpu", "worker_class", "scheduler_class")
            if key in self._explicit and getattr(requested, key) != getattr(self.spec, key)
        ]
        if differing:
            details = ", ".join(f"{k}={getattr(requested, k)!r} (cluster has {getattr(self.spec, k)!r})" for k in differing)
            warnings.warn(
                f"attached to the existing cluster {self.name!r}, which differs from this request: {details}; "
                "use cluster.scale() to resize it",
                UserWarning,
                stacklevel=4,
            )
        shutdown = requested.shutdown_on_close
        self.spec = self.spec.model_copy(update={"shutdown_on_close": False if shutdown is None else shutdown})
        if (existing.scheduler_address or "").startswith("tls://"):
            material = ClusterTLS.load(Store(), self.name, self.spec.backend)
            if material is None:
                raise CoiledError(
                    f"cluster {self.name!r} uses TLS, but the store at {Store().url} holds no credentials "
                    "for it; point dask config 'coiled.store' at the store its creator used"
                )
            self.security = self._user_security or material.to_security("client")
            self._client_tls = material

    async def _start_watching(self) -> None:
        """Replaces distributed's ``Cluster._start``, which subscribes to worker-status pushes.

        The scheduler keeps one such subscription, so a second ``Cluster`` object attached to
        the same cluster (another process, reuse by name) would silently take the first one's
        updates away. Polling ``identity`` works for any number of attached objects.
        """
        # distributed's _sync_cluster_info task is not started either: the heartbeat already
        # tells the scheduler this object lives, and closing would have to wait out that task's
        # connection retries (30 s) when the scheduler is already gone.
        await self._refresh_scheduler_info()
        for callback in self.periodic_callbacks.values():
            callback.start()
        self.status = Status.running

    @staticmethod
    async def _bounded(coroutine, timeout: float) -> Any:
        """Await ``coroutine`` for at most ``timeout`` seconds. Unlike ``asyncio.wait_for``, never
        wait for a cancelled call to unwind (distributed's comms may swallow the cancellation)."""
        task = asyncio.ensure_future(coroutine)
        done, _ = await asyncio.wait([task], timeout=timeout)
        if task not in done:
            task.cancel()
            raise asyncio.TimeoutError()
        return task.result()

    async def _refresh_scheduler_info(self, timeout: float = 10) -> None:
        with suppress(Exception):
            self.scheduler_info = SchedulerInfo(await self._bounded(self.scheduler_comm.identity(), timeout))

    async def _warn_on_version_mismatch(self) -> None:
        """Attaching from another environment: name the packages whose versions differ."""
        from coiled_core.software import client_versions, version_mismatches

        try:
            reported = await self._bounded(self.scheduler_comm.versions(), 10)
        except Exception:
            logger.debug("could not read the versions of cluster %r", self.name, exc_info=True)
            return
        cluster = {**reported.get("packages", {}), "python": ".".join(reported["host"]["python"].split(".")[:3])}
        differing = version_mismatches(client_versions(), cluster)
        if differing:
            warnings.warn(
                f"cluster {self.name!r} runs other versions than this client: " + "; ".join(differing),
                UserWarning,
                stacklevel=2,
            )

    async def _heartbeat(self) -> None:
        """Tell the cluster this object is alive: it counts as a client for the no-client timeout."""
        with suppress(Exception):
            await self._bounded(self.scheduler_comm.coiled_heartbeat(), 10)

    async def _check_still_starting(self, workers_needed: int = 0) -> None:
        """Raise, with the log tail, if the backend says the cluster (or too many of its
        workers, each perhaps a machine of its own) has already ended."""
        problem = await self._ended_while_starting(workers_needed)
        if problem:
            # Named like every other failed start: the step, then what the backend saw.
            raise ProvisionError(f"cluster {self.name!r} failed to start (step: {self._phase}): {problem}")

    async def _ended_while_starting(self, workers_needed: int, only_if_ended: bool = False) -> str | None:
        """What went wrong, with the log tails of the workers that ended (of every node when the
        backend names none), if the cluster has ended or fewer than ``workers_needed`` of its
        workers still run; None if all is well. ``only_if_ended``: fewer workers than needed is a
        problem only if one the client knew of has ended (more may still be on their way)."""
        seen = self._workers_seen
        record = await asyncio.to_thread(self.backend.describe, self.name, self.backend_options)
        if record is not None and record.state.is_live:
            live = {w.name for w in record.workers}
            ended = [w for name, w in seen.items() if name not in live]
            seen.update({w.name: w for w in record.workers})
            if len(record.workers) >= workers_needed or (only_if_ended and not ended):
                return None
            names = ", ".join(w.name for w in ended) or "some"
            problem = (
                f"only {len(record.workers)} of the {workers_needed} workers waited for are still "
                f"running; worker(s) {names} ended while starting"
            )
        else:
            ended, problem = [], "the cluster stopped"
        logs = await asyncio.to_thread(self.backend.logs, self.record or record, self.backend_options, 30)
        ids = {str(v) for w in ended for v in (w.name, *w.backend_ids.values())}
        theirs = {k: v for k, v in logs.items() if k in ids or any(w.name.endswith(k) for w in ended)} or logs
        tail = "\n".join(f"--- {key}\n{text}" for key, text in theirs.items())
        return f"{problem}:\n{tail}"

    async def _wait_for_workers(self, n_workers: int = 0, timeout: Any = None) -> None:
        """distributed's (behind ``cluster.wait_for_workers`` and ``Client.wait_for_workers``),
        bounded by the cluster's ``timeout`` when no timeout is given, and ended at once, with
        their log tails, when workers waited for end while starting (a node whose boot failed)."""
        from dask.utils import parse_timedelta
        from distributed.exceptions import WorkerStartTimeoutError

        limit = parse_timedelta(timeout) if timeout else self.spec.timeout
        deadline = time.monotonic() + limit
        next_check = time.monotonic() + 1.0

        def running() -> int:
            return sum(1 for w in self.scheduler_info["workers"].values() if w.get("status") == Status.running.name)

        await self._refresh_scheduler_info(timeout=2)
        while running() < n_workers:
            if time.monotonic() > deadline:
                raise WorkerStartTimeoutError(running(), n_workers, limit)
            if time.monotonic() > next_check:
                problem = await self._ended_while_starting(n_workers, only_if_ended=True)
                if problem:
                    raise ProvisionError(f"cluster {self.name!r}: waiting for {n_workers} workers: {problem}")
                next_check = time.monotonic() + 2.0
            await asyncio.sleep(0.1)
            await self._refresh_scheduler_info(timeout=2)

    async def _wait_for_scheduler(self) -> None:
        """Wait until the scheduler answers (a cloud node may still be booting)."""
        next_check = time.monotonic() + 1.0
        while True:
            try:
                self.scheduler_info = SchedulerInfo(await self._bounded(self.scheduler_comm.identity(), 2))
                await self._heartbeat()  # count as a client from the first moment
                return
            except Exception:
                pass
            if time.monotonic() > next_check:
                await self._check_still_starting()
                next_check = time.monotonic() + 1.0
            await asyncio.sleep(0.1)

    async def _wait_for_joined_workers(self, n: int) -> None:
        """Wait for ``n`` workers, checking the backend so that a failed start is seen quickly."""
        started = time.monotonic()
        next_check = started + 1.0
        while len(self.scheduler_info["workers"]) < n:
            self._progress.workers(len(self.scheduler_info["workers"]))
            # Short: a scheduler that died must not hold up the check on the backend below.
            await self._refresh_scheduler_info(timeout=1)
            if time.monotonic() > next_check:
                await self._check_still_starting(workers_needed=n)
                next_check = time.monotonic() + 1.0
            # Local workers join within a second or two: ask often then, and gently afterwards
            # (each answer lists every worker, which for a large cloud cluster is not small).
            await asyncio.sleep(0.01 if time.monotonic() - started < 3 else 0.1)

    async def _refresh_record_once_running(self, patience: float) -> None:
        """Read the backend's record again, now that the workers waited for have joined.

        The node reports "running" a moment after its workers register with the scheduler
        (its nannies see their workers' first message after the scheduler does): wait up to
        ``patience`` seconds for that, so ``cluster.state`` says running when ``Cluster()`` returns.
        """
        deadline = time.monotonic() + patience
        delay = 0.01  # doubling: for a cloud backend each look is an API call
        while True:
            fresh = await asyncio.to_thread(self.backend.describe, self.name, self.backend_options)
            if fresh is not None:
                self.record = fresh
                self._update_workers()
            if fresh is None or fresh.state is not ClusterState.starting or time.monotonic() > deadline:
                return
            await asyncio.sleep(delay)
            delay = min(2 * delay, 0.5)

    async def _clean_up_failed_start(self) -> None:
        if self._adaptive is not None:
            self._adaptive.stop()
        provisioning = getattr(self, "_provisioning", None)
        if provisioning is not None and not provisioning.done():
            self._log("waiting for provisioning to finish before cleaning up")
            await asyncio.wait([provisioning], timeout=600)
        if provisioning is not None and provisioning.done() and not provisioning.cancelled():
            if provisioning.exception() is None and self.record is None:
                self.record = provisioning.result()
        if self.created:
            # Without a record (provision itself failed) a minimal one still releases the claim.
            from coiled_core.records import ClusterRecord

            record = self.record or ClusterRecord(
                name=self.name, backend=self.spec.backend, spec=self.spec.model_dump(mode="json")
            )
            with suppress(Exception):
                logs = await asyncio.to_thread(self.backend.logs, record, self.backend_options, 20)
                tail = "\n".join(text for text in logs.values() if text.strip())
                self._log_tail = f"\nlast lines of the cluster's log:\n{tail}" if tail else ""
            try:
                self.record = await asyncio.to_thread(teardown_cluster, self.backend, record, self.backend_options)
            except Exception:
                logger.exception("tearing down %r after a failed start also failed", self.name)
        # Release comms and tasks; a failed cluster object is closed, not left half-open.
        try:
            await DistributedCluster._close(self)
        except Exception:
            logger.debug("closing %r after a failed start", self.name, exc_info=True)
        self.status = Status.closed

    def _update_workers(self) -> None:
        assert self.record is not None
        self.workers = {w.name: w for w in self.record.workers}
        self._workers_seen.update(self.workers)

    # -- scaling ---------------------------------------------------------------------------
    def scale(self, n: int) -> Any:
        """Scale the cluster to ``n`` workers (stops adaptive scaling started by ``n_workers=[..]``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ClusterSpecError(f"scale: n must be a number of workers >= 0, not {n!r}")
        return self.sync(self._scale, n)

    async def _scale(self, n: int) -> None:
        current = list(self.workers)
        if n == len(current):
            return
        retired: list[str] = []
        if n < len(current):
            surplus = len(current) - n
            # Workers that have not joined yet hold no data: drop those first.
            joined = {info.get("name") for info in self.scheduler_info["workers"].values()}
            retired = [name for name in current if name not in joined][:surplus]
            if len(retired) < surplus:
                chosen = await self.scheduler_comm.workers_to_close(n=surplus - len(retired), attribute="name")
                retired += [name for name in chosen if name in self.workers]
            await self._retire(retired)
        await self._backend_scale(n, retired)

    def scale_down(self, workers: list[str]) -> Any:
        """Stop the named workers (used by adaptive scaling, which retires them first)."""
        return self.sync(self._scale_down, list(workers))

    async def _scale_down(self, workers: list[str]) -> None:
        names = [w for w in workers if w in self.workers]
        if names:
            await self._backend_scale(len(self.workers) - len(names), names)

    async def _retire(self, names: list[str]) -> None:
        if names:
            await self.scheduler_comm.retire_workers(names=names, remove=True, close_workers=True)

    async def _backend_scale(self, n: int, retired: list[str]) -> None:
        assert self.record is not None
        for name in retired:  # retired on purpose: not workers that ended while starting
            self._workers_seen.pop(name, None)
        self.record = await asyncio.to_thread(
            self.backend.scale, self.record, self.backend_options, n, retired, self._client_tls
        )
        self._update_workers()

    # -- closing ---------------------------------------------------------------------------
    async def _close(self, shutdown: bool | None = None) -> None:
        if self.status == Status.closed:
            return
        if shutdown is None:
            shutdown = bool(self.spec.shutdown_on_close)
        if self._adaptive is not None:
            self._adaptive.stop()
        if shutdown and self.record is not None:
            self.record = await asyncio.to_thread(teardown_cluster, self.backend, self.record, self.backend_options)
        _live_clusters.discard(self)
        await super()._close()

    def close(self, timeout: float | None = None) -> Any:
        """Disconnect; also shut the cluster down if ``shutdown_on_close`` (see the class docs)."""
        result = super().close(timeout)
        if not self.asynchronous:
            self._loop_runner.stop()
        return result

    def shutdown(self) -> Any:
        """Shut the cluster down and disconnect, whatever ``shutdown_on_close`` says."""
        if self.status == Status.closed:
            return None
        result = self.sync(self._close, shutdown=True)
        if not self.asynchronous:
            self._loop_runner.stop()
        return result

    async def __aexit__(self, exc_type, exc_value, traceback):
        await self._close()

    # -- information -----------------------------------------------------------------------
    @property
    def state(self) -> ClusterState:
        """Lifecycle state as the backend sees it now (``status`` stays distributed's own)."""
        if self.record is None:
            return ClusterState.pending
        if self.status == Status.closed and self.spec.shutdown_on_close:
            return ClusterState.stopped
        try:
            fresh = self.backend.describe(self.name, self.backend_options)
        except CoiledError:
            return self.record.state
        return fresh.state if fresh is not None else ClusterState.stopped

    @property
    def dashboard_link(self) -> str:
        if self.record is None:
            return ""
        return self.backend.dashboard_url(self.record, self.backend_options) or ""

    async def _get_logs(self, cluster=True, scheduler=True, workers=True):
        logs = await super()._get_logs(cluster=cluster, scheduler=scheduler, workers=workers)
        if self.record is not None:
            # The backend's log files also cover processes that have already ended.
            for key, text in (await asyncio.to_thread(self.backend.logs, self.record, self.backend_options, None)).items():
                logs[f"{self.spec.backend}:{key}"] = Log(text)
        return logs

    def _summary(self) -> dict[str, Any]:
        record_state = self.record.state.value if self.record is not None else ClusterState.pending.value
        connected = len(self.scheduler_info["workers"])
        if record_state == ClusterState.starting.value and self.status == Status.running and connected >= len(self.workers):
            record_state = ClusterState.running.value
        if self.status == Status.closed:
            record_state = ClusterState.stopped.value if self.spec.shutdown_on_close else "detached"
        return {
            "name": self.name,
            "backend": self.spec.backend,
            "state": record_state,
            "workers": connected,
            "requested": len(self.workers),
            "dashboard": self.dashboard_link,
        }

    def __repr__(self) -> str:
        s = self._summary()
        return (
            f"<coiled.Cluster {s['name']!r} backend={s['backend']!r} state={s['state']!r} "
            f"workers={s['workers']}/{s['requested']} dashboard={s['dashboard'] or None!r}>"
        )

    def _repr_html_(self, cluster_status=None) -> str:
        """distributed's own cluster repr (dashboard, workers, threads, memory, scheduler info),
        which its notebook widget also shows next to the scale and adapt controls, with this
        cluster's backend, state and requested workers added as rows."""
        s = self._summary()

        def cell(label: str, value: Any) -> str:
            return f'<td style="text-align: left;"><strong>{label}:</strong> {html.escape(str(value))}</td>'

        rows = (
            f"<tr>{cell('Backend', s['backend'])}{cell('State', s['state'])}</tr>"
            f"<tr>{cell('Requested workers', s['requested'])}{cell('Connected workers', s['workers'])}</tr>"
        )
        return super()._repr_html_(cluster_status=rows + (cluster_status or ""))


@atexit.register
def _close_clusters_at_exit() -> None:
    """A normal interpreter exit shuts down the clusters it created, as distributed's do."""
    for cluster in list(_live_clusters):
        if cluster.spec.shutdown_on_close and cluster.record is not None:
            with suppress(Exception):
                teardown_cluster(cluster.backend, cluster.record, cluster.backend_options)
