"""The local backend through the public API: the reference's examples and distributed's Cluster API."""

import asyncio
import os
import subprocess
import sys
import time

import psutil
import pytest
from distributed import Client

import coiled
from coiled_core.records import ClusterState
from coiled_core.testing import wait_until

SMALL = {"worker_cpu": 1, "worker_memory": "1 GiB"}


def agent_pid(cluster) -> int:
    return cluster.record.backend_ids["pid"]


def test_reference_simple_example_shape():
    """coiled.Cluster(n_workers=5), Client(cluster), dashboard_link, close: nothing left."""
    cluster = coiled.Cluster(n_workers=5, **SMALL)
    pid = agent_pid(cluster)
    try:
        client = Client(cluster)
        client.wait_for_workers(5, timeout=60)
        assert cluster.dashboard_link.startswith("http://127.0.0.1:")
        assert cluster.dashboard_link.endswith("/status")
        assert client.submit(lambda: 1 + 1).result() == 2
        assert cluster.get_client() is client
        client.close()
    finally:
        cluster.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert cluster.state is ClusterState.stopped


def test_context_manager_and_resources():
    with coiled.Cluster(n_workers=2, worker_cpu=2, worker_memory="1.5 GiB", wait_for_workers=True) as cluster:
        with Client(cluster) as client:
            workers = client.scheduler_info()["workers"].values()
            assert [w["nthreads"] for w in workers] == [2, 2]
            assert {w["memory_limit"] for w in workers} == {int(1.5 * 2**30)}
            # All bound to loopback.
            assert all(w["host"] == "127.0.0.1" for w in workers)
            assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
    assert cluster.status.name == "closed"


def test_reference_custom_classes_example():
    """worker_class='distributed.Worker' and scheduler_options={'idle_timeout': '2 hours'}."""
    with coiled.Cluster(
        n_workers=2,
        worker_class="distributed.Worker",
        scheduler_options={"idle_timeout": "2 hours"},
        wait_for_workers=True,
        **SMALL,
    ) as cluster:
        with Client(cluster) as client:
            assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.idle_timeout) == 7200
            types = client.run(lambda dask_worker: type(dask_worker).__name__)
            assert set(types.values()) == {"Worker"}
            # No nanny: the workers run inside the node agent itself.
            pids = set(client.run(os.getpid).values())
            assert pids == {agent_pid(cluster)}


def test_default_worker_class_is_nanny_in_own_processes():
    with coiled.Cluster(n_workers=2, wait_for_workers=True, **SMALL) as cluster:
        with Client(cluster) as client:
            pids = set(client.run(os.getpid).values())
            assert len(pids) == 2 and agent_pid(cluster) not in pids
            # Forked from the agent: its children.
            children = {p.pid for p in psutil.Process(agent_pid(cluster)).children(recursive=True)}
            assert pids <= children


def test_environ_reaches_scheduler_and_workers():
    environ = {"COILED_TEST_VALUE": "hello"}
    with coiled.Cluster(n_workers=1, environ=environ, wait_for_workers=True, **SMALL) as cluster:
        with Client(cluster) as client:
            get = lambda: os.environ.get("COILED_TEST_VALUE")  # noqa: E731
            assert set(client.run(get).values()) == {"hello"}
            assert client.run_on_scheduler(get) == "hello"


def test_worker_gpu_slices_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with coiled.Cluster(n_workers=2, worker_gpu=1, wait_for_workers=True, **SMALL) as cluster:
        with Client(cluster) as client:
            devices = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
            assert sorted(devices.values()) == ["0", "1"]
            resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]
            assert resources == [{"GPU": 1}, {"GPU": 1}]
            assert client.submit(lambda: "gpu task", resources={"GPU": 1}).result() == "gpu task"


def test_oversubscription_warns_once_and_runs():
    with pytest.warns(UserWarning, match="CPUs") as record:
        cluster = coiled.Cluster(n_workers=1, worker_cpu=(os.cpu_count() or 1) + 1, wait_for_workers=True)
    try:
        assert len([w for w in record if "sharing this machine" in str(w.message)]) == 1
        with Client(cluster) as client:
            assert client.submit(lambda: 3).result() == 3
    finally:
        cluster.close()


