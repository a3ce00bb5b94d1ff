"""Two runs on one machine: stand-ins that never collide, and clusters that form on each."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from coiled_gcp.offline import OfflineGCP

from coiled_core.testing import noderunner
from coiled_core.testing.environment import offline_environment

OPTIONS = {"region": "us-east1", "allow_ingress_from": "127.0.0.0/8"}


def test_a_loopback_block_held_by_another_process_is_not_taken():
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from coiled_core.testing import noderunner as n; b = n.LoopbackBlock([77]); print(b.octet, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "77"
        with pytest.raises(RuntimeError, match="in use by other runs"):
            noderunner.LoopbackBlock([77])
        mine = noderunner.LoopbackBlock([77, 78])
        assert mine.octet == 78
        assert mine.address(2) == "10.78.0.2" and mine.address(258) == "10.78.1.2"
        mine.release()
    finally:
        holder.stdin.close()
        holder.wait(10)
    # Released when its holder ended.
    again = noderunner.LoopbackBlock([77])
    again.release()


def test_two_stand_ins_at_once_hand_out_disjoint_addresses_and_each_forms_a_cluster(offline_gcp, tmp_path):
    import coiled
    from dask.distributed import Client

    cache = os.path.join(os.path.expanduser("~"), ".cache", "coiled", "offline-env-cache")
    clusters = []
    with OfflineGCP(workdir=tmp_path / "second", env_cache=cache) as second:
        try:
            for fake, name in ((offline_gcp, "shared-first"), (second, "shared-second")):
                with offline_environment(fake.environ()):
                    cluster = coiled.Cluster(name=name, backend="gcp", backend_options=OPTIONS, n_workers=1, worker_cpu=1, worker_memory="2 GiB", security=False)
                clusters.append((fake, cluster))
            addresses = [cluster.scheduler_address for _, cluster in clusters]
            first_ips = {i["networkInterfaces"][0]["networkIP"] for i in offline_gcp.state.instances.values()}
            second_ips = {i["networkInterfaces"][0]["networkIP"] for i in second.state.instances.values()}
            assert first_ips and second_ips and not first_ips & second_ips
            assert addresses[0] != addresses[1]
            for _, cluster in clusters:
                with Client(cluster) as client:
                    assert client.submit(sum, [1, 2, 3]).result(timeout=120) == 6
        finally:
            for fake, cluster in clusters:
                with offline_environment(fake.environ()):
                    cluster.close()


def test_a_worker_that_dies_while_starting_ends_the_wait_with_its_log_tail(offline_gcp):
    import coiled
    from dask.distributed import Client

    from coiled_core.errors import ProvisionError

    # The first worker to read its secret fails to start (as a node whose service account may
    # not read it would); the other one joins. The cluster returns after one worker.
    offline_gcp.fail("GET", r"/secrets/coiled-[a-z0-9-]+-worker/versions/latest:access$")
    cluster = coiled.Cluster(
        name="dies-starting", backend="gcp", backend_options=OPTIONS, n_workers=2, worker_cpu=1, worker_memory="2 GiB", wait_for_workers=1
    )
    try:
        # Before, this waited for ever (the suite's timeout ended it).
        with Client(cluster) as client, pytest.raises(ProvisionError) as info:
            client.wait_for_workers(2)
        message = str(info.value)
        assert "ended while starting" in message and "coiled-dies-starting-w-" in message
        # The dead worker's log tail: why it failed, and that its agent ended.
        assert "HTTP Error 500" in message and "the node agent ended with exit code 1" in message
    finally:
        offline_gcp.clear_faults()
        cluster.close()


def test_waiting_for_workers_is_bounded_by_the_clusters_timeout(offline_gcp):
    import coiled
    from dask.distributed import Client
    from distributed.exceptions import WorkerStartTimeoutError

    cluster = coiled.Cluster(name="wait-bounded", backend="gcp", backend_options=OPTIONS, n_workers=0, timeout=30)
    try:
        with Client(cluster) as client, pytest.raises(WorkerStartTimeoutError):
            client.wait_for_workers(1)  # no worker was asked for: only the timeout ends this
    finally:
        cluster.close()
