"""Hook implementations of the ``local`` backend.

One node agent per cluster runs the scheduler and forks every worker (this machine is the one
node). The agent is detached from the creating process, so the cluster survives it and can be
found again by name; the agent's idle timeout, not the client, ends it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
import warnings
from datetime import datetime, timezone

import psutil
from dask.utils import format_bytes

from coiled_core import credentials, hookimpl
from coiled_core.errors import ProvisionError
from coiled_core.node.agent import START_WORKERS_HANDLER, STOP_WORKERS_HANDLER
from coiled_core.node.config import lifecycle_settings
from coiled_core.records import ClusterRecord, ClusterState, WorkerRecord
from coiled_core.security import ClusterTLS
from coiled_core.spec import ClusterSpec
from coiled_core.store import Store

from coiled_local import environments, processes
from coiled_local.options import LocalOptions


@hookimpl
def backend_options_model() -> type[LocalOptions]:
    return LocalOptions


def _warn_if_oversubscribed(spec: ClusterSpec) -> None:
    cpus = spec.n_workers * spec.worker_cpu
    memory = spec.n_workers * spec.worker_memory
    available_cpus = os.cpu_count() or 1
    available_memory = psutil.virtual_memory().total
    over = []
    if cpus > available_cpus:
        over.append(f"{cpus} CPUs ({available_cpus} here)")
    if memory > available_memory:
        over.append(f"{format_bytes(memory)} of memory ({format_bytes(available_memory)} here)")
    if over:
        warnings.warn(
            f"cluster {spec.name!r} asks for {' and '.join(over)}; the local backend runs it anyway, "
            "sharing this machine (lower worker_cpu / worker_memory to silence this)",
            UserWarning,
            stacklevel=2,
        )


def _tls(name: str) -> ClusterTLS:
    material = ClusterTLS.load(Store(), name)
    if material is None:
        raise ProvisionError(f"cluster {name!r} asks for TLS but the store holds no certificates for it")
    return material


def _node_tls(spec: ClusterSpec) -> dict[str, str] | None:
    """The scheduler's and workers' TLS material, which the agent reads once and deletes."""
    if not spec.security:
        return None
    material = _tls(spec.name)
    return {**material.to_node_config("scheduler"), **material.to_node_config("worker")}


def _node_config(spec: ClusterSpec, options: LocalOptions, directory, gpus: list[str]) -> dict:
    scheduler_options = dict(spec.scheduler_options)
    # When the cluster ends by itself, its agent deletes the credentials the store keeps for it.
    remove_on_end = []
    if spec.security:
        store_directory = credentials.local_directory(Store(), spec.name)
        if store_directory:
            remove_on_end.append(store_directory)
    return {
        "remove_on_end": remove_on_end,
        "cluster_name": spec.name,
        "state_dir": str(directory),
        "host": options.host,
        "environ": spec.environ,
        "lifecycle": lifecycle_settings(spec),
        "scheduler": {"class": spec.scheduler_class, "options": scheduler_options},
        "workers": {
            "class": spec.worker_class,
            "names": [f"{spec.name}-worker-{i}" for i in range(spec.n_workers)],
            "name_prefix": f"{spec.name}-worker-",
            "nthreads": spec.worker_cpu,
            "memory_limit": spec.worker_memory,
            "gpus_per_worker": spec.worker_gpu,
            "gpu_devices": gpus,
            "options": spec.worker_options,
        },
        "report": {"spec": spec.model_dump(mode="json"), "created_at": datetime.now(timezone.utc).isoformat()},
    }


@hookimpl
def provision(spec: ClusterSpec, options: LocalOptions) -> ClusterRecord:
    python, extra_environ = sys.executable, {}
    if spec.software is not None:
        from coiled_core.software import get_software_info

        software = get_software_info(spec.software)
        python, _ = environments.ensure_environment(software, options)
        extra_environ = environments.agent_environment(options)
    _warn_if_oversubscribed(spec)
    gpus = processes.detect_gpus() if spec.worker_gpu else []
    if spec.worker_gpu and not gpus:
        warnings.warn(
            f"worker_gpu={spec.worker_gpu} but this machine shows no GPU; workers get the GPU "
            "resource and CUDA_VISIBLE_DEVICES anyway",
            UserWarning,
            stacklevel=2,
        )
    directory = processes.cluster_dir(options, spec.name)
    node_config = _node_config(spec, options, directory, gpus)
    tls = _node_tls(spec)
    processes.prepare_directory(directory, spec.name)
    process = processes.launch_agent(
        directory, node_config, {**spec.environ, **extra_environ}, python=str(python), tls=tls
    )
    try:
        processes.wait_for_scheduler(directory, process, time.monotonic() + spec.timeout)
    except BaseException:
        processes.stop_agent(directory, process.pid, grace=5)
        raise
    processes.mark_claim_provisioned(options, spec.name)
    record = processes.record_from_directory(spec.name, directory)
    assert record is not None
    # Until the agent has started them, report the workers it was asked for.
    if not record.workers:
        record.workers = [WorkerRecord(name=n) for n in node_config["workers"]["names"]]
    return record


async def _call_agent(address: str, handler: str, **kwargs):
    from distributed.core import rpc

    connection_args = {}
    if address.startswith("tls://"):
        name = kwargs.pop("cluster_name")
        connection_args = _tls(name).to_security("client").get_connection_args("client")
    kwargs.pop("cluster_name", None)
    async with rpc(address, timeout=30, connection_args=connection_args) as scheduler:
        return await getattr(scheduler, handler)(**kwargs)


@hookimpl
def scale(record: ClusterRecord, n_workers: int, retired: list[str]) -> ClusterRecord:
    directory = processes.cluster_dir(_options(record), record.name)
    if retired:
        asyncio.run(_call_agent(record.scheduler_address, STOP_WORKERS_HANDLER, names=retired, cluster_name=record.name))
    current = [n for n in record.worker_names if n not in set(retired)]
    missing = n_workers - len(current)
    if missing > 0:
        try:
            asyncio.run(_call_agent(record.scheduler_address, START_WORKERS_HANDLER, count=missing, cluster_name=record.name))
        except Exception as e:
            raise ProvisionError(f"starting {missing} more workers failed: {e}\n{processes.log_tail(directory)}") from e
    updated = processes.record_from_directory(record.name, directory)
    if updated is None:
        raise ProvisionError(f"cluster {record.name!r} disappeared while scaling")
    return updated


def _options(record: ClusterRecord) -> LocalOptions:
    return LocalOptions.model_validate(record.spec.get("backend_options") or {})


@hookimpl
def claim_name(name: str, options: LocalOptions) -> bool:
    return processes.claim(options, name)


@hookimpl
def describe(name: str, options: LocalOptions) -> ClusterRecord | None:
    return processes.record_from_directory(name, processes.cluster_dir(options, name))


@hookimpl
def teardown(record: ClusterRecord) -> ClusterRecord:
    directory = processes.cluster_dir(_options(record), record.name)
    current = processes.record_from_directory(record.name, directory) or record
    processes.stop_agent(directory, current.backend_ids.get("pid"))
    processes.release_claim(_options(record), record.name)
    final = processes.record_from_directory(record.name, directory) or current
    return final.model_copy(update={"state": ClusterState.stopped})


@hookimpl
def dashboard_url(record: ClusterRecord) -> str | None:
    return record.dashboard_url


@hookimpl
def list_clusters(options: LocalOptions) -> list[ClusterRecord]:
    root = processes.state_root(options)
    if not root.is_dir():
        return []
    directories = (d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith("."))
    records = (processes.record_from_directory(d.name, d) for d in directories)
    return [r for r in records if r is not None]


@hookimpl
def gc(options: LocalOptions) -> list[str]:
    removed = []
    root = processes.state_root(options)
    if not root.is_dir():
        return removed
    for directory in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if not processes.is_marked(directory):
            continue  # not made by this backend: never touched
        record = processes.record_from_directory(directory.name, directory)
        if record is not None and record.state.is_live:
            continue
        if record is None and processes.claim_dir(options, directory.name).is_dir():
            continue  # being created right now: its agent has not reported yet
        for stray in processes.cluster_processes(directory):
            stray.kill()
            removed.append(f"killed process {stray.pid} left by cluster {directory.name!r}")
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(f"deleted state and logs of stopped cluster {directory.name!r}")
    claims = root / processes.CLAIMS_DIR
    for claim in sorted(claims.iterdir()) if claims.is_dir() else []:
        if claim.name.startswith(".released-"):
            shutil.rmtree(claim, ignore_errors=True)
        elif processes.claim_is_stale(options, claim.name):
            processes.release_claim(options, claim.name)
            removed.append(f"released stale name claim {claim.name!r}")
    return removed


@hookimpl
def logs(record: ClusterRecord, tail: int | None) -> dict[str, str]:
    directory = processes.cluster_dir(_options(record), record.name)
    # One node: the scheduler and every worker write to the agent's log.
    return {"node": processes.log_tail(directory, tail or 0)}