def test_idle_timeout_shuts_cluster_down_by_itself():
    cluster = coiled.Cluster(n_workers=1, idle_timeout="2s", shutdown_on_close=False, wait_for_workers=True, **SMALL)
    pid = agent_pid(cluster)
    name = cluster.name
    cluster.close()  # disconnect only; the cluster's own idle timeout must end it
    proc = psutil.Process(pid)
    assert proc.is_running()
    gone, _ = psutil.wait_procs([proc], timeout=45)
    assert gone, "the node agent outlived its idle timeout"
    backend = cluster.backend
    assert backend.describe(name, cluster.backend_options).state is ClusterState.stopped


def test_scale_and_adapt():
    with coiled.Cluster(n_workers=1, wait_for_workers=True, **SMALL) as cluster:
        with Client(cluster) as client:
            cluster.scale(2)
            client.wait_for_workers(2, timeout=60)
            names_before = set(cluster.workers)
            cluster.scale(0)
            wait_until(lambda: not client.scheduler_info()["workers"], 60, message="scale to 0")
            assert cluster.workers == {}
            cluster.scale(1)
            client.wait_for_workers(1, timeout=60)
            # Names are never reused.
            assert not (set(cluster.workers) & names_before)

            cluster.adapt(minimum=0, maximum=2, interval="200ms", wait_count=2)
            futures = client.map(lambda x: time.sleep(0.5) or x, range(20))
            wait_until(lambda: len(cluster.workers) == 2, 60, message="adaptive scale up")
            assert sum(client.gather(futures)) == sum(range(20))
            del futures
            wait_until(lambda: len(cluster.workers) == 0, 60, message="adaptive scale down")


def test_n_workers_range_means_adaptive():
    with coiled.Cluster(n_workers=[1, 3], wait_for_workers=True, **SMALL) as cluster:
        assert cluster._adaptive is not None
        assert (cluster._adaptive.minimum, cluster._adaptive.maximum) == (1, 3)
        assert len(cluster.workers) >= 1


def test_get_logs_include_node_log():
    with coiled.Cluster(n_workers=1, wait_for_workers=True, **SMALL) as cluster:
        logs = cluster.get_logs()
        assert "Scheduler" in logs
        assert "Scheduler at" in logs["local:node"]


def test_repr_and_html_repr():
    with coiled.Cluster(n_workers=1, wait_for_workers=True, **SMALL) as cluster:
        text = repr(cluster)
        assert cluster.name in text and "local" in text and "workers=1/1" in text
        html = cluster._repr_html_()
        for piece in (cluster.name, "local", "running", cluster.dashboard_link):
            assert piece in html


def test_create_or_attach_by_name():
    first = coiled.Cluster(name="attach-me", n_workers=1, wait_for_workers=True, **SMALL)
    try:
        second = coiled.Cluster(name="attach-me")
        assert not second.created
        assert second.scheduler_address == first.scheduler_address
        assert agent_pid(second) == agent_pid(first)
        second.close()  # attached: close only disconnects
        assert first.state is ClusterState.running
    finally:
        first.close()
    assert first.state is ClusterState.stopped


def test_async_api():
    async def main():
        cluster = await coiled.Cluster(n_workers=1, asynchronous=True, wait_for_workers=True, **SMALL)
        try:
            async with Client(cluster, asynchronous=True) as client:
                assert await client.submit(lambda x: x + 1, 1) == 2
            await cluster.scale(2)
            assert len(cluster.workers) == 2
        finally:
            await cluster.close()
        async with coiled.Cluster(n_workers=1, asynchronous=True, **SMALL) as cluster2:
            assert cluster2.scheduler_address.startswith("tcp://127.0.0.1")
        return cluster, cluster2

    first, second = asyncio.run(main())
    assert first.state is ClusterState.stopped
    assert second.state is ClusterState.stopped


def test_no_arguments_gives_the_reference_defaults():
    """coiled.Cluster() works: 4 workers of 4 threads (oversubscribing this machine, with a warning)."""
    with pytest.warns(UserWarning, match="sharing this machine"):
        cluster = coiled.Cluster(wait_for_workers=True)
    with cluster, Client(cluster) as client:
        workers = client.scheduler_info()["workers"].values()
        assert len(workers) == 4
        assert {w["nthreads"] for w in workers} == {4}
        assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.idle_timeout) == 20 * 60


