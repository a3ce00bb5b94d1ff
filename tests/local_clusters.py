"""Helpers shared by the API and CLI tests: small real local clusters, made and removed by name."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid

import psutil

import coiled
from coiled_core.errors import ClusterNotFoundError

SMALL = {"n_workers": 1, "worker_cpu": 1, "worker_memory": "1 GiB"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def start_detached(name: str) -> str:
    """Create a real local cluster that outlives its Cluster object (closed, not shut down)."""
    cluster = coiled.Cluster(name=name, shutdown_on_close=False, **SMALL)
    cluster.close()
    return name


def delete_quietly(name: str) -> None:
    try:
        coiled.delete_cluster(name)
    except ClusterNotFoundError:
        pass


def running(pid: int | None) -> bool:
    """Whether ``pid`` is a running process (a zombie awaiting its parent's wait is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, TypeError, ValueError):
        return False


def record_of(name: str):
    (record,) = [r for r in coiled.list_clusters() if r.name == name]
    return record


@contextlib.contextmanager
def reaping(pid: int):
    """Reap ``pid`` (an agent this process started) as soon as it exits, while the block runs.

    Another process stopping the agent cannot reap it: until its parent (this process) does, it
    is a zombie, and the local backend's ``stop_agent`` would wait its whole 20 s grace period
    for that zombie to go away. A real creator that stays alive has the same problem.
    """
    stop = threading.Event()

    def reap() -> None:
        while not stop.is_set():
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            stop.wait(0.05)

    thread = threading.Thread(target=reap, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
