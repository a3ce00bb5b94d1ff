"""The contract suite for the subprocess backend; the world it checks is this machine's process table."""

import shutil
import signal
import tempfile
from pathlib import Path

import psutil
import pytest

from coiled_core.testing import BackendContract

# One directory for the whole run, shared with the other "sessions" the suite starts as processes.
DIRECTORY = Path(tempfile.mkdtemp(prefix="coiled-subprocess-tests-"))
TOKEN = "COILED_SUBPROCESS_TOKEN"


def processes(record):
    """Every live process marked as one of the cluster's nodes' (agents, their forkservers and workers)."""
    prefix = record.backend_ids["token"] + ":"  # each process's mark is "<token>:<node>"
    return [p for p in psutil.process_iter(["environ"]) if (p.info["environ"] or {}).get(TOKEN, "").startswith(prefix)]


class TestSubprocessContract(BackendContract):
    backend = "subprocess"
    backend_options = {"directory": str(DIRECTORY)}
    # One worker node per cluster (each node is a whole agent process); the scaling tests run more.
    cluster_kwargs = {"n_workers": 1, "worker_cpu": 1, "worker_memory": "1 GiB"}

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _remove_directory(cls):
        yield
        # A test that failed half-way may have left a cluster running (the frozen-scheduler test does
        # not tear down when its wait fails): stop everything in the directory before deleting it.
        backend, options = cls().backend_handle()
        for record in backend.list_clusters(options):
            backend.teardown(record, options)
        shutil.rmtree(DIRECTORY, ignore_errors=True)

    def assert_nothing_left(self, record):
        assert processes(record) == []
        cdir = DIRECTORY / record.name
        secrets = [cdir / "claim", *cdir.glob("tls/*"), *cdir.glob("*/tls.json")]
        assert [str(p) for p in secrets if p.exists()] == []

    def freeze_scheduler(self, record):
        agent = psutil.Process(int((DIRECTORY / record.name / "scheduler" / "pid").read_text()))
        assert agent in processes(record)  # never signal a process that is not this cluster's
        agent.send_signal(signal.SIGSTOP)
        return lambda: agent.send_signal(signal.SIGCONT)

    def running_worker_processes(self, record):
        # Count worker nodes that still have a process (an agent and what it forks share its mark).
        nodes = {p.info["environ"][TOKEN].split(":", 1)[1] for p in processes(record)}
        return len(nodes - {"scheduler"})
