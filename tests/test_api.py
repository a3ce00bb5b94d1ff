"""``coiled.list_clusters``, ``delete_cluster``, ``cluster_logs`` and ``gc``, on real local clusters."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dask.config
import psutil
import pytest

import coiled
from coiled_core import api
from coiled_core.errors import (
    BackendNotFoundError,
    ClusterNotFoundError,
    ClusterSpecError,
)
from coiled_core.records import ClusterState
from coiled_core.testing import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
from local_clusters import (  # noqa: E402
    delete_quietly,
    reaping,
    record_of,
    running,
    start_detached,
    unique,
)


@pytest.fixture(scope="module")
def live_cluster():
    name = unique("api-live")
    try:
        yield start_detached(name)
    finally:
        delete_quietly(name)


def test_functions_are_exported_from_coiled():
    assert coiled.list_clusters is api.list_clusters
    assert coiled.delete_cluster is api.delete_cluster
    assert coiled.cluster_logs is api.cluster_logs
    assert coiled.gc is api.gc
    assert coiled.list_backends is api.list_backends
    assert coiled.ClusterNotFoundError is ClusterNotFoundError
    assert {"Cluster", "ClusterRecord", "ClusterState", "CoiledError", "ProvisionError"} <= set(coiled.__all__)
    assert {"list_clusters", "delete_cluster", "cluster_logs", "list_backends"} <= set(coiled.__all__)
    # A star import must not shadow the standard library's gc module.
    assert "gc" not in coiled.__all__


def test_importing_coiled_stays_light():
    code = "import sys, coiled; print(sorted(m for m in ('rich', 'coiled_core.cli') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_list_backends_names_local():
    entries = {e.name: e for e in coiled.list_backends()}
    assert "local" in entries and entries["local"].error is None


def test_list_clusters_shows_a_live_cluster(live_cluster):
    record = record_of(live_cluster)
    assert record.backend == "local"
    assert record.state == ClusterState.running
    assert record.dashboard_url and record.dashboard_url.startswith("http://127.0.0.1:")
    assert running(record.backend_ids["pid"])
    # Explicitly naming the default backend and its options gives the same answer.
    assert live_cluster in [r.name for r in coiled.list_clusters(backend="local", backend_options={})]


def test_options_default_to_the_per_backend_config(live_cluster, tmp_path, state_root):
    with dask.config.set({"coiled.backend-options": {"local": {"directory": str(tmp_path)}}}):
        assert coiled.list_clusters() == []
        assert coiled.gc() == []
        with pytest.raises(ClusterNotFoundError):
            coiled.cluster_logs(live_cluster)
        # Given options replace the configured ones.
        assert live_cluster in [r.name for r in coiled.list_clusters(backend_options={"directory": state_root})]


def test_backend_defaults_to_the_config():
    with dask.config.set({"coiled.backend": "no-such-backend"}):
        with pytest.raises(BackendNotFoundError, match="'no-such-backend'.*'local'"):
            coiled.list_clusters()
        # An explicit backend wins over the config.
        assert isinstance(coiled.list_clusters(backend="local"), list)
    with pytest.raises(BackendNotFoundError, match="'nope'"):
        coiled.gc(backend="nope")


def test_bad_backend_options_are_refused():
    with pytest.raises(ClusterSpecError, match="did you mean 'host'"):
        coiled.list_clusters(backend_options={"hots": "0.0.0.0"})
    with pytest.raises(ClusterSpecError, match="mapping"):
        coiled.list_clusters(backend_options="directory=/tmp")  # type: ignore[arg-type]
    with dask.config.set({"coiled.backend-options": {"local": {"hots": 1}}}):
        with pytest.raises(ClusterSpecError, match="'hots'"):
            coiled.gc()


def test_cluster_logs(live_cluster):
    logs = coiled.cluster_logs(live_cluster)
    assert logs and all(isinstance(text, str) for text in logs.values())
    assert "Scheduler" in "".join(logs.values())
    tailed = coiled.cluster_logs(live_cluster, tail=3)
    assert tailed.keys() == logs.keys()
    for key, text in tailed.items():
        assert 0 < len(text.splitlines()) <= 3
        assert logs[key].endswith(text)
    for bad in (0, -1, "3", True):
        with pytest.raises(ClusterSpecError, match="tail"):
            coiled.cluster_logs(live_cluster, tail=bad)


def test_unknown_cluster_names_close_matches(live_cluster):
    typo = live_cluster[:-1] + ("x" if live_cluster[-1] != "x" else "y")
    with pytest.raises(ClusterNotFoundError) as info:
        coiled.delete_cluster(typo)
    message = str(info.value)
    assert repr(typo) in message and "'local'" in message and f"did you mean {live_cluster!r}" in message
    with pytest.raises(ClusterNotFoundError, match=repr(typo)):
        coiled.cluster_logs(typo)
    # Names no cluster can have never reach the backend (no paths into its state directory).
    for bad in ("../" + live_cluster, "a b", ""):
        with pytest.raises(ClusterNotFoundError, match="cluster names are"):
            coiled.delete_cluster(bad)
    # The live cluster was not touched by any of this.
    assert record_of(live_cluster).state == ClusterState.running


def test_delete_cluster_from_another_process(state_root):
    name = unique("api-delete")
    try:
        start_detached(name)
        pid = record_of(name).backend_ids["pid"]
        assert running(pid)
        script = textwrap.dedent(
            f"""
            import coiled
            record = coiled.delete_cluster({name!r})
            print(record.name, record.state.value)
            """
        )
        with reaping(pid):
            result = subprocess.run(
                [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
            )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [name, "stopped"]
        assert not running(pid)
        assert record_of(name).state == ClusterState.stopped
        # Its logs outlive it, and deleting again is harmless.
        assert "Scheduler" in "".join(coiled.cluster_logs(name).values())
        assert coiled.delete_cluster(name).state == ClusterState.stopped
        assert os.path.isdir(os.path.join(state_root, name))
    finally:
        delete_quietly(name)


def test_gc_removes_what_a_killed_cluster_left_and_keeps_live_ones(live_cluster, state_root):
    name = unique("api-gc")
    try:
        start_detached(name)
        directory = os.path.join(state_root, name)
        agent = psutil.Process(record_of(name).backend_ids["pid"])
        agent.kill()
        agent.wait(timeout=30)
        wait_until(lambda: record_of(name).state != ClusterState.running, timeout=10, message="the agent's death")

        removed = coiled.gc()
        assert any(repr(name) in line for line in removed), removed
        assert not os.path.exists(directory)
        assert name not in [r.name for r in coiled.list_clusters()]
        # Nothing refers to its directory any more (forked workers included).
        for proc in psutil.process_iter(["cmdline", "status"]):
            if proc.info["status"] != psutil.STATUS_ZOMBIE:
                assert not any(directory in arg for arg in proc.info["cmdline"] or []), proc
        # The live cluster is untouched.
        live = record_of(live_cluster)
        assert live.state == ClusterState.running and running(live.backend_ids["pid"])
        assert os.path.isdir(os.path.join(state_root, live_cluster))
        assert "Scheduler" in "".join(coiled.cluster_logs(live_cluster).values())
        # Once clean, there is nothing left to do.
        assert coiled.gc() == []
    finally:
        delete_quietly(name)
