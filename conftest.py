"""Test-wide isolation: local clusters live in a temporary directory and none outlives the run."""

import os
import shutil
import tempfile

import dask.config
import psutil
import pytest

# Set before anything imports dask.config, so every process the tests start inherits it.
_STATE_ROOT = tempfile.mkdtemp(prefix="coiled-test-clusters-")
os.environ["DASK_COILED__LOCAL__DIRECTORY"] = _STATE_ROOT
_STORE = tempfile.mkdtemp(prefix="coiled-test-store-")
os.environ["DASK_COILED__STORE"] = _STORE
dask.config.set({"coiled.local.directory": _STATE_ROOT, "coiled.store": _STORE})


def agent_processes() -> list[psutil.Process]:
    """Node agents started from this test run's state directory."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "coiled_core.node" in cmdline and any(arg.startswith(_STATE_ROOT) for arg in cmdline):
            found.append(proc)
    return found


@pytest.fixture(scope="session", autouse=True)
def no_cluster_outlives_the_tests():
    yield
    leftovers = agent_processes()
    for proc in leftovers:
        proc.kill()
    # Built software environments are large: leave no temporary state behind.
    shutil.rmtree(_STATE_ROOT, ignore_errors=True)
    shutil.rmtree(_STORE, ignore_errors=True)
    assert not leftovers, f"node agents left running: {[p.pid for p in leftovers]}"


@pytest.fixture
def state_root() -> str:
    return _STATE_ROOT