def test_normal_interpreter_exit_shuts_down_created_clusters(tmp_path):
    """A script that forgets close() leaves nothing running once it exits."""
    script = tmp_path / "forgetful.py"
    script.write_text(
        "import coiled\n"
        "cluster = coiled.Cluster(n_workers=1, worker_cpu=1, worker_memory='1 GiB')\n"
        "print(cluster.record.backend_ids['pid'], flush=True)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True)
    pid = int(out.stdout.strip().splitlines()[-1])
    psutil.wait_procs([psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout=30)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_tls_cluster_refuses_clients_without_its_certificates(tmp_path):
    with coiled.Cluster(n_workers=1, security=True, wait_for_workers=True, **SMALL) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        with Client(cluster) as client:  # Client(cluster) uses cluster.security
            assert client.submit(lambda: "secure").result() == "secure"
        with pytest.raises(Exception):
            Client(cluster.scheduler_address.replace("tls://", "tcp://"), timeout="3s")
        with pytest.raises(Exception):
            Client(cluster.scheduler_address, timeout="3s")
        # The node agent's config holds private keys: this user only.
        config = os.path.join(cluster.record.backend_ids["directory"], "node.json")
        assert os.stat(config).st_mode & 0o077 == 0
        cluster.scale(2)
        assert len(cluster.workers) == 2
        # Another process reattaches by name with the credentials kept in the store.
        script = tmp_path / "attach.py"
        script.write_text(
            "import coiled, sys\n"
            "from distributed import Client\n"
            "cluster = coiled.Cluster(name=sys.argv[1], show_widget=False)\n"
            "with Client(cluster) as client:\n"
            "    print(client.submit(lambda: 'attached').result())\n"
            "cluster.close()\n"
        )
        out = subprocess.run([sys.executable, str(script), cluster.name], capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == "attached", out.stderr[-2000:]
    from coiled_core.security import ClusterTLS
    from coiled_core.store import Store

    assert ClusterTLS.load(Store(), cluster.name, "local") is None  # shut down: its credentials are gone


def test_attached_objects_do_not_steal_each_others_worker_updates():
    first = coiled.Cluster(n_workers=1, wait_for_workers=True, **SMALL)
    try:
        second = coiled.Cluster(name=first.name)
        second.close()
        first.scale(2)
        wait_until(lambda: len(first.scheduler_info["workers"]) == 2, 60, message="first sees 2 workers")
    finally:
        first.close()


def test_security_object_of_the_users_own():
    """security= accepts a distributed.Security, as LocalCluster does."""
    from distributed.security import Security

    security = Security.temporary()
    with coiled.Cluster(n_workers=1, security=security, wait_for_workers=True, **SMALL) as cluster:
        assert cluster.security is security
        assert cluster.scheduler_address.startswith("tls://")
        with Client(cluster.scheduler_address, security=security) as client:
            assert client.submit(lambda: 5).result() == 5


def test_cluster_from_a_named_configuration():
    coiled.create_cluster_configuration("team/small", n_workers=1, worker_cpu=1, worker_memory="1 GiB", idle_timeout="1 hour")
    with coiled.Cluster(configuration="team/small", n_workers=2, wait_for_workers=True) as cluster:
        assert cluster.spec.n_workers == 2  # the explicit keyword wins
        assert cluster.spec.worker_cpu == 1  # the configuration fills what was left out
        with Client(cluster) as client:
            assert [w["nthreads"] for w in client.scheduler_info()["workers"].values()] == [1, 1]
            assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.idle_timeout) == 3600
    with pytest.raises(coiled.ConfigurationNotFoundError, match="team/small"):
        coiled.Cluster(configuration="team/smal")


def test_a_coiled_style_name_is_kept_everywhere():
    """Letters of either case and '_' (as Coiled accepts): describe, list, reuse and the CLI use it."""
    from click.testing import CliRunner

    from coiled_core import cli

    name = f"My_Cluster-{os.getpid()}"
    first = coiled.Cluster(name=name, shutdown_on_close=False, **SMALL)
    try:
        assert first.name == name
        assert name in [r.name for r in coiled.list_clusters() if r.state.is_live]
        again = coiled.Cluster(name=name)
        assert not again.created and again.scheduler_address == first.scheduler_address
        again.close()
        listed = CliRunner().invoke(cli.cli, ["cluster", "list"], catch_exceptions=False)
        assert name in listed.output
        stopped = CliRunner().invoke(cli.cli, ["cluster", "stop", name], catch_exceptions=False)
        assert stopped.exit_code == 0, stopped.output
        assert first.state is ClusterState.stopped
    finally:
        first.close()
        coiled.delete_cluster(name)
