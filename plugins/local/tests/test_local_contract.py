"""The local backend passes the contract suite every backend must pass."""

import os
import signal

import psutil

from coiled_core.testing import BackendContract

from coiled_local import processes


class TestLocalContract(BackendContract):
    backend = "local"

    def assert_nothing_left(self, record):
        directory = record.backend_ids["directory"]
        leftovers = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmdline = proc.info["cmdline"] or []
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(directory in arg for arg in cmdline):
                leftovers.append(proc.pid)
        assert leftovers == []
        pids = [record.backend_ids.get("pid")] + [w.backend_ids.get("pid") for w in record.workers]
        for pid in filter(None, pids):
            if psutil.pid_exists(pid):
                assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE or str(directory) not in " ".join(
                    psutil.Process(pid).cmdline()
                )
        assert processes.agent_process(processes.Path(directory), record.backend_ids.get("pid")) is None

    def freeze_scheduler(self, record):
        pid = record.backend_ids["pid"]
        os.kill(pid, signal.SIGSTOP)
        return lambda: os.kill(pid, signal.SIGCONT)

    def running_worker_processes(self, record):
        pids = [w.backend_ids.get("pid") for w in record.workers]
        alive = 0
        for pid in filter(None, pids):
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive += 1
            except psutil.NoSuchProcess:
                pass
        return alive
