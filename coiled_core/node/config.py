"""The node protocol: what a backend tells a node agent (``node.json``) and what the agent reports
back (``agent.json``).

Both are plain dataclasses with a JSON round trip, so the agent reads them without pydantic (its
start-up time is on the critical path of every cluster). ``node.json`` carries a ``protocol``
version; an agent refuses a config of a version it does not speak, or with a key it does not
know, with an error naming it (:class:`NodeConfigError`), rather than silently ignoring what a
newer client asked for.

A backend never writes these dicts by hand: :func:`build_node_config` makes a :class:`NodeConfig`
from the cluster's ``ClusterSpec`` and the node's role, with the cluster's lifetime rules always
included. The backend then adds what only it knows (the node's host, the scheduler's address, its
node add-on) and hands ``config.to_json()`` to the node::

    from coiled_core.backend import build_node_config

    config = build_node_config(spec, "worker", scheduler_address="tls://10.0.0.5:8786")
    config.addon = AddOnRef("coiled_mycloud.node:MyCloudNode", {"bucket": "..."})
    user_data = render_boot_script(config.to_json())

The protocol, key by key:

``protocol``
    :data:`PROTOCOL`, the version of this format.
``cluster_name``, ``role``
    The cluster and what this node runs: ``"scheduler"`` (the scheduler alone), ``"worker"``
    (workers alone; ``scheduler_address`` says where their scheduler is, which may not answer yet)
    or ``"combined"`` (the scheduler and its workers in one process, as the local backend runs).
``host``
    The address to bind to; None means this node's own address (see
    :mod:`coiled_core.node.addresses`).
``environ``
    Environment variables for the scheduler and workers. A backend that must keep them out of
    readable node metadata leaves this empty and delivers them through its add-on.
``lifecycle``
    :class:`Lifecycle`: the timeouts the node enforces on itself.
``scheduler``, ``workers``
    :class:`SchedulerSettings`, :class:`WorkerSettings` (None when the role does not run them).
``tls``, ``tls_file``
    The node's TLS material inline (PEM strings, see ``ClusterTLS.to_node_config``), or a file
    holding it that the agent reads once and deletes. A backend whose nodes fetch their material
    themselves leaves both unset and lets its add-on return it.
``addon``
    :class:`AddOnRef`: the backend's node add-on (see :mod:`coiled_core.node.addons`).
``state_dir``
    Where the agent writes ``agent.json`` (None: no report, as on a cloud VM).
``log_file``, ``log_max_bytes``
    The node's log. The agent itself writes to its standard output and error: the backend
    starts it with both going to this file, opened for appending (so that rotation works); the
    agent rotates it (copy and truncate) past ``log_max_bytes`` and hands it to its add-on.
``remove_on_end``
    Files or directories the agent deletes when the node ends.
``report``
    Anything the backend wants echoed back in ``agent.json`` (the local backend: the spec).
``multiprocessing_method``
    How nannies start worker processes (default ``forkserver``, from a warm copy of the agent).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from coiled_core.spec import ClusterSpec

#: Version of the node protocol (``node.json``) this coiled-core writes and its agent speaks.
PROTOCOL = 1
#: File name of the agent's report in its state directory.
STATE_FILE = "agent.json"

NodeRole = Literal["scheduler", "worker", "combined"]
NODE_ROLES: tuple[str, ...] = ("scheduler", "worker", "combined")


class NodeConfigError(ValueError):
    """A node config this agent cannot run: an unknown key, another protocol version, a bad value."""


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, refusing keys it does not define."""
    if not isinstance(data, dict):
        raise NodeConfigError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    aliases = getattr(cls, "_ALIASES", {})
    kwargs = {}
    for key, value in data.items():
        name = aliases.get(key, key)
        if name not in fields:
            known = ", ".join(sorted(aliases.get(f, f) for f in ({v: k for k, v in aliases.items()}.get(n, n) for n in fields)))
            raise NodeConfigError(f"{where}: unknown key {key!r}; this agent (node protocol {PROTOCOL}) knows: {known}")
        nested = getattr(cls, "_NESTED", {}).get(name)
        kwargs[name] = _from_dict(nested, value, f"{where}.{key}") if nested and value is not None else value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise NodeConfigError(f"{where}: {e}") from None


def _to_dict(obj: Any) -> dict[str, Any]:
    aliases = {v: k for k, v in getattr(type(obj), "_ALIASES", {}).items()}
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = _to_dict(value)
        out[aliases.get(f.name, f.name)] = value
    return out


@dataclass
class Lifecycle:
    """The timeouts a node enforces itself (seconds; None = off)."""

    #: The scheduler ends the cluster after this long without a client.
    no_client_timeout: float | None = None
    #: The scheduler ends the cluster this long after it started.
    cluster_timeout: float | None = None
    #: How long a ``coiled.Cluster`` heartbeat counts as a client.
    heartbeat_grace: float = 15.0
    #: Workers end after their scheduler stops answering for this long.
    watchdog_timeout: float | None = None
    #: A worker node gives up on a scheduler it never reached after this long.
    first_contact_timeout: float | None = None


