"""The worker watchdog ends a worker whose scheduler froze, and its nanny does not bring it back."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from coiled_core.node.watchdog import TIMEOUT_VARIABLE


@pytest.fixture
def scheduler(tmp_path):
    """A real scheduler in a process of its own (to be frozen with SIGSTOP)."""
    file = tmp_path / "scheduler.json"
    proc = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                             "--port", "0", "--no-dashboard", "--scheduler-file", str(file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not file.exists() or not file.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        yield proc, json.loads(file.read_text())["address"]
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()


def test_a_worker_of_a_frozen_scheduler_ends_and_its_nanny_with_it(scheduler):
    from distributed import Nanny
    from distributed.core import Status

    proc, address = scheduler

    async def run() -> tuple[Status, int]:
        nanny = await Nanny(address, nthreads=1, preload=["coiled_core.node.watchdog"],
                            env={TIMEOUT_VARIABLE: "2"}, death_timeout=60)
        try:
            first_worker = nanny.process.process.pid
            os.kill(proc.pid, signal.SIGSTOP)
            deadline = time.monotonic() + 45
            while nanny.status != Status.closed and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            # Restarted workers would each be a new process under the nanny.
            return nanny.status, first_worker
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            await nanny.close(timeout=5)

    status, first_worker = asyncio.run(run())
    assert status == Status.closed, f"the nanny is {status}: it restarted the worker the watchdog ended"
    with pytest.raises(ProcessLookupError):
        os.kill(first_worker, 0)
