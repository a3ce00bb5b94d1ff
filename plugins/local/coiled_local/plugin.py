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

from coiled_core.backend import (
    HOOK_API_VERSION,
    START_WORKERS_HANDLER,
    STOP_WORKERS_HANDLER,
    ClusterRecord,
    ClusterSpec,
    ClusterSpecError,
    ClusterState,
    ClusterTLS,
    NodeConfig,
    ProvisionError,
    SoftwareEnvironment,
    TLSPolicy,
    WorkerRecord,
    build_node_config,
    credentials_directory,
    hookimpl,
    past_lifetime,
    software_environment,
)
from coiled_local import environments, processes
from coiled_local.options import LocalOptions

__all__ = ["HOOK_API_VERSION"]


@hookimpl
def backend_options_model() -> type[LocalOptions]:
    return LocalOptions


@hookimpl
def tls_policy(options: LocalOptions) -> TLSPolicy:
    # On loopback TLS is opt-in (security=True); a cluster bound beyond it runs code for anyone
    # who reaches it, so there TLS is on and cannot be turned off.
    exposed = options.reachable_from_other_machines
    return TLSPolicy(default=exposed, required=exposed)


@hookimpl
def preflight(spec: ClusterSpec, options: LocalOptions) -> None:
    if spec.container is not None:
        raise ClusterSpecError(
            f"container: the local backend runs Dask in Python environments on this machine and cannot "
            f"run the image {spec.container!r}; leave container out to use this Python environment (or "
            "software= for a built one), or use a backend that runs containers"
        )
    if spec.software is not None:
        # An unknown environment, or one this machine cannot build, fails here.
        environments.check_buildable(software_environment(spec))


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


def _node_config(spec: ClusterSpec, options: LocalOptions, gpus: list[str]) -> NodeConfig:
    config = build_node_config(spec, "combined", host=options.host, gpu_devices=gpus)
    # When the cluster ends by itself, its agent deletes the credentials the store keeps for it.
    if spec.security:
        store_directory = credentials_directory("local", spec.name)
        if store_directory:
            config.remove_on_end.append(store_directory)
    config.report = {"spec": spec.model_dump(mode="json"), "created_at": datetime.now(timezone.utc).isoformat()}
    return config


def _node_tls(tls: ClusterTLS | None) -> dict[str, str] | None:
    """The scheduler's and workers' TLS material, which the agent reads once and deletes."""
    if tls is None:
        return None
    return {**tls.to_node_config("scheduler"), **tls.to_node_config("worker")}


@hookimpl
def provision(spec: ClusterSpec, options: LocalOptions, tls: ClusterTLS | None) -> ClusterRecord:
    if spec.security and tls is None:
        raise ProvisionError("security is on but the core handed over no TLS material")
    python, extra_environ = sys.executable, {}
    if spec.software is not None:
        software = software_environment(spec)
        python, _ = environments.ensure_environment(software, options)
        extra_environ = environments.agent_environment(options, software)
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
    node_config = _node_config(spec, options, gpus)
    processes.prepare_directory(directory, spec.name)
    process = processes.launch_agent(
        directory, node_config, {**spec.environ, **extra_environ}, python=str(python), tls=_node_tls(tls)
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
        assert node_config.workers is not None
        prefix = node_config.workers.name_prefix
        record.workers = [WorkerRecord(name=f"{prefix}{i}") for i in range(node_config.workers.count)]
    return record


async def _call_agent(address: str, handler: str, tls: ClusterTLS | None, **kwargs):
    from distributed.core import rpc

    connection_args = {}
    if address.startswith("tls://"):
        if tls is None:
            raise ProvisionError("the cluster uses TLS but no client credentials were given to reach it")
        connection_args = tls.client_connection_args()
    async with rpc(address, timeout=30, connection_args=connection_args) as scheduler:
        return await getattr(scheduler, handler)(**kwargs)


@hookimpl
def scale(record: ClusterRecord, options: LocalOptions, n_workers: int, retired: list[str], tls: ClusterTLS | None) -> ClusterRecord:
    directory = processes.cluster_dir(options, record.name)
    if retired:
        asyncio.run(_call_agent(record.scheduler_address, STOP_WORKERS_HANDLER, tls, names=retired))
    current = [n for n in record.worker_names if n not in set(retired)]
    missing = n_workers - len(current)
    if missing > 0:
        try:
            asyncio.run(_call_agent(record.scheduler_address, START_WORKERS_HANDLER, tls, count=missing))
        except Exception as e:
            raise ProvisionError(f"starting {missing} more workers failed: {e}\n{processes.log_tail(directory)}") from e
    updated = processes.record_from_directory(record.name, directory)
    if updated is None:
        raise ProvisionError(f"cluster {record.name!r} disappeared while scaling")
    return updated


@hookimpl
def claim_name(name: str, options: LocalOptions) -> bool:
    return processes.claim(options, name)


@hookimpl
def describe(name: str, options: LocalOptions) -> ClusterRecord | None:
    return processes.record_from_directory(name, processes.cluster_dir(options, name))


@hookimpl
def teardown(record: ClusterRecord, options: LocalOptions) -> ClusterRecord:
    directory = processes.cluster_dir(options, record.name)
    current = processes.record_from_directory(record.name, directory) or record
    processes.stop_agent(directory, current.backend_ids.get("pid"))
    processes.release_claim(options, record.name)
    final = processes.record_from_directory(record.name, directory) or current
    return final.model_copy(update={"state": ClusterState.stopped})


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
            if not past_lifetime(record):
                continue
            # Its agent should have ended it long ago (a frozen node): the lifetime cap is a promise.
            processes.stop_agent(directory, record.backend_ids.get("pid"), grace=5)
            removed.append(f"stopped cluster {directory.name!r}, past its lifetime cap")
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
def logs(record: ClusterRecord, options: LocalOptions, tail: int | None) -> dict[str, str]:
    directory = processes.cluster_dir(options, record.name)
    # One node: the scheduler and every worker write to the agent's log.
    return {"node": processes.log_tail(directory, tail or 0)}



@hookimpl
def build_environment(software: SoftwareEnvironment, options: LocalOptions) -> str:
    """Build the environment where this machine's clusters run it (``coiled env build``)."""
    python, built = environments.ensure_environment(software, options)
    where = python.parent.parent
    if built:
        return f"built software environment {software.name!r} in {where}"
    return f"software environment {software.name!r} is already built, in {where}"