@dataclass
class SchedulerSettings:
    """The scheduler a node runs."""

    _ALIASES = {"class": "cls"}

    cls: str = "distributed.Scheduler"
    #: Keyword arguments for the class (``host``, ``port``, ``security`` are filled in).
    options: dict[str, Any] = field(default_factory=dict)
    port: int = 0
    dashboard_port: int = 0
    #: ``host:port`` for the dashboard; default this node's host and ``dashboard_port``.
    dashboard_address: str | None = None


@dataclass
class WorkerSettings:
    """The workers a node runs."""

    _ALIASES = {"class": "cls"}

    cls: str = "distributed.Nanny"
    #: How many workers start with the node (more may be started later through the scheduler).
    count: int = 0
    #: Workers are named ``<name_prefix><index>`` unless the node's add-on names them.
    name_prefix: str = "worker-"
    nthreads: int = 1
    memory_limit: int | str = "auto"
    gpus_per_worker: int = 0
    #: Device ids the node's workers share out (each gets ``gpus_per_worker`` of them).
    gpu_devices: list[Any] = field(default_factory=list)
    resources: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AddOnRef:
    """A backend's node add-on: ``object`` is ``package.module:Class`` (a
    :class:`~coiled_core.node.addons.NodeAddOn` subclass), ``settings`` its JSON settings."""

    object: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class NodeConfig:
    """One node's ``node.json``. See the module documentation for each key."""

    _NESTED = {"lifecycle": Lifecycle, "scheduler": SchedulerSettings, "workers": WorkerSettings, "addon": AddOnRef}

    cluster_name: str
    role: str
    protocol: int = PROTOCOL
    host: str | None = None
    scheduler_address: str | None = None
    environ: dict[str, str] = field(default_factory=dict)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    scheduler: SchedulerSettings | None = None
    workers: WorkerSettings | None = None
    tls: dict[str, str] | None = None
    tls_file: str | None = None
    addon: AddOnRef | None = None
    state_dir: str | None = None
    log_file: str | None = None
    log_max_bytes: int | None = None
    remove_on_end: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    multiprocessing_method: str = "forkserver"

    def __post_init__(self) -> None:
        if self.protocol != PROTOCOL:
            raise NodeConfigError(
                f"node config speaks node protocol {self.protocol!r}, but this agent speaks {PROTOCOL}; "
                "the node's coiled-core and the client's must be the same release"
            )
        if self.role not in NODE_ROLES:
            raise NodeConfigError(f"role: {self.role!r} is not one of {', '.join(NODE_ROLES)}")
        if self.role in ("scheduler", "combined") and self.scheduler is None:
            raise NodeConfigError(f"role {self.role!r} needs a 'scheduler' section")
        if self.role in ("worker", "combined") and self.workers is None:
            raise NodeConfigError(f"role {self.role!r} needs a 'workers' section")
        if self.role == "worker" and not self.scheduler_address:
            raise NodeConfigError("role 'worker' needs 'scheduler_address'")

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any) -> NodeConfig:
        """Read a config; raises :class:`NodeConfigError` for a version or key this agent does not know."""
        if isinstance(data, dict) and data.get("protocol", None) != PROTOCOL:
            version = data.get("protocol", "none")
            raise NodeConfigError(
                f"node config speaks node protocol {version}, but this agent speaks {PROTOCOL}; "
                "the node's coiled-core and the client's must be the same release"
            )
        return _from_dict(cls, data, "node config")

    @classmethod
    def from_json(cls, text: str) -> NodeConfig:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise NodeConfigError(f"node config is not JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def read(cls, path: str) -> NodeConfig:
        with open(path) as f:
            return cls.from_json(f.read())


# -- the agent's report --------------------------------------------------------------------
@dataclass
class WorkerReport:
    name: str
    pid: int | None = None


@dataclass
class AgentReport:
    """What a node agent reports in ``agent.json`` (when its config names a ``state_dir``)."""

    pid: int
    cluster_name: str | None = None
    #: starting, running, stopping, stopped or error.
    state: str = "starting"
    scheduler_address: str | None = None
    dashboard_url: str | None = None
    workers: list[WorkerReport] = field(default_factory=list)
    #: The node config's ``report``, echoed.
    report: dict[str, Any] = field(default_factory=dict)
    next_worker_index: int = 0
    started_at: float = 0.0
    stop_reason: str | None = None
    updated_at: float = 0.0
    protocol: int = PROTOCOL

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentReport:
        known = {f.name for f in dataclasses.fields(cls)}
        # Read leniently: a report is read back by whichever client looks, perhaps a newer one.
        values = {k: v for k, v in data.items() if k in known}
        values["workers"] = [WorkerReport(**{k: v for k, v in w.items() if k in ("name", "pid")}) for w in data.get("workers") or []]
        return cls(**values)


def write_report(state_dir: str, report: AgentReport) -> None:
    """Write ``report`` atomically to ``<state_dir>/agent.json``, readable by this user only
    (it holds the cluster's spec and its environ). Raises OSError."""
    path = os.path.join(state_dir, STATE_FILE)
    # Unique per call: the event loop and a thread may both report.
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(report.to_dict(), f)
    os.replace(tmp, path)


def read_report(state_dir: str) -> AgentReport | None:
    """The report in ``state_dir``, or None if there is none (yet) or it cannot be read."""
    try:
        with open(os.path.join(state_dir, STATE_FILE)) as f:
            return AgentReport.from_dict(json.load(f))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


# -- the builder (client side) -------------------------------------------------------------
def heartbeat_interval() -> float:
    """Seconds between a ``coiled.Cluster`` object's heartbeats to its scheduler."""
    from dask.utils import parse_timedelta

    from coiled_core import config

    return float(parse_timedelta(config.get("heartbeat-interval") or "5s", default="seconds"))


def lifecycle_settings(spec: ClusterSpec) -> Lifecycle:
    """The timeouts a node of ``spec``'s cluster enforces itself."""
    from dask.utils import parse_timedelta

    from coiled_core import config

    watchdog = config.get("watchdog-timeout")
    return Lifecycle(
        no_client_timeout=spec.no_client_timeout,
        cluster_timeout=spec.cluster_timeout,
        # Three missed heartbeats and a Cluster object no longer counts as a client.
        heartbeat_grace=3 * heartbeat_interval(),
        watchdog_timeout=float(parse_timedelta(watchdog, default="seconds")) if watchdog else None,
        # A worker node may boot before its scheduler, but not wait longer than a start may take.
        first_contact_timeout=spec.timeout,
    )


def worker_name_prefix(cluster_name: str) -> str:
    """The prefix of every worker name of a cluster: ``<cluster>-worker-``."""
    return f"{cluster_name}-worker-"


def build_node_config(
    spec: ClusterSpec,
    role: str,
    *,
    scheduler_address: str | None = None,
    host: str | None = None,
    worker_count: int | None = None,
    memory_limit: int | str | None = None,
    gpu_devices: list[Any] | None = None,
    scheduler_port: int = 0,
    dashboard_port: int = 0,
    include_environ: bool = True,
    addon: AddOnRef | None = None,
) -> NodeConfig:
    """The node config of one node of ``spec``'s cluster.

    Parameters:
        spec: the validated cluster spec (``provision``'s ``spec``, or
            ``ClusterSpec.model_validate(record.spec)`` later).
        role: ``"scheduler"``, ``"worker"`` or ``"combined"`` (scheduler and workers in one agent).
        scheduler_address: where a worker node's scheduler listens (required for ``"worker"``).
        host: the address to bind to (default: the node's own).
        worker_count: workers this node starts with (default: ``spec.n_workers`` for a combined
            node, 1 for a worker node).
        memory_limit: each worker's memory limit (default ``spec.worker_memory``); a VM backend
            may pass what the machine actually has.
        gpu_devices: device ids to share out among the workers (default ``0..worker_gpu-1``).
        scheduler_port, dashboard_port: fixed ports (default: any free one).
        include_environ: False keeps ``spec.environ`` out of the config, for a backend that
            delivers it through its add-on (the config may end up in readable node metadata).
        addon: the backend's node add-on.

    Returns:
        A :class:`NodeConfig`; lifecycle timeouts are always included.

    Example::

        config = build_node_config(spec, "combined", host="127.0.0.1")
        path.write_text(config.to_json())
    """
    if role not in NODE_ROLES:
        raise ValueError(f"role must be one of {', '.join(NODE_ROLES)}, not {role!r}")
    scheduler = workers = None
    if role in ("scheduler", "combined"):
        scheduler = SchedulerSettings(
            cls=spec.scheduler_class, options=dict(spec.scheduler_options), port=scheduler_port, dashboard_port=dashboard_port
        )
    if role in ("worker", "combined"):
        count = worker_count if worker_count is not None else (spec.n_workers if role == "combined" else 1)
        workers = WorkerSettings(
            cls=spec.worker_class,
            count=count,
            name_prefix=worker_name_prefix(spec.name),
            nthreads=spec.worker_cpu,
            memory_limit=memory_limit if memory_limit is not None else spec.worker_memory,
            gpus_per_worker=spec.worker_gpu,
            gpu_devices=list(gpu_devices) if gpu_devices is not None else list(range(spec.worker_gpu)),
            options=dict(spec.worker_options),
        )
    return NodeConfig(
        cluster_name=spec.name,
        role=role,
        host=host,
        scheduler_address=scheduler_address,
        environ=dict(spec.environ) if include_environ else {},
        lifecycle=lifecycle_settings(spec),
        scheduler=scheduler,
        workers=workers,
        addon=addon,
        report={"created_at": time.time()},
    )
