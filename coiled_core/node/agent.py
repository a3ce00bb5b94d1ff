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

The agent reports what it runs in ``agent.json`` in its state directory (written atomically), which
the local backend reads together with the process table to describe a cluster.

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
import threading
import time
from typing import Any

logger = logging.getLogger("coiled_core.node")

#: Name of the state file the agent writes in its state directory.
STATE_FILE = "agent.json"
#: Scheduler RPC handlers the agent registers when it runs the scheduler and workers together.
START_WORKERS_HANDLER = "coiled_start_workers"
STOP_WORKERS_HANDLER = "coiled_stop_workers"
#: Scheduler RPC handler a ``coiled.Cluster`` object calls periodically: it counts as a client.
HEARTBEAT_HANDLER = "coiled_heartbeat"


class NodeAgent:
    """Runs what one node's config asks for. See :mod:`coiled_core.node.config` for the keys."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        from coiled_core.node.addresses import map_address, node_host

        self.host: str = node_host(config.get("host"))
        self.state_dir: str | None = config.get("state_dir")
        self.scheduler = None
        self.scheduler_address: str | None = map_address(config.get("scheduler_address"))
        self.dashboard_url: str | None = None
        #: Adds the scheduler's dashboard while workers start (see coiled_core.node.dashboard).
        self.dashboard_added: asyncio.Task | None = None
        self.workers: dict[str, Any] = {}
        self.next_worker_index: int = 0
        self.state = "starting"
        self.stopping = asyncio.Event()
        self.stop_reason: str | None = None
        self.started_at = time.time()
        self.lifecycle: dict[str, Any] = config.get("lifecycle") or {}
        self.last_heartbeat = float("-inf")
        self.security = {role: self._security(role) for role in ("scheduler", "worker")}
        self.last_client_seen = time.monotonic()
        self._reported_pids: dict[str, int | None] = {}

    def _security(self, role: str):
        """The ``distributed.Security`` of ``role`` on this node, or None without TLS.

        A node whose config names ``tls_ssm`` (a cloud node) first reads its secrets from there,
        once: its TLS material and the cluster's ``environ``, which is then applied here (see
        :func:`_apply_environ`). Such a node gets only the keys of the role it runs, so the
        other role has no ``Security`` on it.
        """
        if self.config.get("tls_ssm") and "tls" not in self.config:
            secrets = _tls_from_ssm(self.config["tls_ssm"])
            environ = json.loads(secrets.pop("environ", None) or "{}")
            self.config["environ"] = {**(self.config.get("environ") or {}), **environ}
            _apply_environ(environ)
            self.config["tls"] = secrets
        tls = self.config.get("tls")
        if not tls:
            return None
        runs_role = bool(self.config.get("scheduler" if role == "scheduler" else "workers"))
        if f"{role}_key" not in tls and not runs_role:
            return None
        from coiled_core.security import security_from_node_config

        return security_from_node_config(tls, role)

    def connection_args(self) -> dict[str, Any]:
        security = self.security.get("worker") or self.security.get("scheduler")
        return security.get_connection_args("client") if security is not None else {}

    # -- reporting -------------------------------------------------------------------------
    def write_state(self) -> None:
        if not self.state_dir:
            return
        data = {
            "pid": os.getpid(),
            "cluster_name": self.config.get("cluster_name"),
            "state": self.state,
            "scheduler_address": self.scheduler_address,
            "dashboard_url": self.dashboard_url,
            "workers": [{"name": name, "pid": _worker_pid(w)} for name, w in self.workers.items()],
            # Whatever the launcher asked to be reported back (the local backend: the cluster spec).
            "report": self.config.get("report") or {},
            "next_worker_index": self.next_worker_index,
            "started_at": self.started_at,
            "stop_reason": self.stop_reason,
            "updated_at": time.time(),
        }
        path = os.path.join(self.state_dir, STATE_FILE)
        # Unique per call (the event loop and a thread may both report), readable by this user
        # only: the report holds the cluster's spec and its environ.
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, path)
        except OSError:
            # A full disk must not stop the node from shutting down: reporting is best effort.
            logger.warning("could not write %s", path, exc_info=True)
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

        spec = self.config["scheduler"]
        cls = import_term(spec["class"])
        options = dict(spec.get("options") or {})
        options.setdefault("host", self.host)
        options.setdefault("port", spec.get("port", 0))
        options.setdefault("dashboard_address", spec.get("dashboard_address") or f"{self.host}:{spec.get('dashboard_port', 0)}")
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
            if self.config.get("workers"):
                # Same-node scaling: the client's backend asks the scheduler, which runs here.
                handlers[START_WORKERS_HANDLER] = self.handle_start_workers
                handlers[STOP_WORKERS_HANDLER] = self.handle_stop_workers
        logger.info("scheduler %s at %s, dashboard %s", spec["class"], self.scheduler_address, self.dashboard_url)

    # -- workers ---------------------------------------------------------------------------
    def _next_names(self, count: int) -> list[str]:
        prefix = self.config["workers"].get("name_prefix") or f"{self.config.get('cluster_name', 'node')}-worker-"
        instance_id = os.environ.get("COILED_INSTANCE_ID") if self.config["workers"].get("name_from_instance") else None
        if instance_id and count == 1 and not self.workers:
            # One worker per cloud machine: its name says which machine to stop on scale-down.
            self.next_worker_index += 1
            return [f"{prefix}{instance_id}"]
        names = [f"{prefix}{self.next_worker_index + i}" for i in range(count)]
        self.next_worker_index += count
        return names

    def _worker_kwargs(self, cls: type, name: str, index: int) -> dict[str, Any]:
        spec = self.config["workers"]
        kwargs: dict[str, Any] = {
            "name": name,
            "host": self.host,
            "nthreads": spec.get("nthreads", 1),
            "memory_limit": spec.get("memory_limit", "auto"),
        }
        resources = dict(spec.get("resources") or {})
        env = dict(self.config.get("environ") or {})
        gpus = spec.get("gpus_per_worker") or 0
        if gpus:
            # Each worker gets its own slice of the node's devices, wrapping if there are fewer.
            devices = spec.get("gpu_devices") or list(range(gpus))
            start = (index * gpus) % len(devices)
            chosen = [str(devices[(start + k) % len(devices)]) for k in range(gpus)]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
            resources["GPU"] = gpus
        if resources:
            kwargs["resources"] = resources
        if self.security["worker"] is not None:
            kwargs["security"] = self.security["worker"]
            kwargs["protocol"] = "tls"
        if self.lifecycle.get("watchdog_timeout"):
            kwargs["preload"] = ["coiled_core.node.watchdog"]
        from distributed import Nanny

        if isinstance(cls, type) and issubclass(cls, Nanny):
            # Only a nanny's worker runs in a process of its own, where per-worker variables apply.
            kwargs["env"] = env
        options = dict(spec.get("options") or {})
        if "preload" in options and "preload" in kwargs:
            user = options.pop("preload")
            kwargs["preload"] = kwargs["preload"] + ([user] if isinstance(user, str) else list(user))
        kwargs.update(options)
        return kwargs

    async def start_workers(self, count: int, names: list[str] | None = None) -> list[str]:
        """Start ``count`` workers of the configured class (named ``names`` if given), together."""
        from distributed.utils import import_term

        cls = import_term(self.config["workers"]["class"])
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
        return self.lifecycle.get("heartbeat_grace") or 0

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
        no_client_timeout = self.lifecycle.get("no_client_timeout")
        cluster_timeout = self.lifecycle.get("cluster_timeout")
        grace = self.lifecycle.get("heartbeat_grace") or 15.0
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

        timeout = self.lifecycle.get("watchdog_timeout")
        if not timeout:
            return
        async with rpc(self.scheduler_address, timeout=10, connection_args=self.connection_args()) as scheduler:
            async def lost(reason: str) -> None:
                self.stop(f"watchdog: {reason}")

            await watch_scheduler(lambda: scheduler.echo(data="ping"), timeout, lost, self.lifecycle.get("first_contact_timeout"))

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
        uploader = LogUploader(self.config["log_upload"]) if self.config.get("log_upload") else None
        if uploader is not None:
            background.append(asyncio.ensure_future(uploader.run()))
        if self.config.get("log_file") and self.config.get("log_max_bytes"):
            background.append(asyncio.ensure_future(self.rotate_log_periodically()))
        try:
            self.write_state()
            if self.config.get("scheduler"):
                await self.unless_stopped(self.start_scheduler())
                if self.stopping.is_set():
                    return 0
                if self.dashboard_added is not None:
                    background.append(self.dashboard_added)
                self.write_state()
                background.append(asyncio.ensure_future(self.enforce_lifetime()))
            elif self.scheduler_address:
                background.append(asyncio.ensure_future(self.watch_scheduler()))
            workers = self.config.get("workers")
            if workers and (workers.get("count") or workers.get("names")):
                names = workers.get("names")
                await self.unless_stopped(self.start_workers(len(names) if names else workers["count"], names))
            self.state = "running"
            self.write_state()
            background.append(asyncio.ensure_future(self.report_worker_restarts()))
            if uploader is not None:
                await asyncio.to_thread(uploader.upload)  # the start-up log, at once
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
            if self.config.get("tls_ssm"):
                delete_ssm_secrets(self.config["tls_ssm"], self.stop_reason)
            if self.state != "error":
                self.state = "stopped"
            self.write_state()
            if uploader is not None:
                uploader.upload()

    def remove_on_end(self) -> None:
        """Delete what the launcher asked to go with the node (e.g. the store's copy of the
        cluster's credentials), while the node still counts as live: a new cluster of the same
        name cannot have been created in the meantime."""
        for path in self.config.get("remove_on_end") or []:
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                pass
            except OSError:
                logger.warning("could not delete %s", path, exc_info=True)

    async def rotate_log_periodically(self, interval: float = 5.0) -> None:
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(rotate_log, self.config["log_file"], self.config["log_max_bytes"])

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


def _tls_from_ssm(source: dict[str, Any]) -> dict[str, str]:
    """The node's secrets kept in SSM Parameter Store (SecureStrings under ``source["prefix"]``,
    its own role's path), read with the node's own role: its TLS material and, under
    ``environ``, the cluster's environment variables as JSON.

    Cloud nodes get them this way rather than in user data, which other principals can read
    through DescribeInstanceAttribute.
    """
    client = _ssm_client(source)
    prefix = source["prefix"].rstrip("/")
    found: dict[str, str] = {}
    token = None
    while True:
        page = client.get_parameters_by_path(
            Path=prefix, WithDecryption=True, **({"NextToken": token} if token else {})
        )
        for parameter in page["Parameters"]:
            found[parameter["Name"][len(prefix) + 1 :]] = parameter["Value"]
        token = page.get("NextToken")
        if not token or not page["Parameters"]:
            return found


def _ssm_client(source: dict[str, Any]) -> Any:
    import boto3

    return boto3.client("ssm", region_name=source.get("region"), endpoint_url=source.get("endpoint_url"))


def _apply_environ(environ: dict[str, str]) -> None:
    """Set variables read after start-up (from SSM) as if they had been set before it: in this
    process's environment and, for ``DASK_*`` ones, in dask's config, which nannies hand on to
    their workers (workers also get them as their ``env``)."""
    if not environ:
        return
    os.environ.update(environ)
    import dask.config

    dask.config.update(dask.config.config, dask.config.collect_env(environ), priority="new")


def delete_ssm_secrets(source: dict[str, Any], stop_reason: str | None) -> None:
    """When the cluster ends on its own, delete its secrets in SSM (``source["delete_on_end"]``,
    the scheduler node's list of every role's parameters), so that they do not outlive it.

    Not on a signal: whoever terminates the node (teardown, gc) deletes them itself, and may
    already have made a new cluster of the same name whose parameters these names now are.
    Best effort: a failure is logged, never stops the node's end; gc removes what is left.
    """
    names = list(source.get("delete_on_end") or [])
    if not names or stop_reason in ("SIGTERM", "SIGINT"):
        return
    try:
        client = _ssm_client(source)
        for start in range(0, len(names), 10):  # DeleteParameters takes at most 10 names
            client.delete_parameters(Names=names[start : start + 10])
        logger.info("deleted the cluster's %d secret parameters", len(names))
    except Exception:
        logger.warning("could not delete the cluster's secret parameters", exc_info=True)


class LogUploader:
    """Copies the tail of this node's log file to object storage, so logs outlive the machine.

    ``settings`` is the node config's ``log_upload``: ``bucket``, ``key`` (``{instance_id}`` is
    filled in), ``file``, ``region``, ``endpoint_url``, ``interval`` (seconds between looks,
    default 10) and ``expected_bucket_owner``, the account that must own the bucket: S3 refuses
    the upload if another account does, so a log never lands in a bucket someone took over.

    An upload happens only when the file changed since the last one (its identity, size or
    modification time), and sends at most the last :attr:`MAX_BYTES`, read by seeking to them.
    The agent rotates its log by copying and truncating it in place, so a file that shrank is a
    change like any other.
    """

    #: The most of the log's end that one upload sends.
    MAX_BYTES = 2_000_000

    def __init__(self, settings: dict[str, Any]):
        import threading

        self.settings = settings
        # One upload at a time, each reading the file afresh: a slow earlier upload must never
        # land after, and overwrite, the final one.
        self.lock = threading.Lock()
        self._uploaded: tuple[int, int, int] | None = None  # (inode, size, mtime) last sent
        self._client: Any = None
        self._failed = False

    def upload(self) -> None:
        with self.lock:
            try:
                self._upload()
                self._failed = False
            except Exception:
                # Once with its traceback: the warning itself grows the log, and a failing
                # upload would otherwise add one every interval.
                logger.log(logging.DEBUG if self._failed else logging.WARNING, "uploading the log failed", exc_info=True)
                self._failed = True

    def _upload(self) -> None:
        with open(self.settings["file"], "rb") as f:
            stat = os.fstat(f.fileno())
            version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if version == self._uploaded:
                return
            f.seek(max(0, stat.st_size - self.MAX_BYTES))
            body = f.read(self.MAX_BYTES)
        key = self.settings["key"].format(instance_id=os.environ.get("COILED_INSTANCE_ID", "node"))
        owner = self.settings.get("expected_bucket_owner")
        extra = {"ExpectedBucketOwner": owner} if owner else {}
        self._s3().put_object(Bucket=self.settings["bucket"], Key=key, Body=body, **extra)
        # What was read; a write since then changes size or mtime and is sent next time.
        self._uploaded = version

    def _s3(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", region_name=self.settings.get("region"), endpoint_url=self.settings.get("endpoint_url"))
        return self._client

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.upload)
            await asyncio.sleep(self.settings.get("interval", 10))


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


def _prepare_worker_processes(config: dict[str, Any]):
    """Choose how nannies start worker processes, and for ``forkserver`` start a warm one.

    Forking the preloaded agent is what makes a node start fast (see DESIGN.md); forking it
    from the agent's own threads can hang the child (see :mod:`coiled_core.node.zygote`), so by
    default workers are forked from a copy of the agent made before it starts any thread.
    Returns the warm fork server, or ``None``.
    """
    import dask.config
    from distributed.nanny import WorkerProcess

    # A nanny polls for its new worker's first message every 50 ms; a node that starts its
    # workers at once would wait up to that long for nothing.
    WorkerProcess._init_msg_interval = 0.005
    method = config.get("multiprocessing_method", "forkserver")
    dask.config.set({"distributed.worker.multiprocessing-method": method})
    if method != "forkserver" or not config.get("workers"):
        return None
    import distributed.utils
    from distributed import Nanny
    from distributed.utils import import_term

    from coiled_core.node.zygote import start_warm_fork_server

    # What every worker process needs, imported once here and inherited by each fork.
    try:
        worker_class = import_term(config["workers"].get("class") or "distributed.Nanny")
    except Exception:
        return None  # starting the workers reports it, as a failed start of the node
    if not (isinstance(worker_class, type) and issubclass(worker_class, Nanny)):
        return None  # workers run in this process: nothing is forked
    if (config.get("lifecycle") or {}).get("watchdog_timeout"):
        import coiled_core.node.watchdog  # noqa: F401  (the workers' preload)
    # distributed would otherwise import every optional package it knows of into the agent,
    # for a fork server of its own that the warm one replaces.
    distributed.utils._forkserver_preload_set = True
    try:
        server = start_warm_fork_server(config.get("state_dir"))
    except Exception:
        # It leans on multiprocessing's internals; the standard fork server is just as safe.
        logger.warning("no warm fork server; workers start from a standard one", exc_info=True)
        return None
    if server is None:
        logger.warning("the agent already runs threads; workers start from a standard fork server")
    return server


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m coiled_core.node CONFIG.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        config = json.load(f)
    if config.get("tls_file"):
        # The node's keys, handed over in a file of their own: read once, then deleted, so that
        # they are not left on disk after the node has ended.
        with open(config["tls_file"]) as f:
            config["tls"] = json.load(f)
        os.unlink(config["tls_file"])
    # Environment first, so that DASK_* variables in `environ` reach dask's config.
    os.environ.update(config.get("environ") or {})
    lifecycle = config.get("lifecycle") or {}
    if lifecycle.get("watchdog_timeout"):
        from coiled_core.node.watchdog import FIRST_CONTACT_VARIABLE, TIMEOUT_VARIABLE

        # Read by the watchdog preload in every worker process this agent forks.
        os.environ[TIMEOUT_VARIABLE] = str(lifecycle["watchdog_timeout"])
        os.environ[FIRST_CONTACT_VARIABLE] = str(lifecycle.get("first_contact_timeout") or "")

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    fork_server = _prepare_worker_processes(config)
    try:
        code = asyncio.run(NodeAgent(config).run())
    finally:
        if fork_server is not None:
            fork_server.stop()
    # Everything is closed. Exit at once: multiprocessing's exit handlers can block on the
    # queues of a worker process that was killed, which would keep a finished node alive.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
