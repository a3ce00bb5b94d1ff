"""The local backend touches only what it made: processes, directories, files and credentials."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from distributed import Client

import coiled
from coiled_core.errors import ClusterSpecError, ProvisionError
from coiled_core.records import ClusterState, TLSPolicy
from coiled_core.store import Store
from coiled_core.testing import wait_until
from coiled_core.testing.contract import dashboard_ssl_context, stored_credentials

from coiled_local.options import LocalOptions
from coiled_local.plugin import tls_policy

SMALL = {"n_workers": 1, "worker_cpu": 1, "worker_memory": "1 GiB", "show_widget": False}


def _directory(cluster) -> str:
    return cluster.record.backend_ids["directory"]


def _bystander(*args: str, cwd: str | None = None) -> subprocess.Popen:
    """A process of this user that is not a cluster's (a shell in its directory, a tail -f ...)."""
    return subprocess.Popen(list(args), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _alive(process: subprocess.Popen) -> bool:
    return process.poll() is None


# -- item 1: processes -------------------------------------------------------------------------


def test_shutting_down_one_cluster_leaves_a_cluster_whose_name_it_prefixes_running():
    name = f"pfx-{os.getpid()}"
    first = coiled.Cluster(name=name, wait_for_workers=True, **SMALL)
    second = coiled.Cluster(name=f"{name}-b", wait_for_workers=True, **SMALL)
    try:
        first.shutdown()
        assert second.state is ClusterState.running
        with Client(second) as client:
            assert client.submit(lambda: "still here").result() == "still here"
    finally:
        first.close()
        second.shutdown()


def test_teardown_and_gc_kill_no_bystander_but_every_process_of_the_cluster(tmp_path):
    cluster = coiled.Cluster(wait_for_workers=True, shutdown_on_close=False, **SMALL)
    directory = _directory(cluster)
    log = os.path.join(directory, "agent.log")
    tail = _bystander("tail", "-f", log)
    shell = _bystander("sleep", "300", cwd=directory)
    # A command line naming the directory (as a user's script might) is not the cluster's either.
    script = _bystander(sys.executable, "-c", "import time; time.sleep(300)", directory, cwd=directory)
    try:
        with Client(cluster) as client:
            # A process a task starts in a session of its own is still the cluster's.
            child = client.submit(
                lambda: __import__("subprocess").Popen(["sleep", "300"], start_new_session=True).pid
            ).result()
        assert psutil.pid_exists(child)
        cluster.shutdown()
        wait_until(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
                   30, message="the task's child to be killed with its cluster")
        assert _alive(tail) and _alive(shell) and _alive(script)
        # gc, called from a process sitting in the cluster's directory with its path in its
        # command line, deletes the stopped cluster's state and kills nobody.
        gc = subprocess.run(
            [sys.executable, "-c", "import coiled, sys; print(coiled.gc())", directory],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert gc.returncode == 0, gc.stderr[-2000:]
        assert f"deleted state and logs of stopped cluster {cluster.name!r}" in gc.stdout
        assert _alive(tail) and _alive(shell) and _alive(script)
        assert not os.path.exists(directory)
    finally:
        for process in (tail, shell, script):
            process.kill()
            process.wait()


def test_gc_kills_the_leftovers_of_a_dead_agent_and_nothing_else():
    cluster = coiled.Cluster(wait_for_workers=True, shutdown_on_close=False, **SMALL)
    directory = _directory(cluster)
    with Client(cluster) as client:
        leftover = client.submit(
            lambda: __import__("subprocess").Popen(["sleep", "300"], start_new_session=True).pid
        ).result()
    agent = psutil.Process(cluster.record.backend_ids["pid"])
    cluster.close()
    bystander = _bystander("sleep", "300", cwd=directory)
    try:
        agent.kill()  # the agent dies without cleaning up
        wait_until(lambda: all(not r.state.is_live for r in coiled.list_clusters() if r.name == cluster.name),
                   30, message="the cluster to be seen dead")
        assert psutil.pid_exists(leftover)
        removed = coiled.gc()
        assert f"killed process {leftover} left by cluster {cluster.name!r}" in removed
        wait_until(lambda: not psutil.pid_exists(leftover) or psutil.Process(leftover).status() == psutil.STATUS_ZOMBIE,
                   30, message="the leftover process to be killed")
        assert _alive(bystander)
    finally:
        bystander.kill()
        bystander.wait()


# -- item 2: directories -----------------------------------------------------------------------


def test_gc_and_create_leave_directories_they_did_not_make(tmp_path, state_root):
    options = {"directory": str(tmp_path)}
    (tmp_path / "important").mkdir()
    (tmp_path / "important" / "data.txt").write_text("a user's work")
    (tmp_path / "clash").mkdir()
    (tmp_path / "clash" / "notes.txt").write_text("also a user's")

    coiled.gc(backend="local", backend_options=options)
    assert (tmp_path / "important" / "data.txt").read_text() == "a user's work"

    with pytest.raises(ProvisionError, match="was not made by the local backend"):
        coiled.Cluster(name="clash", backend_options=options, **SMALL)
    assert (tmp_path / "clash" / "notes.txt").read_text() == "also a user's"
    # Nothing was started, and the name is free again.
    assert not any("coiled_core.node" in " ".join(p.info["cmdline"] or [])
                   and str(tmp_path) in " ".join(p.info["cmdline"] or [])
                   for p in psutil.process_iter(["cmdline"]))
    assert not (tmp_path / ".claims" / "clash").exists()

    # A directory the backend made, for a cluster that has ended, is replaced by a new cluster.
    with coiled.Cluster(name="mine", backend_options=options, **SMALL):
        pass
    assert (tmp_path / "mine" / ".coiled-cluster").is_file()
    with coiled.Cluster(name="mine", backend_options=options, **SMALL) as again:
        assert again.created
    coiled.gc(backend="local", backend_options=options)
    assert not (tmp_path / "mine").exists()
    assert (tmp_path / "important" / "data.txt").exists() and (tmp_path / "clash" / "notes.txt").exists()


# -- item 5: secrets at rest -------------------------------------------------------------------


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_is_readable_by_its_owner_only_and_keys_do_not_stay_on_disk():
    old_umask = os.umask(0o022)
    try:
        cluster = coiled.Cluster(security=True, environ={"SECRET_TOKEN": "hunter2"}, wait_for_workers=True, **SMALL)
    finally:
        os.umask(old_umask)
    try:
        directory = _directory(cluster)
        assert _mode(directory) == 0o700
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                assert _mode(path) & 0o077 == 0, (name, oct(_mode(path)))
        # The agent read its keys and deleted them; its config names no key.
        assert not os.path.exists(os.path.join(directory, "tls.json"))
        for name in ("node.json", "agent.json"):
            assert "PRIVATE KEY" not in open(os.path.join(directory, name)).read()
    finally:
        cluster.shutdown()


# -- item 6: credentials end with the cluster ---------------------------------------------------


def _end_by_close(cluster):
    cluster.close()  # it created the cluster: close() shuts it down


def _end_by_shutdown(cluster):
    cluster.shutdown()


def _end_by_delete_cluster(cluster):
    cluster.close(), coiled.delete_cluster(cluster.name)


def _end_by_cli_stop(cluster):
    from click.testing import CliRunner

    from coiled_core import cli

    cluster.close()
    result = CliRunner().invoke(cli.cli, ["cluster", "stop", cluster.name], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _end_by_itself_then_gc(cluster):
    agent = psutil.Process(cluster.record.backend_ids["pid"])
    cluster.close()
    agent.kill()  # a node that could not clean up after itself
    wait_until(lambda: not agent.is_running() or agent.status() == psutil.STATUS_ZOMBIE, 30, message="the agent to die")
    coiled.gc()


@pytest.mark.parametrize(
    "end", [_end_by_close, _end_by_shutdown, _end_by_delete_cluster, _end_by_cli_stop, _end_by_itself_then_gc],
    ids=["close", "shutdown", "delete_cluster", "cli-stop", "ended-by-itself-gc"],
)
def test_credentials_are_deleted_by_every_path_that_ends_a_cluster(end):
    detached = end not in (_end_by_close, _end_by_shutdown)
    cluster = coiled.Cluster(security=True, shutdown_on_close=not detached, **SMALL)
    assert sorted(stored_credentials("local", cluster.name)) == ["ca.pem", "client-key.pem", "client.pem"]
    try:
        end(cluster)
        assert stored_credentials("local", cluster.name) == []
        assert Store().read(f"clusters/local/{cluster.name}/cluster.json") is None
    finally:
        if cluster.status.name != "closed":
            cluster.shutdown()
        with contextlib.suppress(coiled.ClusterNotFoundError):
            coiled.delete_cluster(cluster.name)


def test_gc_deletes_credentials_of_ended_clusters_only_if_they_are_provably_ours():
    store = Store()
    live = coiled.Cluster(security=True, **SMALL)
    dead = coiled.Cluster(security=True, shutdown_on_close=False, **SMALL)
    try:
        # The dead one's agent is killed outright: it had no chance to delete anything.
        dead_agent = psutil.Process(dead.record.backend_ids["pid"])
        dead.close()
        dead_agent.kill()
        wait_until(lambda: dead_agent.status() == psutil.STATUS_ZOMBIE if dead_agent.is_running() else True, 30,
                   message="the agent to die")
        # Material made by another user or machine, or by an older version, is never ours to delete.
        foreign = {"backend": "local", "backend_options": {}, "created_by": {"user": "someone", "host": "elsewhere"},
                   "provisioned": True}
        store.write("clusters/local/foreign/cluster.json", json.dumps(foreign).encode(), private=True)
        store.write("clusters/local/foreign/tls/ca.pem", b"x", private=True)
        # The layout of older versions (no backend in the key).
        store.write("clusters/older/tls/ca.pem", b"x", private=True)
        removed = coiled.gc()
        assert f"deleted the TLS credentials of ended cluster {dead.name!r}" in removed
        assert stored_credentials("local", dead.name) == []
        assert sorted(stored_credentials("local", live.name)) == ["ca.pem", "client-key.pem", "client.pem"]
        assert stored_credentials("local", "foreign") == ["ca.pem"] and list(store.list("clusters/older/tls")) == ["ca.pem"]
    finally:
        live.shutdown()
        store.delete("clusters/local/foreign")
        store.delete("clusters/older")
        coiled.gc()


# -- item 7: unauthenticated endpoints ----------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "my-laptop.example.com", "::"])
def test_a_cluster_reachable_from_other_machines_requires_tls(host, state_root):
    assert tls_policy(LocalOptions(host=host)) == TLSPolicy(default=True, required=True)
    before = set(os.listdir(state_root))
    with pytest.raises(ClusterSpecError, match="security: False is refused"):
        coiled.Cluster(security=False, backend_options={"host": host}, **SMALL)
    assert set(os.listdir(state_root)) == before  # refused before anything existed


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_clusters_leave_tls_to_the_user(host):
    assert tls_policy(LocalOptions(host=host)) == TLSPolicy(default=False, required=False)


def test_dashboard_of_a_tls_cluster_speaks_https_with_the_cluster_certificate():
    with coiled.Cluster(security=True, **SMALL) as cluster:
        link = cluster.dashboard_link
        assert link.startswith("https://127.0.0.1:")
        with urllib.request.urlopen(link, timeout=30, context=dashboard_ssl_context(cluster)) as response:
            assert response.status == 200
        with pytest.raises(OSError):
            urllib.request.urlopen(link.replace("https://", "http://"), timeout=10).read()
        # Its certificate files were only on disk while the scheduler started.
        assert not [n for n in os.listdir(_directory(cluster)) if n.startswith(".dashboard-tls-")]


# -- item 14: the agent's report ----------------------------------------------------------------


def test_the_report_follows_a_worker_the_nanny_restarted():
    with coiled.Cluster(wait_for_workers=True, **SMALL) as cluster:
        state_file = os.path.join(_directory(cluster), "agent.json")

        def worker_pid():
            return json.load(open(state_file))["workers"][0]["pid"]

        old = worker_pid()
        os.kill(old, signal.SIGKILL)

        def restarted() -> bool:
            pid = worker_pid()
            return pid not in (old, None) and psutil.pid_exists(pid)

        wait_until(restarted, 60, message="agent.json to name the restarted worker")
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=60)
            assert list(client.run(os.getpid).values()) == [worker_pid()]
