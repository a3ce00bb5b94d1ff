"""The node agent: the one process per node that runs a cluster's scheduler and workers.

``python -m coiled_core.node CONFIG.json`` imports distributed once and then runs, in this
process, the configured scheduler class and worker classes. Nannies fork their worker processes
from a copy of it made before it starts any thread (:mod:`coiled_core.node.zygote`), so a node
pays for one interpreter start and one ``import distributed``, not one per worker. The agent
owns the life of its node:

- the scheduler's idle timeout ends the cluster, and when the scheduler ends the workers end;
- worker-only nodes start at the same time as the scheduler and retry until it answers;
- on SIGTERM or SIGINT everything closes gracefully and the agent exits;
- if the agent dies, nanny-run workers exit with it (distributed watches the parent process).

The agent's config is the node protocol of :mod:`coiled_core.node.config` (``node.json``); it
reports what it runs in ``agent.json`` in its state directory (the same module writes and reads
it), which the local backend reads together with the process table to describe a cluster. What a
backend adds on its own nodes (secrets, log shipping, worker names) comes from its node add-on
(:mod:`coiled_core.node.addons`); this module names no cloud.

This module avoids importing the rest of coiled_core (pydantic, pluggy): its start-up time is on
the critical path of every cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import time
from typing import Any

from coiled_core.node.addons import NodeAddOn, load_addon
from coiled_core.node.config import (
    STATE_FILE,
    AgentReport,
    NodeConfig,
    NodeConfigError,
    WorkerReport,
    write_report,
)

logger = logging.getLogger("coiled_core.node")

__all__ = ["STATE_FILE", "NodeAgent", "main"]
#: Scheduler RPC handlers the agent registers when it runs the scheduler and workers together.
START_WORKERS_HANDLER = "coiled_start_workers"
STOP_WORKERS_HANDLER = "coiled_stop_workers"
#: Scheduler RPC handler a ``coiled.Cluster`` object calls periodically: it counts as a client.
HEARTBEAT_HANDLER = "coiled_heartbeat"


class NodeAgent:
    """Runs what one node's config asks for. See :mod:`coiled_core.node.config` for the keys."""

    def __init__(self, config: NodeConfig, addon: NodeAddOn | None = None):
        self.config = config
        self.addon = addon
        from coiled_core.node.addresses import map_address, node_host

        self.host: str = node_host(config.host)
        self.state_dir: str | None = config.state_dir
        self.scheduler = None
        self.scheduler_address: str | None = map_address(config.scheduler_address)
        self.dashboard_url: str | None = None
        #: Adds the scheduler's dashboard while workers start (see coiled_core.node.dashboard).
        self.dashboard_added: asyncio.Task | None = None
        self.workers: dict[str, Any] = {}
        self.next_worker_index: int = 0
        self.state = "starting"
        self.stopping = asyncio.Event()
        self.stop_reason: str | None = None
        self.started_at = time.time()
        self.lifecycle = config.lifecycle
        self.last_heartbeat = float("-inf")
        self.security = {role: self._security(role) for role in ("scheduler", "worker")}
        self.last_client_seen = time.monotonic()
        self._reported_pids: dict[str, int | None] = {}

    def _security(self, role: str):
        """The ``distributed.Security`` of ``role`` on this node, or None without TLS.

        A node may hold the keys of the role it runs only (a cloud node gets its own role's
        material), so the other role then has no ``Security`` on it.
        """
        tls = self.config.tls
        if not tls:
            return None
        runs_role = (self.config.scheduler if role == "scheduler" else self.config.workers) is not None
        if f"{role}_key" not in tls and not runs_role:
            return None
        from coiled_core.security import security_from_node_config

        return security_from_node_config(tls, role)

    def connection_args(self) -> dict[str, Any]:
        security = self.security.get("worker") or self.security.get("scheduler")
        return security.get_connection_args("client") if security is not None else {}

    # -- reporting -------------------------------------------------------------------------
    def report(self) -> AgentReport:
        return AgentReport(
            pid=os.getpid(),
            cluster_name=self.config.cluster_name,
            state=self.state,
            scheduler_address=self.scheduler_address,
            dashboard_url=self.dashboard_url,
            workers=[WorkerReport(name, _worker_pid(w)) for name, w in self.workers.items()],
            # Whatever the launcher asked to be reported back (the local backend: the cluster spec).
            report=self.config.report,
            next_worker_index=self.next_worker_index,
            started_at=self.started_at,
            stop_reason=self.stop_reason,
            updated_at=time.time(),
        )

    def write_state(self) -> None:
        if not self.state_dir:
            return
        try:
            write_report(self.state_dir, self.report())
        except OSError:
            # A full disk must not stop the node from shutting down: reporting is best effort.
            logger.warning("could not write %s in %s", STATE_FILE, self.state_dir, exc_info=True)
        self._reported_pids = self._worker_pids()

    def _worker_pids(self) -> dict[str, int | None]:
        return {name: _worker_pid(w) for name, w in self.workers.items()}

    async def report_worker_restarts(self, interval: float = 1.0) -> None:
        """Report again when a nanny has restarted a worker: its pid changed."""
        while True:
            await asyncio.sleep(interval)
            if self._worker_pids() != self._reported_pids:
                self.write_state()

    # -- scheduler -------------------------------------------------------------------------
    async def start_scheduler(self) -> None:
        from distributed.utils import import_term

        spec = self.config.scheduler
        assert spec is not None
        cls = import_term(spec.cls)
        options = dict(spec.options)
        options.setdefault("host", self.host)
        options.setdefault("port", spec.port)
        options.setdefault("dashboard_address", spec.dashboard_address or f"{self.host}:{spec.dashboard_port}")
        if self.security["scheduler"] is not None:
            options.setdefault("security", self.security["scheduler"])
            options.setdefault("protocol", "tls")
        from coiled_core.node.dashboard import (
            DeferredDashboard,
            can_add_dashboard_later,
        )

        dashboard_later = can_add_dashboard_later(cls, options)
        if dashboard_later:
            options["dashboard"] = False  # its HTTP server still starts, on dashboard_address
        security = self.security["scheduler"]
        with dashboard_tls(security, self.state_dir):
            scheduler = cls(**options)  # the HTTP server (and its TLS context) is made here
        self.scheduler = await scheduler
        if dashboard_later:
            dashboard = DeferredDashboard(self.scheduler, options.get("http_prefix", "/"))
            self.dashboard_added = asyncio.ensure_future(dashboard.add())
        self.scheduler_address = self.scheduler.address
        dashboard = getattr(self.scheduler, "services", {}).get("dashboard")
        port = getattr(dashboard, "port", None) or getattr(getattr(self.scheduler, "http_server", None), "port", None)
        if port:
            scheme = "https" if security is not None else "http"
            self.dashboard_url = f"{scheme}://{self.host}:{port}/status"
        handlers = getattr(self.scheduler, "handlers", None)
        if handlers is not None:
            handlers[HEARTBEAT_HANDLER] = self.handle_heartbeat
            if self.config.workers is not None:
                # Same-node scaling: the client's backend asks the scheduler, which runs here.
                handlers[START_WORKERS_HANDLER] = self.handle_start_workers
                handlers[STOP_WORKERS_HANDLER] = self.handle_stop_workers
        logger.info("scheduler %s at %s, dashboard %s", spec.cls, self.scheduler_address, self.dashboard_url)

    # -- workers ---------------------------------------------------------------------------
    def _next_names(self, count: int) -> list[str]:
        assert self.config.workers is not None
        prefix = self.config.workers.name_prefix
        names = self.addon.worker_names(prefix, count, self.next_worker_index) if self.addon else None
        if names is None:
            names = [f"{prefix}{self.next_worker_index + i}" for i in range(count)]
        elif len(names) != count or len(set(names)) != count or set(names) & set(self.workers):
            raise RuntimeError(f"the node add-on named {count} new workers {names!r}: not {count} new, unique names")
        self.next_worker_index += count
        return names

    def _worker_kwargs(self, cls: type, name: str, index: int) -> dict[str, Any]:
        spec = self.config.workers
        assert spec is not None
        kwargs: dict[str, Any] = {
            "name": name,
            "host": self.host,
            "nthreads": spec.nthreads,
            "memory_limit": spec.memory_limit,
        }
        resources = dict(spec.resources)
        env = dict(self.config.environ)
        gpus = spec.gpus_per_worker
        if gpus:
            # Each worker gets its own slice of the node's devices, wrapping if there are fewer.
            devices = spec.gpu_devices or list(range(gpus))
            start = (index * gpus) % len(devices)
            chosen = [str(devices[(start + k) % len(devices)]) for k in range(gpus)]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
            resources["GPU"] = gpus
        if resources:
            kwargs["resources"] = resources
        if self.security["worker"] is not None:
            kwargs["security"] = self.security["worker"]
            kwargs["protocol"] = "tls"
        if self.lifecycle.watchdog_timeout:
            kwargs["preload"] = ["coiled_core.node.watchdog"]
        from distributed import Nanny

        if isinstance(cls, type) and issubclass(cls, Nanny):
            # Only a nanny's worker runs in a process of its own, where per-worker variables apply.
            kwargs["env"] = env
        options = dict(spec.options)
        if "preload" in options and "preload" in kwargs:
            user = options.pop("preload")
            kwargs["preload"] = kwargs["preload"] + ([user] if isinstance(user, str) else list(user))
        kwargs.update(options)
        return kwargs

    async def start_workers(self, count: int, names: list[str] | None = None) -> list[str]:
        """Start ``count`` workers of the configured class (named ``names`` if given), together."""
        from distributed.utils import import_term

        assert self.config.workers is not None
        cls = import_term(self.config.workers.cls)
        if names:
            self.next_worker_index = max(self.next_worker_index, len(self.workers) + len(names))
        else:
            names = self._next_names(count)
        started = {}
        for name in names:
            index = len(self.workers) + len(started)
            started[name] = cls(self.scheduler_address, **self._worker_kwargs(cls, name, index))
        self.workers.update(started)
        self.write_state()

        async def start(worker):
            await worker

        # Nannies fork their processes concurrently; workers retry until the scheduler answers.
        results = await asyncio.gather(*(start(w) for w in started.values()), return_exceptions=True)
        failures = [(n, r) for n, r in zip(started, results) if isinstance(r, BaseException)]
        if failures:
            await self.stop_workers(list(started))
            name, error = failures[0]
            raise RuntimeError(f"worker {name} failed to start: {type(error).__name__}: {error}") from error
        self.write_state()
        return names

    async def stop_workers(self, names: list[str]) -> list[str]:
        stopped = []
        for name in names:
            worker = self.workers.pop(name, None)
            if worker is not None:
                stopped.append(worker)
        await asyncio.gather(*(w.close() for w in stopped), return_exceptions=True)
        self.write_state()
        return names

    def handle_heartbeat(self) -> float:
        self.last_heartbeat = time.monotonic()
        return self.lifecycle.heartbeat_grace or 0

    def stop(self, reason: str) -> None:
        """End the node: everything closes gracefully and the agent exits."""
        if self.stop_reason is None:
            self.stop_reason = reason
            logger.info("node agent stopping: %s", reason)
        self.stopping.set()

    def _has_clients(self) -> bool:
        clients = getattr(self.scheduler, "clients", {})
        return any(client_id != "fire-and-forget" for client_id in clients)

    async def enforce_lifetime(self) -> None:
        """The cluster's own timeouts: no client for too long, or a hard lifetime cap.

        A ``coiled.Cluster`` object's heartbeats count as a client, so a cluster object held
        without a ``Client`` keeps its cluster alive; a killed creator stops heartbeating.
        """
        no_client_timeout = self.lifecycle.no_client_timeout
        cluster_timeout = self.lifecycle.cluster_timeout
        grace = self.lifecycle.heartbeat_grace or 15.0
        started = time.monotonic()
        seen_a_client = False
        while not self.stopping.is_set():
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if cluster_timeout and now - started > cluster_timeout:
                self.stop(f"cluster-timeout: the cluster reached its lifetime of {cluster_timeout:g}s")
            elif no_client_timeout:
                if self._has_clients() or now - self.last_heartbeat < grace:
                    self.last_client_seen = now
                    seen_a_client = True
                # Until a client has connected once, allow at least a minute: the creator may
                # still be waiting for the other nodes to boot before it connects.
                elif now - self.last_client_seen > (no_client_timeout if seen_a_client else max(no_client_timeout, 60.0)):
                    self.stop(f"no-client-timeout: no client for {no_client_timeout:g}s")

    async def watch_scheduler(self) -> None:
        """Worker-only nodes end when their scheduler stops answering (see watchdog.py)."""
        from distributed.core import rpc

        from coiled_core.node.watchdog import watch_scheduler

        timeout = self.lifecycle.watchdog_timeout
        if not timeout:
            return
        async with rpc(self.scheduler_address, timeout=10, connection_args=self.connection_args()) as scheduler:
            async def lost(reason: str) -> None:
                self.stop(f"watchdog: {reason}")

            await watch_scheduler(lambda: scheduler.echo(data="ping"), timeout, lost, self.lifecycle.first_contact_timeout)

    async def handle_start_workers(self, count: int) -> list[str]:
        return await self.start_workers(count)

    async def handle_stop_workers(self, names: list[str]) -> list[str]:
        return await self.stop_workers(names)

    # -- life ------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, signal.Signals(sig).name)
        background = []
        if self.config.log_file and self.config.log_max_bytes:
            background.append(asyncio.ensure_future(self.rotate_log_periodically()))
        if self.addon is not None and self.config.log_file and self.addon.log_interval:
            background.append(asyncio.ensure_future(self.ship_log_periodically(self.addon.log_interval)))
        try:
            self.write_state()
            if self.config.scheduler is not None:
                await self.unless_stopped(self.start_scheduler())
                if self.stopping.is_set():
                    return 0
                if self.dashboard_added is not None:
                    background.append(self.dashboard_added)
                self.write_state()
                background.append(asyncio.ensure_future(self.enforce_lifetime()))
            elif self.scheduler_address:
                background.append(asyncio.ensure_future(self.watch_scheduler()))
            workers = self.config.workers
            if workers is not None and workers.count:
                await self.unless_stopped(self.start_workers(workers.count))
            self.state = "running"
            self.write_state()
            background.append(asyncio.ensure_future(self.report_worker_restarts()))
            if self.addon is not None:
                background.extend(asyncio.ensure_future(task) for task in self.addon.background_tasks(self))
            await asyncio.to_thread(self.ship_log)  # the start-up log, at once
            await self.wait_until_done()
            return 0
        except Exception:
            logger.exception("node agent failed")
            self.state = "error"
            return 1
        finally:
            for task in background:
                task.cancel()
            if self.state != "error":
                self.state = "stopping"
            self.write_state()
            try:
                await self.shutdown()
            except BaseException:
                logger.exception("closing the scheduler and workers failed")
            self.remove_on_end()
            if self.addon is not None:
                try:
                    self.addon.on_end(self.stop_reason)
                except Exception:
                    logger.warning("the node add-on failed at the node's end", exc_info=True)
            if self.state != "error":
                self.state = "stopped"
            self.write_state()
            self.ship_log(final=True)

    def ship_log(self, final: bool = False) -> None:
        """Hand the node's log to the add-on (best effort: a failure never stops the node)."""
        if self.addon is None or not self.config.log_file:
            return
        try:
            self.addon.ship_log(self.config.log_file, final)
        except Exception:
            logger.debug("shipping the log failed", exc_info=True)

    async def ship_log_periodically(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.ship_log)

    def remove_on_end(self) -> None:
        """Delete what the launcher asked to go with the node (e.g. the store's copy of the
        cluster's credentials), while the node still counts as live: a new cluster of the same
        name cannot have been created in the meantime."""
        for path in self.config.remove_on_end:
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                logger.warning("could not delete %s", path, exc_info=True)

    async def rotate_log_periodically(self, interval: float = 5.0) -> None:
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(rotate_log, self.config.log_file, self.config.log_max_bytes)

    async def unless_stopped(self, coroutine) -> None:
        """Run ``coroutine`` unless the node is told to stop first (workers may wait for ever
        for a scheduler that never boots; the watchdog's stop must still end the node)."""
        work = asyncio.ensure_future(coroutine)
        stop = asyncio.ensure_future(self.stopping.wait())
        done, _ = await asyncio.wait([work, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if work in done:
            work.result()
        else:
            work.cancel()

    async def wait_until_done(self) -> None:
        """Return when the node should end: a signal, the scheduler closing, or all workers gone."""
        waits = [asyncio.ensure_future(self.stopping.wait())]
        if self.scheduler is not None:
            waits.append(asyncio.ensure_future(self.scheduler.finished()))
        elif self.workers:
            waits.append(asyncio.ensure_future(asyncio.gather(*(w.finished() for w in self.workers.values()))))
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    async def shutdown(self) -> None:
        workers = list(self.workers.values())
        self.workers.clear()
        if workers:
            await asyncio.wait_for(asyncio.gather(*(w.close() for w in workers), return_exceptions=True), 30)
        if self.scheduler is not None:
            await asyncio.wait_for(self.scheduler.close(), 30)


def rotate_log(path: str, max_bytes: int) -> bool:
    """Past ``max_bytes``, copy the log to ``<path>.1`` (replacing an older one) and empty it.

    Copy-and-truncate, because every process of the node writes to this file through a
    descriptor it inherited (opened for appending, so writes go on at the new end). Returns
    whether the log was rotated.
    """
    try:
        if os.path.getsize(path) <= max_bytes:
            return False
        rotated = f"{path}.1"
        tmp = f"{rotated}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as target, open(path, "rb") as source:
            shutil.copyfileobj(source, target)
        os.replace(tmp, rotated)
        os.truncate(path, 0)
        return True
    except OSError:
        logger.warning("could not rotate %s", path, exc_info=True)
        return False


class dashboard_tls:
    """While the scheduler is made, let its dashboard serve HTTPS with the scheduler's own
    certificate (when the cluster uses TLS).

    distributed reads the dashboard's certificate from files named in dask config; they live in
    a private temporary directory only until the scheduler's HTTP server has loaded them.
    """

    def __init__(self, security: Any, state_dir: str | None):
        self.security, self.state_dir = security, state_dir
        self.directory: str | None = None
        self.config: Any = None

    def __enter__(self) -> None:
        if self.security is None:
            return
        import tempfile

        import dask.config

        self.directory = tempfile.mkdtemp(prefix=".dashboard-tls-", dir=self.state_dir)  # mode 0700
        paths = {}
        for name, pem in (("cert", self.security.tls_scheduler_cert), ("key", self.security.tls_scheduler_key)):
            paths[name] = os.path.join(self.directory, f"{name}.pem")
            fd = os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(pem)
        self.config = dask.config.set(
            {"distributed.scheduler.dashboard.tls.cert": paths["cert"], "distributed.scheduler.dashboard.tls.key": paths["key"]}
        )

    def __exit__(self, *exc: Any) -> None:
        if self.config is not None:
            self.config.__exit__(None, None, None)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def _worker_pid(worker: Any) -> int | None:
    process = getattr(worker, "process", None)  # a Nanny's WorkerProcess
    if process is not None:
        return getattr(getattr(process, "process", None), "pid", None)
    return os.getpid()


def _prepare_worker_processes(config: NodeConfig):
    """Choose how nannies start worker processes, and for ``forkserver`` start a warm one.

    Forking the preloaded agent is what makes a node start fast; forking it
    from the agent's own threads can hang the child (see :mod:`coiled_core.node.zygote`), so by
    default workers are forked from a copy of the agent made before it starts any thread.
    Returns the warm fork server, or ``None``.
    """
    import dask.config
    from distributed.nanny import WorkerProcess

    # A nanny polls for its new worker's first message every 50 ms; a node that starts its
    # workers at once would wait up to that long for nothing.
    WorkerProcess._init_msg_interval = 0.005
    method = config.multiprocessing_method
    dask.config.set({"distributed.worker.multiprocessing-method": method})
    if method != "forkserver" or config.workers is None:
        return None
    import distributed.utils
    from distributed import Nanny
    from distributed.utils import import_term

    from coiled_core.node.zygote import start_warm_fork_server

    # What every worker process needs, imported once here and inherited by each fork.
    try:
        worker_class = import_term(config.workers.cls)
    except Exception:
        return None  # starting the workers reports it, as a failed start of the node
    if not (isinstance(worker_class, type) and issubclass(worker_class, Nanny)):
        return None  # workers run in this process: nothing is forked
    if config.lifecycle.watchdog_timeout:
        import coiled_core.node.watchdog  # noqa: F401  (the workers' preload)
    # distributed would otherwise import every optional package it knows of into the agent,
    # for a fork server of its own that the warm one replaces.
    distributed.utils._forkserver_preload_set = True
    try:
        server = start_warm_fork_server(config.state_dir)
    except Exception:
        # It leans on multiprocessing's internals; the standard fork server is just as safe.
        logger.warning("no warm fork server; workers start from a standard one", exc_info=True)
        return None
    if server is None:
        logger.warning("the agent already runs threads; workers start from a standard fork server")
    return server


def _apply_environ(environ: dict[str, str]) -> None:
    """Set variables as if they had been set before start-up: in this process's environment and,
    for ``DASK_*`` ones, in dask's config if it is already loaded (nannies hand it on to their
    workers; workers also get the variables as their ``env``)."""
    if not environ:
        return
    os.environ.update(environ)
    if "dask.config" in sys.modules:
        import dask.config

        dask.config.update(dask.config.config, dask.config.collect_env(environ), priority="new")


def load_config(path: str) -> tuple[NodeConfig, NodeAddOn | None]:
    """Read the node config, take in the node's secrets and make its add-on.

    The TLS material of ``tls_file`` is read once and the file deleted, so that it is not left on
    disk after the node has ended; the add-on's secrets (TLS material, ``environ``) are fetched
    here, before anything starts. Raises :class:`NodeConfigError` for a config this agent cannot run.
    """
    config = NodeConfig.read(path)
    if config.tls_file:
        with open(config.tls_file) as f:
            config.tls = json.load(f)
        os.unlink(config.tls_file)
    addon = load_addon(config)
    if addon is not None:
        secrets = addon.load_secrets()
        if secrets is not None:
            if secrets.tls:
                config.tls = {**(config.tls or {}), **secrets.tls}
            config.environ = {**config.environ, **secrets.environ}
    return config, addon


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m coiled_core.node CONFIG.json", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        config, addon = load_config(argv[0])
    except NodeConfigError as e:
        logger.error("cannot run this node: %s", e)
        return 2
    except Exception:
        logger.exception("cannot start this node: reading its config or secrets failed")
        return 1
    # Environment first, so that DASK_* variables in `environ` reach dask's config.
    _apply_environ(config.environ)
    lifecycle = config.lifecycle
    if lifecycle.watchdog_timeout:
        from coiled_core.node.watchdog import FIRST_CONTACT_VARIABLE, TIMEOUT_VARIABLE

        # Read by the watchdog preload in every worker process this agent forks.
        os.environ[TIMEOUT_VARIABLE] = str(lifecycle.watchdog_timeout)
        os.environ[FIRST_CONTACT_VARIABLE] = str(lifecycle.first_contact_timeout or "")

    fork_server = _prepare_worker_processes(config)
    try:
        code = asyncio.run(NodeAgent(config, addon).run())
    finally:
        if fork_server is not None:
            fork_server.stop()
    # Everything is closed. Exit at once: multiprocessing's exit handlers can block on the
    # queues of a worker process that was killed, which would keep a finished node alive.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
