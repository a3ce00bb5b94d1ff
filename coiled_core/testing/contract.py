"""The backend contract suite: the same assertions for every backend, grouped by capability.

A backend's tests subclass :class:`BackendContract` (every capability), set ``backend`` (and
``backend_options`` if needed) and implement :meth:`ContractBase.assert_nothing_left`, which
checks the backend's own world (process table, cloud API, Kubernetes API) for anything of the
cluster still there::

    from coiled_core.testing import BackendContract

    class TestMyBackendContract(BackendContract):
        backend = "mine"
        backend_options = {"region": "test-1"}
        # A capability the backend cannot test is declared, with the reason; its tests are
        # shown as skipped with it. Nothing else may be left out.
        unsupported = {"frozen-scheduler": "nodes of this backend cannot be paused"}

        def assert_nothing_left(self, record):
            assert my_api.list_instances(tag=record.name) == []

The capabilities, each a mixin (as fsspec's ``tests/abstract`` does), so a backend may also
compose only some of them:

=====================  ==========================  ============================================
capability             mixin                       needs from the backend's test class
=====================  ==========================  ============================================
``lifecycle``          :class:`LifecycleContract`  ``assert_nothing_left``
``reuse-by-name``      :class:`ReuseContract`      ``assert_nothing_left``
``timeouts``           :class:`TimeoutsContract`   ``assert_nothing_left`` (creator is SIGKILLed)
``faults``             :class:`FaultsContract`     ``assert_nothing_left``
``frozen-scheduler``   :class:`FrozenSchedulerContract`  ``freeze_scheduler``,
                                                   ``running_worker_processes``
=====================  ==========================  ============================================

Each test creates a small real cluster (two single-thread workers), so a backend needs a stand-in
world in which a real Dask cluster can form (``docs/writing-a-backend.md`` says how the built-in
backends test without a cloud).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from typing import Any, Callable

import dask.config
import pytest

from coiled_core.errors import ClusterSpecError, ProvisionError
from coiled_core.records import ClusterRecord, ClusterState


def wait_until(condition, timeout: float = 60.0, interval: float = 0.1, message: str = "condition") -> None:
    """Poll ``condition()`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def dashboard_ssl_context(cluster) -> Any:
    """An SSL context that trusts ``cluster``'s own CA, for its HTTPS dashboard (None without TLS).

    The certificate names the node's addresses as the backend knew them, not necessarily the one
    the client reaches it at, so the chain is verified but not the host name.
    """
    if cluster.security is None:
        return None
    import ssl

    ca = cluster.security.tls_ca_file
    context = ssl.create_default_context(cadata=ca) if "-----BEGIN" in ca else ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    return context


def stored_credentials(backend: str, name: str) -> list[str]:
    """The files the store keeps for the TLS material of cluster ``name`` of ``backend``."""
    from coiled_core.store import Store

    return list(Store().list(f"clusters/{backend}/{name}/tls"))


#: Capability names, for ``unsupported``.
CAPABILITIES = ("lifecycle", "reuse-by-name", "timeouts", "faults", "frozen-scheduler")


class ContractBase:
    """What every capability mixin shares: the backend under test, helpers and fixtures."""

    #: The capability this mixin's tests check (set by each mixin).
    capability: str = ""

    #: Name of the backend under test (its entry-point name).
    backend: str = ""
    #: ``backend_options`` for every cluster the suite creates.
    backend_options: dict[str, Any] = {}
    #: Further ``coiled.Cluster`` keywords; the default keeps clusters small.
    cluster_kwargs: dict[str, Any] = {"n_workers": 2, "worker_cpu": 1, "worker_memory": "1 GiB"}
    #: Seconds allowed for a worker to join or leave.
    worker_timeout: float = 60.0
    #: Capabilities this backend cannot test, each with the reason (shown when skipped).
    unsupported: dict[str, str] = {}

    @pytest.fixture(autouse=True)
    def _check_capability(self, request):
        unknown = set(self.unsupported) - set(CAPABILITIES)
        if unknown:
            pytest.fail(f"unsupported names unknown capabilities {sorted(unknown)}; known: {', '.join(CAPABILITIES)}")
        owner = next((c for c in type(self).__mro__ if request.function.__name__ in vars(c)), None)
        capability = getattr(owner, "capability", "")
        if capability in self.unsupported:
            pytest.skip(f"backend {self.backend!r} does not support {capability!r}: {self.unsupported[capability]}")

    def assert_nothing_left(self, record: ClusterRecord) -> None:
        """Fail if anything of the torn-down cluster ``record`` still exists on the backend."""
        raise NotImplementedError("a backend's contract tests must implement assert_nothing_left")

    def freeze_scheduler(self, record: ClusterRecord) -> Callable[[], None]:
        """Freeze the scheduler's process or machine (as SIGSTOP would); return a function that
        thaws it."""
        raise NotImplementedError("a backend's contract tests must implement freeze_scheduler")

    def running_worker_processes(self, record: ClusterRecord) -> int:
        """How many worker processes (or machines) of ``record`` are still running."""
        raise NotImplementedError("a backend's contract tests must implement running_worker_processes")

    # -- helpers ---------------------------------------------------------------------------
    def make_cluster(self, **kwargs: Any):
        import coiled

        options = {"wait_for_workers": True, **self.cluster_kwargs, **kwargs}
        return coiled.Cluster(backend=self.backend, backend_options=self.backend_options, **options)

    def backend_handle(self):
        """The backend and its validated options, as a process that never made a cluster has."""
        from coiled_core.plugins import load_backend

        backend = load_backend(self.backend)
        return backend, backend.validate_options(self.backend_options)

    def wait_until_gone(self, name: str, timeout: float) -> ClusterRecord | None:
        backend, options = self.backend_handle()
        last: list[ClusterRecord | None] = [None]

        def gone() -> bool:
            # The scheduler has ended and so has every worker (on a cloud, each its own machine).
            last[0] = backend.describe(name, options)
            return last[0] is None or (not last[0].state.is_live and not last[0].workers)

        wait_until(gone, timeout, interval=0.25, message=f"cluster {name!r} to end by itself")
        # What a cluster that ended itself may leave costs nothing (a cloud security group or
        # role, a local state directory); `coiled cluster gc` removes it.
        from coiled_core.api import gc

        gc(self.backend, self.backend_options)
        return last[0]

    def run_python(self, code: str, *args: str, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
        """Run ``code`` in a fresh Python process (another "session" of the user)."""
        script = "import json, sys\nBACKEND = sys.argv[1]\nOPTIONS = json.loads(sys.argv[2])\n" + textwrap.dedent(code)
        return subprocess.Popen(
            [sys.executable, "-c", script, self.backend, json.dumps(self.backend_options), *args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            text=True,
            **popen,
        )

    def unique_name(self, prefix: str) -> str:
        return f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 10**8}"

    @contextlib.contextmanager
    def _checked_cluster(self):
        """A cluster that is shut down after the block, and checked to leave nothing."""
        cluster = self.make_cluster()
        try:
            yield cluster
        finally:
            record = cluster.record
            cluster.shutdown()
            if record is not None:
                self.assert_nothing_left(record)

    @pytest.fixture
    def cluster(self):
        with self._checked_cluster() as cluster:
            yield cluster

    @pytest.fixture
    def client(self, cluster):
        from distributed import Client

        with Client(cluster) as client:
            yield client

    # The tests that only look at a cluster share one per test class (a cloud cluster takes
    # seconds to make and to tear down). Not a class-scoped fixture: that would be made before
    # the backend's own per-test fixtures (its stand-in, its options) and checked without them;
    # this one is made by the first test that asks, with that test's instance, and ends with
    # the class.
    def _shared(self, request, key: str, make: Callable[[], Any]) -> Any:
        owner = request.node.parent  # the test class
        value = getattr(owner, key, None)
        if value is None:
            stack = contextlib.ExitStack()
            value = stack.enter_context(make())
            setattr(owner, key, value)
            owner.addfinalizer(stack.close)
        return value

    @pytest.fixture
    def shared_cluster(self, request):
        """One cluster for the tests of this class that only look at it."""
        return self._shared(request, "_contract_shared_cluster", self._checked_cluster)

    @pytest.fixture
    def shared_client(self, request, shared_cluster):
        from distributed import Client

        return self._shared(request, "_contract_shared_client", lambda: Client(shared_cluster))


class LifecycleContract(ContractBase):
    """Create, compute, scale, describe, list, dashboard, logs, teardown."""

    capability = "lifecycle"

    def test_create_and_compute(self, shared_cluster, shared_client):
        # All workers joined; the backend may take a moment more to report the cluster running.
        wait_until(lambda: shared_cluster.state is ClusterState.running, self.worker_timeout, message="state running")
        assert len(shared_client.scheduler_info()["workers"]) == shared_cluster.spec.n_workers
        assert shared_client.submit(sum, range(101)).result() == 5050

        import dask.array as da

        x = da.arange(100_000, chunks=10_000)
        assert int(x.sum().compute()) == sum(range(100_000))

    def test_workers_have_requested_resources(self, shared_cluster, shared_client):
        info = shared_client.scheduler_info()["workers"].values()
        assert {w["nthreads"] for w in info} == {shared_cluster.spec.worker_cpu}
        assert {w["name"] for w in info} == set(shared_cluster.workers)

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

    def test_describe_and_list(self, shared_cluster):
        wait_until(lambda: shared_cluster.state is ClusterState.running, self.worker_timeout, message="state running")
        record = shared_cluster.backend.describe(shared_cluster.name, shared_cluster.backend_options)
        assert record is not None
        assert record.name == shared_cluster.name
        assert record.backend == self.backend
        assert record.state is ClusterState.running
        assert record.scheduler_address == shared_cluster.scheduler_address
        assert sorted(record.worker_names) == sorted(shared_cluster.workers)
        assert record.spec["worker_cpu"] == shared_cluster.spec.worker_cpu
        listed = {r.name: r for r in shared_cluster.backend.list_clusters(shared_cluster.backend_options)}
        assert listed[shared_cluster.name].state is ClusterState.running

    def test_dashboard_answers(self, shared_cluster):
        link = shared_cluster.dashboard_link
        assert link.startswith("http")
        with urllib.request.urlopen(link, timeout=30, context=dashboard_ssl_context(shared_cluster)) as response:
            assert response.status == 200
            assert b"Dask" in response.read()
        if shared_cluster.security is not None:
            # With TLS on, the dashboard speaks HTTPS only.
            assert link.startswith("https://")
            with pytest.raises(OSError):
                urllib.request.urlopen(link.replace("https://", "http://", 1), timeout=30).read()

    def test_logs(self, shared_cluster):
        logs = shared_cluster.backend.logs(shared_cluster.record, shared_cluster.backend_options, None)
        assert logs and any("Scheduler" in text or "scheduler" in text for text in logs.values())
        tail = shared_cluster.backend.logs(shared_cluster.record, shared_cluster.backend_options, 2)
        assert all(len(text.splitlines()) <= 2 for text in tail.values())

    def test_security_false_on_public_addresses_warns(self):
        """The core's rule, the same for every backend: where the backend says the nodes have
        public addresses (its TLS policy's ``public_reach``), ``security=False`` warns."""
        import warnings

        from coiled_core.cluster import check_cluster

        backend, options = self.backend_handle()
        policy = backend.tls_policy(options)
        public = policy.public_reach
        if policy.required:  # refused outright, which is stricter still
            with pytest.raises(ClusterSpecError, match="security"):
                check_cluster(backend=self.backend, backend_options=self.backend_options, security=False, n_workers=1)
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_cluster(backend=self.backend, backend_options=self.backend_options, security=False, n_workers=1)
        warned = [w for w in caught if "WITHOUT TLS or authentication on public addresses" in str(w.message)]
        assert bool(warned) == bool(public), (public, [str(w.message) for w in caught])
        if public:
            assert public in str(warned[0].message)

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
        assert cluster.backend.teardown(record, cluster.backend_options).state is ClusterState.stopped

    def test_tls_cluster_gc_spares_it_and_logs_outlive_it(self):
        """security=True: TLS addresses and HTTPS dashboard; gc leaves a live cluster alone;
        logs are still there after the cluster stopped."""
        cluster = self.make_cluster(security=True, n_workers=1)
        record = cluster.record
        try:
            assert cluster.scheduler_address.startswith("tls://")
            assert cluster.dashboard_link.startswith("https://")
            from distributed import Client

            with Client(cluster) as client:
                assert client.submit(lambda: 6 * 7).result() == 42
            from coiled_core.api import gc

            gc(self.backend, self.backend_options)
            backend, options = self.backend_handle()
            assert backend.describe(record.name, options).state.is_live
            assert stored_credentials(self.backend, record.name)
        finally:
            cluster.shutdown()
        self.assert_nothing_left(record)
        backend, options = self.backend_handle()
        logs = backend.logs(record, options, None)
        assert any(text.strip() for text in logs.values()), "no logs after the cluster stopped"

    def test_adaptive_scaling(self):
        cluster = self.make_cluster(n_workers=[1, 2], wait_for_workers=1)
        try:
            from distributed import Client

            with Client(cluster) as client:
                futures = client.map(lambda x: __import__("time").sleep(0.5) or x, range(40))
                wait_until(lambda: len(cluster.workers) == 2, self.worker_timeout, message="adaptive scale-up to 2")
                assert sum(client.gather(futures)) == sum(range(40))
        finally:
            record = cluster.record
            cluster.shutdown()
            self.assert_nothing_left(record)


class ReuseContract(ContractBase):
    """Names: another process attaches, concurrent creation, shutdown semantics, scaling from an
    attached process."""

    capability = "reuse-by-name"

    def test_two_sessions_share_a_named_cluster(self):
        """The reference's "production" example: another process attaches by name."""
        name = self.unique_name("production")
        creator = self.run_python(
            """
            import coiled
            cluster = coiled.Cluster(name=sys.argv[3], backend=BACKEND, backend_options=OPTIONS,
                                     n_workers=1, worker_cpu=1, worker_memory="1 GiB", wait_for_workers=True)
            print(json.dumps({"created": cluster.created, "address": cluster.scheduler_address}), flush=True)
            sys.stdin.read()  # stay until told to go; a normal exit shuts the cluster down
            """,
            name,
            stdin=subprocess.PIPE,
        )
        try:
            first = json.loads(creator.stdout.readline())
            assert first["created"] is True
            import coiled

            with pytest.warns(UserWarning, match="n_workers"):
                attached = coiled.Cluster(name=name, n_workers=3, backend=self.backend, backend_options=self.backend_options)
            assert attached.created is False
            assert attached.scheduler_address == first["address"]
            assert attached.spec.n_workers == 1  # a warning, not a resize
            from distributed import Client

            with Client(attached) as client:
                assert client.submit(lambda: 40 + 2).result() == 42
            attached.close()  # attached: close() only disconnects
            backend, options = self.backend_handle()
            assert backend.describe(name, options).state.is_live
        finally:
            creator.stdin.close()
            creator.wait(60)
        self.wait_until_gone(name, 60)

    def test_concurrent_creation_gives_one_cluster(self):
        name = self.unique_name("race")
        code = """
            import coiled
            cluster = coiled.Cluster(name=sys.argv[3], backend=BACKEND, backend_options=OPTIONS, n_workers=1,
                                     worker_cpu=1, worker_memory="1 GiB", shutdown_on_close=False)
            print(json.dumps({"created": cluster.created, "address": cluster.scheduler_address}), flush=True)
            cluster.close()
        """
        racers = [self.run_python(code, name) for _ in range(2)]
        try:
            results = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in racers]
            assert sorted(r["created"] for r in results) == [False, True]
            assert results[0]["address"] == results[1]["address"]
        finally:
            backend, options = self.backend_handle()
            record = backend.describe(name, options)
            if record is not None:
                backend.teardown(record, options)
                self.assert_nothing_left(record)

    def test_close_honours_shutdown_on_close_and_shutdown_always_tears_down(self):
        cluster = self.make_cluster(shutdown_on_close=False)
        record = cluster.record
        cluster.close()
        backend, options = self.backend_handle()
        assert backend.describe(record.name, options).state.is_live
        import coiled

        again = coiled.Cluster(name=record.name, backend=self.backend, backend_options=self.backend_options)
        assert again.created is False and again.spec.shutdown_on_close is False
        again.shutdown()
        self.assert_nothing_left(record)

    def test_an_attached_process_scales(self):
        cluster = self.make_cluster(n_workers=1, shutdown_on_close=False)
        record = cluster.record
        try:
            attacher = self.run_python(
                """
                import coiled
                cluster = coiled.Cluster(name=sys.argv[3], backend=BACKEND, backend_options=OPTIONS)
                assert not cluster.created
                cluster.scale(2)
                print(json.dumps(sorted(cluster.workers)), flush=True)
                cluster.close()
                """,
                record.name,
            )
            out, _ = attacher.communicate(timeout=240)
            assert attacher.returncode == 0
            assert len(json.loads(out.strip().splitlines()[-1])) == 2
            wait_until(lambda: len(cluster.scheduler_info["workers"]) == 2, self.worker_timeout, message="2 workers")
        finally:
            cluster.shutdown()
        self.assert_nothing_left(record)


class TimeoutsContract(ContractBase):
    """Timeouts the cluster enforces itself, with the creator killed or gone."""

    capability = "timeouts"

    def test_killed_creator_leaves_nothing(self):
        """SIGKILL the creating process: the no-client timeout ends the cluster on its own."""
        name = self.unique_name("orphan")
        creator = self.run_python(
            """
            import coiled, time
            cluster = coiled.Cluster(name=sys.argv[3], backend=BACKEND, backend_options=OPTIONS, n_workers=1,
                                     worker_cpu=1, worker_memory="1 GiB", no_client_timeout="2s",
                                     wait_for_workers=True)
            print(cluster.record.model_dump_json(), flush=True)
            time.sleep(3600)
            """,
            name,
            env={"DASK_COILED__HEARTBEAT_INTERVAL": "0.5s"},
        )
        try:
            record = ClusterRecord.model_validate_json(creator.stdout.readline())
        finally:
            creator.send_signal(signal.SIGKILL)
            creator.wait(10)
        started = time.monotonic()
        self.wait_until_gone(name, timeout=2 + 1.5 + 60)
        self.assert_nothing_left(record)
        assert time.monotonic() - started < 2 + 1.5 + 60

    def test_live_cluster_object_counts_as_a_client(self):
        with dask.config.set({"coiled.heartbeat-interval": "0.3s"}):
            cluster = self.make_cluster(no_client_timeout="1s")
        try:
            time.sleep(4)  # several no-client timeouts, but the Cluster object is heartbeating
            assert cluster.state is ClusterState.running
            from distributed import Client

            with Client(cluster) as client:
                assert client.submit(lambda: "still here").result() == "still here"
        finally:
            record = cluster.record
            cluster.shutdown()
            self.assert_nothing_left(record)

    def test_cluster_timeout_caps_the_lifetime(self):
        cluster = self.make_cluster(cluster_timeout="2s", shutdown_on_close=False)
        record = cluster.record
        cluster.close()
        self.wait_until_gone(record.name, 60)
        self.assert_nothing_left(record)

    def test_credentials_end_with_the_cluster(self):
        """While it runs, the store keeps only the client's credentials; none once it has ended."""
        cluster = self.make_cluster(security=True, cluster_timeout="5s", shutdown_on_close=False, wait_for_workers=0)
        record = cluster.record
        assert sorted(stored_credentials(self.backend, record.name)) == ["ca.pem", "client-key.pem", "client.pem"]
        cluster.close()
        self.wait_until_gone(record.name, 60)
        self.assert_nothing_left(record)
        assert stored_credentials(self.backend, record.name) == []



class FrozenSchedulerContract(ContractBase):
    """Workers end when their scheduler freezes (a hung machine)."""

    capability = "frozen-scheduler"

    def test_workers_of_a_frozen_scheduler_end(self):
        with dask.config.set({"coiled.watchdog-timeout": "2s"}):
            cluster = self.make_cluster(shutdown_on_close=False)
        record = cluster.record
        cluster.close()
        assert self.running_worker_processes(record) == self.cluster_kwargs["n_workers"]
        thaw = self.freeze_scheduler(record)
        backend, options = self.backend_handle()
        try:
            wait_until(lambda: self.running_worker_processes(record) == 0, 60, message="workers to end")
        finally:
            thaw()
            # Also when the check failed: a failed test must not leave a live cluster behind.
            backend.teardown(backend.describe(record.name, options) or record, options)
        self.assert_nothing_left(record)



class FaultsContract(ContractBase):
    """A start that fails at any step leaves nothing and frees the name."""

    capability = "faults"

    @pytest.mark.parametrize(
        "kwargs, step",
        [
            ({"scheduler_class": "coiled_core.testing.faulty.SchedulerFailsToStart"}, "scheduler"),
            ({"worker_class": "coiled_core.testing.faulty.NannyFailsToStart"}, "worker"),
            ({"scheduler_class": "coiled_core.testing.faulty.SchedulerNeverStarts", "timeout": "4s"}, "timeout"),
            ({"worker_class": "coiled_core.testing.faulty.NannyNeverJoins", "timeout": "6s"}, "timeout"),
        ],
        ids=["scheduler-fails", "worker-fails", "scheduler-hangs", "worker-hangs"],
    )
    def test_failed_start_tears_down_everything(self, kwargs, step):
        name = self.unique_name("doomed")
        with pytest.raises(ProvisionError) as info:
            self.make_cluster(name=name, **kwargs)
        message = str(info.value)
        assert step in message
        if step != "timeout":
            assert "injected" in message  # the failing process's log tail is shown
        backend, options = self.backend_handle()
        record = backend.describe(name, options)
        assert record is None or not record.state.is_live
        if record is not None:
            self.assert_nothing_left(record)
        # The name is free again: a good cluster of that name starts.
        cluster = self.make_cluster(name=name)
        try:
            assert cluster.created
        finally:
            cluster.shutdown()

    def test_wait_for_workers_forms(self):
        cluster = self.make_cluster(n_workers=2, wait_for_workers=1)
        try:
            assert len(cluster.scheduler_info["workers"]) >= 1
        finally:
            cluster.shutdown()


class BackendContract(LifecycleContract, ReuseContract, TimeoutsContract, FaultsContract, FrozenSchedulerContract):
    """Every capability: what a backend's contract tests subclass."""
