"""The backend contract suite: the same assertions for every backend.

A backend's tests subclass :class:`BackendContract`, set ``backend`` (and ``backend_options`` if
needed) and implement :meth:`BackendContract.assert_nothing_left`, which checks the backend's
own world (process table, cloud API, Kubernetes API) for anything of the cluster still there::

    from coiled_core.testing import BackendContract

    class TestMyBackendContract(BackendContract):
        backend = "mine"
        backend_options = {"region": "test-1"}

        def assert_nothing_left(self, record):
            assert my_api.list_instances(tag=record.name) == []

Each test creates a small real cluster (two single-thread workers), so a backend needs a stand-in
world in which a real Dask cluster can form (see DESIGN.md, "Testing without a cloud").
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest

from coiled_core.records import ClusterRecord, ClusterState


def wait_until(condition, timeout: float = 60.0, interval: float = 0.1, message: str = "condition") -> None:
    """Poll ``condition()`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class BackendContract:
    """Contract tests every backend must pass. Subclass and fill in the class attributes."""

    #: Name of the backend under test (its entry-point name).
    backend: str = ""
    #: ``backend_options`` for every cluster the suite creates.
    backend_options: dict[str, Any] = {}
    #: Further ``coiled.Cluster`` keywords; the default keeps clusters small.
    cluster_kwargs: dict[str, Any] = {"n_workers": 2, "worker_cpu": 1, "worker_memory": "1 GiB"}
    #: Seconds allowed for a worker to join or leave.
    worker_timeout: float = 60.0

    def assert_nothing_left(self, record: ClusterRecord) -> None:
        """Fail if anything of the torn-down cluster ``record`` still exists on the backend."""
        raise NotImplementedError("a backend's contract tests must implement assert_nothing_left")

    # -- helpers ---------------------------------------------------------------------------
    def make_cluster(self, **kwargs: Any):
        import coiled

        options = {**self.cluster_kwargs, **kwargs}
        return coiled.Cluster(backend=self.backend, backend_options=self.backend_options, wait_for_workers=True, **options)

    @pytest.fixture
    def cluster(self):
        cluster = self.make_cluster()
        try:
            yield cluster
        finally:
            record = cluster.record
            cluster.shutdown()
            if record is not None:
                self.assert_nothing_left(record)

    @pytest.fixture
    def client(self, cluster):
        from distributed import Client

        with Client(cluster) as client:
            yield client

    # -- the contract ----------------------------------------------------------------------
    def test_create_and_compute(self, cluster, client):
        # All workers joined; the backend may take a moment more to report the cluster running.
        wait_until(lambda: cluster.state is ClusterState.running, self.worker_timeout, message="state running")
        assert len(client.scheduler_info()["workers"]) == cluster.spec.n_workers
        assert client.submit(sum, range(101)).result() == 5050

        import dask.array as da

        x = da.arange(100_000, chunks=10_000)
        assert int(x.sum().compute()) == sum(range(100_000))

    def test_workers_have_requested_resources(self, cluster, client):
        info = client.scheduler_info()["workers"].values()
        assert {w["nthreads"] for w in info} == {cluster.spec.worker_cpu}
        assert {w["name"] for w in info} == set(cluster.workers)

    def test_scale_up_and_down(self, cluster, client):
        cluster.scale(3)
        client.wait_for_workers(3, timeout=self.worker_timeout)
        assert len(cluster.workers) == 3
        cluster.scale(1)
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, self.worker_timeout, message="scale down to 1")
        assert len(cluster.workers) == 1
        # Scale-down stopped exactly the retired workers: the survivor is the one still listed.
        (survivor,) = [w["name"] for w in client.scheduler_info()["workers"].values()]
        assert list(cluster.workers) == [survivor]
        assert client.submit(lambda x: x * 2, 21).result() == 42

    def test_describe_and_list(self, cluster):
        wait_until(lambda: cluster.state is ClusterState.running, self.worker_timeout, message="state running")
        record = cluster.backend.describe(cluster.name, cluster.backend_options)
        assert record is not None
        assert record.name == cluster.name
        assert record.backend == self.backend
        assert record.state is ClusterState.running
        assert record.scheduler_address == cluster.scheduler_address
        assert sorted(record.worker_names) == sorted(cluster.workers)
        assert record.spec["worker_cpu"] == cluster.spec.worker_cpu
        listed = {r.name: r for r in cluster.backend.list_clusters(cluster.backend_options)}
        assert listed[cluster.name].state is ClusterState.running

    def test_dashboard_answers(self, cluster):
        link = cluster.dashboard_link
        assert link.startswith("http")
        with urllib.request.urlopen(link, timeout=30) as response:
            assert response.status == 200
            assert b"Dask" in response.read()

    def test_logs(self, cluster):
        logs = cluster.backend.logs(cluster.record, None)
        assert logs and any("Scheduler" in text or "scheduler" in text for text in logs.values())
        tail = cluster.backend.logs(cluster.record, 2)
        assert all(len(text.splitlines()) <= 2 for text in tail.values())

    def test_teardown_leaves_nothing(self):
        cluster = self.make_cluster()
        record = cluster.record
        cluster.shutdown()
        self.assert_nothing_left(record)
        after = cluster.backend.describe(record.name, cluster.backend_options)
        assert after is None or not after.state.is_live
        live = [r.name for r in cluster.backend.list_clusters(cluster.backend_options) if r.state.is_live]
        assert record.name not in live
        # Tearing down again is harmless.
        assert cluster.backend.teardown(record).state is ClusterState.stopped
